"""Private Pyro and torch names are used in ``ppl_vae/compat.py`` (and the recording wing) only.

Every module of ``ppl_vae/`` is parsed with ``ast``. A module fails the test when it imports a
private Pyro/torch module or name (``from pyro.poutine.subsample_messenger import _Subsample``,
``import torch.utils._pytree``) or reads a private attribute that is not ppl-vae's own
(``elbo._get_traces``, ``module._parameters``, ``getattr(m, "_modules")``). An attribute's
owner is not known statically, so "ppl-vae's own" means: a private name that ppl-vae defines
(a method, a class attribute, ``self._x = ...``) and that no Pyro or torch class also has.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pyro
import pyro.distributions
import pyro.infer
import pyro.nn
import pyro.optim
import pyro.params
import pyro.poutine
import pytest
import torch
import torch.distributions
import torch.nn
import torch.optim

import ppl_vae.compat as compat

ROOT = Path(__file__).resolve().parents[1] / "ppl_vae"
LIBRARIES = ("pyro", "torch")
# The two modules allowed private names: this one, and the recording and compiling wing's own
# (ppl_vae/recording/private.py).
ALLOWED = {"compat.py", "recording/private.py"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _library_private_names() -> set[str]:
    """Private attribute names of the classes Pyro and torch export (the names a read such as
    ``x._get_traces`` may reach)."""
    names: set[str] = set()
    classes = [torch.Tensor]
    for module in (pyro.infer, pyro.poutine, pyro.distributions, pyro.nn, pyro.optim,
                   pyro.params, torch.nn, torch.distributions, torch.optim):
        classes += [obj for _, obj in inspect.getmembers(module, inspect.isclass)]
    for cls in classes:
        names.update(n for n in dir(cls) if _private(n))
    return names


def _own_private_names(trees) -> set[str]:
    """Private names ppl-vae defines: functions and classes, class attributes, ``self._x``."""
    own = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
    return {n for n in own if _private(n)}


def _imported_roots(tree) -> dict[str, str]:
    """Local name -> top-level module it was imported from."""
    roots = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                roots[(a.asname or a.name).split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                roots[a.asname or a.name] = node.module.split(".")[0]
    return roots


def _root_name(node) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def violations(source: str, allowed: set[str]) -> list[str]:
    """Lines of ``source`` that import or read a private Pyro/torch name; ``allowed`` are the
    private names that belong to ppl-vae."""
    tree = ast.parse(source)
    roots = _imported_roots(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] in LIBRARIES and (any(_private(p) for p in parts)
                                          or any(_private(a.name) for a in node.names)):
                found.append(f"{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] in LIBRARIES and any(_private(p) for p in parts):
                    found.append(f"{node.lineno}: import {a.name}")
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            root = _root_name(node.value)
            if root in ("self", "cls") and isinstance(node.value, ast.Name):
                continue  # the object's own state
            if root in roots and roots[root] not in LIBRARIES:
                continue  # imported from elsewhere (sys._getframe, ppl-vae's own objects)
            if node.attr not in allowed or roots.get(root) in LIBRARIES:
                found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value) and node.args[1].value not in allowed):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def _sources() -> dict[str, str]:
    return {path.relative_to(ROOT).as_posix(): path.read_text()
            for path in sorted(ROOT.rglob("*.py"))}


@pytest.fixture(scope="module")
def allowed() -> set[str]:
    own = _own_private_names(ast.parse(s) for s in _sources().values())
    return own - _library_private_names()


def test_only_compat_uses_private_pyro_and_torch_names(allowed):
    bad = {}
    for name, source in _sources().items():
        if name in ALLOWED:
            continue
        if found := violations(source, allowed):
            bad[name] = found
    assert not bad, ("private Pyro/torch names outside ppl_vae/compat.py (add a documented "
                     f"function there and call it): {bad}")


def test_the_scan_finds_private_names(allowed):
    source = (
        "import sys\n"
        "import torch\n"
        "import torch.utils._pytree as pytree\n"
        "from pyro.poutine.subsample_messenger import _Subsample\n"
        "from pyro.infer import Trace_ELBO\n"
        "def f(elbo, module):\n"
        "    traces = elbo._get_traces(None, None, (), {})\n"
        "    dicts = module._parameters, getattr(module, '_modules')\n"
        "    flag = torch.distributions.Distribution._validate_args\n"
        "    return sys._getframe(0), self._mine, elbo.num_particles\n"
    )
    found = violations(source, allowed)
    lines = sorted(int(f.split(":")[0]) for f in found)
    assert lines == [3, 4, 7, 8, 8, 9], found


def test_compat_names_work():
    # Each alias reaches what it documents, on the installed Pyro and torch.
    def program():
        with pyro.plate("p", 10, 3):
            pass

    trace = pyro.poutine.trace(program).get_trace()
    assert isinstance(trace.nodes["p"]["fn"], compat.Subsample)
    linear = torch.nn.Sequential(torch.nn.Linear(2, 3))
    assert set(compat.module_children(linear)) == {"0"}
    assert set(compat.module_parameters(linear[0])) == {"weight", "bias"}
    mask = torch.tensor([True, False])
    masked = pyro.distributions.Normal(torch.zeros(2), 1.0).mask(mask)
    assert torch.equal(compat.mask_of(masked), mask)
    assert compat.validates_args(torch.distributions.Normal(0.0, 1.0, validate_args=False)) is False
    assert isinstance(compat.default_validate_args(), bool)


def test_every_compat_name_says_what_it_is_and_what_to_do_on_upgrade():
    tree = ast.parse((ROOT / "compat.py").read_text())
    docs = {}
    body = tree.body
    for i, node in enumerate(body):
        if isinstance(node, ast.FunctionDef):
            docs[node.name] = ast.get_docstring(node) or ""
        elif isinstance(node, ast.Assign) and i + 1 < len(body):
            after = body[i + 1]  # an attribute docstring: the string right after the name
            if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                for target in node.targets:
                    docs[getattr(target, "id", "")] = str(after.value.value)
    for name in compat.__all__:
        assert "Checked" in docs.get(name, "") and "upgrade" in docs[name], name
