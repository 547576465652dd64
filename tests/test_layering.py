"""The package layout follows the data flow, and the test keeps it that way.

Every ``import`` in ``ppl_vae/`` (and the zoo in ``models/`` and ``guides/``, which is
``ppl_vae.models`` / ``ppl_vae.guides``) is parsed with ``ast``, at module level and inside
functions alike. A module may import only from its own stage or the stages before it; nothing
but the CLI imports the CLI; and the module import graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The flow, in order. The zoo is made of programs. ``compat`` (private Pyro/torch names) is
# below everything: any stage may use it.
STAGES = ["compat", "data", "storage", "parallel", "programs", "estimators", "recording", "train",
          "evaluation", "diagnostics", "reporting", "runs", "cli"]
ALIASES = {"models": "programs", "guides": "programs"}


def _module_files() -> dict[str, Path]:
    files = {}
    for path in sorted((ROOT / "ppl_vae").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    for folder in ("models", "guides"):
        for path in sorted((ROOT / folder).glob("*.py")):
            stem = path.stem
            name = f"ppl_vae.{folder}" if stem == "__init__" else f"ppl_vae.{folder}.{stem}"
            files[name] = path
    return files


MODULES = _module_files()


def _stage(module: str) -> int | None:
    """Index of ``module``'s stage in the flow; None for the package root ``ppl_vae``."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    top = ALIASES.get(parts[1], parts[1])
    if top not in STAGES:
        raise AssertionError(f"{module} lies outside the stages {STAGES}: add it to one")
    return STAGES.index(top)


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """(imported ppl_vae module, line) for every import statement in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path, node)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in MODULES else target, node.lineno))
    return [(name, line) for name, line in found if name.split(".")[0] == "ppl_vae"]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        graph[module] = {name for name, _ in _imports(module, path) if name != module}
    return graph


def test_every_module_belongs_to_a_stage():
    for module in MODULES:
        _stage(module)


def test_imports_go_only_to_earlier_stages():
    upward = []
    for module, path in MODULES.items():
        mine = _stage(module)
        for name, line in _imports(module, path):
            theirs = _stage(name)
            if mine is None:  # the package root re-exports every stage but the CLI
                if theirs == STAGES.index("cli"):
                    upward.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
            elif theirs is None or theirs > mine:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not upward, "imports against the flow:\n" + "\n".join(upward)


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if colour.get(nxt) is None and (cycle := visit(nxt)):
                return cycle
        colour[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if colour.get(node) is None and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_a_planted_cycle_and_an_upward_import():
    # The checks above can fail: a cycle and an upward edge planted in a copy of the graph.
    graph = {k: set(v) for k, v in _graph().items()}
    graph["ppl_vae.data.tensors"].add("ppl_vae.reporting.page")
    graph["ppl_vae.reporting.page"].add("ppl_vae.data.tensors")
    assert _find_cycle(graph) is not None
    assert _stage("ppl_vae.reporting.page") > _stage("ppl_vae.data.tensors")
    with pytest.raises(AssertionError):
        _stage("ppl_vae.somewhere_else")


def _name_comparisons(path: Path, names: set[str]) -> list[str]:
    """``x == "mc"``, ``"iwae" in (...)`` and the like: a string constant that is an estimator's
    name, inside a comparison."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Compare):
            continue
        for part in [node.left, *node.comparators]:
            for const in ast.walk(part):
                if isinstance(const, ast.Constant) and const.value in names:
                    found.append(f"{path.name}:{node.lineno} compares {const.value!r}")
    return found


def test_no_estimator_name_is_compared_outside_the_estimators():
    from ppl_vae.estimators.registry import ESTIMATORS

    names = set(ESTIMATORS)
    found = []
    for module, path in MODULES.items():
        if not module.startswith("ppl_vae.estimators"):
            found += _name_comparisons(path, names)
    assert not found, "capabilities belong in the EstimatorSpec:\n" + "\n".join(found)


def test_the_name_check_sees_a_planted_comparison(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text('def f(estimator):\n    return estimator in ("mc", "analytic")\n')
    assert _name_comparisons(planted, {"analytic"}) == ["planted.py:2 compares 'analytic'"]


def _pyro_imports(path: Path) -> list[str]:
    """``import pyro...`` / ``from pyro... import`` statements of a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        found += [f"{path.name}:{node.lineno} imports {n}" for n in names
                  if n.split(".")[0] == "pyro"]
    return found


def test_the_report_runs_no_program(tmp_path):
    # The report renders what the diagnostics computed: no module of reporting/ imports Pyro.
    found = [hit for module, path in MODULES.items() if module.startswith("ppl_vae.reporting")
             for hit in _pyro_imports(path)]
    assert not found, "the report computes nothing:\n" + "\n".join(found)
    planted = tmp_path / "planted.py"
    planted.write_text("from pyro import poutine\n")
    assert _pyro_imports(planted) == ["planted.py:1 imports pyro"]
