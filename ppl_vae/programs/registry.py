"""Finding programs by name: the zoo (through entry points) and users' ``file.py:name``.

``ppl_vae`` never imports the zoo: zoo entries (and any third-party package's) are registered
under the entry-point groups ``ppl_vae.models`` and ``ppl_vae.guides`` and loaded on request.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from importlib.metadata import entry_points
from pathlib import Path

__all__ = ["available", "resolve", "build", "describe"]

GROUPS = {"model": "ppl_vae.models", "guide": "ppl_vae.guides"}


def available(kind: str) -> dict:
    """``{name: entry point}`` for ``kind`` in ``{"model", "guide"}``."""
    return {ep.name: ep for ep in entry_points(group=GROUPS[kind])}


def describe(kind: str) -> list[tuple[str, str]]:
    """``(name, first docstring line)`` for every registered entry of ``kind``."""
    rows = []
    for name, ep in sorted(available(kind).items()):
        obj = ep.load()
        doc = inspect.getdoc(obj) or ""
        rows.append((name, doc.splitlines()[0] if doc else ""))
    return rows


def _load_file(path: Path, attr: str):
    if not path.exists():
        raise ValueError(f"no such file: {path}")
    mod_name = f"_ppl_vae_user_{path.stem}_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    if attr not in vars(module):
        names = sorted(k for k in vars(module) if not k.startswith("_"))
        raise ValueError(f"{path} defines no {attr!r}; it defines: {', '.join(names)}")
    return vars(module)[attr]


def resolve(kind: str, spec: str):
    """Return the class or callable named by ``spec``: a registered name or ``path.py:name``."""
    if ":" in spec and spec.split(":", 1)[0].endswith(".py"):
        path, attr = spec.split(":", 1)
        return _load_file(Path(path), attr)
    registry = available(kind)
    if spec not in registry:
        raise ValueError(
            f"unknown {kind} {spec!r}; choose one of: {', '.join(sorted(registry))}, "
            f"or give path/to/file.py:name"
        )
    return registry[spec].load()


def _check_options(kind: str, spec: str, cls, options: dict) -> None:
    """``ValueError`` naming the options ``cls``'s constructor does not take (the CLI's shared
    ``--latent-dim`` / ``--hidden`` reach every program, and not every one has them)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(options) - set(params))
    if unknown:
        takes = [n for n, p in params.items() if n != "self" and p.default is not p.empty]
        raise ValueError(f"{kind} {spec!r} does not take option(s) {unknown}; its options are: "
                         f"{', '.join(takes)}")


def build(kind: str, spec: str, dataset, *, defaults: dict | None = None, **options):
    """Instantiate ``spec`` for ``dataset``.

    A class is built with ``cls.from_dataset(dataset, **options)`` (the zoo's constructor
    contract); a function is a ready Pyro program and is returned as it is. ``defaults`` are
    options a class gets when its constructor takes them and ``options`` do not set them.
    """
    obj = resolve(kind, spec)
    if inspect.isclass(obj):
        params = inspect.signature(obj.__init__).parameters
        options = {**{k: v for k, v in (defaults or {}).items() if k in params}, **options}
        _check_options(kind, spec, obj, options)
        return obj.from_dataset(dataset, **options)
    if options:
        raise ValueError(f"{kind} {spec!r} is a function; options {sorted(options)} do not apply")
    return obj
