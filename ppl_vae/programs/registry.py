"""Finding programs by name: the zoo (through entry points) and users' ``file.py:name``.

``ppl_vae`` never imports the zoo: zoo entries (and any third-party package's) are registered
under the entry-point groups ``ppl_vae.models`` and ``ppl_vae.guides`` and loaded on request.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from importlib.metadata import entry_points
from pathlib import Path

__all__ = ["available", "resolve", "build", "describe", "is_file_spec", "file_sha256"]

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


def is_file_spec(spec) -> bool:
    """Whether ``spec`` names a user program file (``path/to/file.py:name``)."""
    return isinstance(spec, str) and ":" in spec and spec.split(":", 1)[0].endswith(".py")


def file_sha256(spec: str) -> str:
    """sha256 of the file a ``file.py:name`` spec names (recorded in a run's config)."""
    path = Path(spec.split(":", 1)[0])
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_file(path: Path, attr: str):
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    mod_name = f"_ppl_vae_user_{path.stem}_{abs(hash(path.resolve()))}"
    loaded = sys.modules.get(mod_name)
    # One import of a file per process while its bytes, and those of the helper files of its
    # folder it imported, stay the same: a model and a guide named from one file (``--model
    # f.py:model --guide f.py:guide``, the methods of one module instance) share that file's
    # objects, as in the user's own script. A change to any of them imports it again.
    if loaded is not None:
        if _unchanged(getattr(loaded, "__ppl_vae_sha256__", {})):
            return _attribute(loaded, path, attr)
        for name in getattr(loaded, "__ppl_vae_helpers__", ()):  # import changed helpers anew
            sys.modules.pop(name, None)
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    module.__ppl_vae_sha256__ = {path.resolve(): _sha256(path)}
    before = set(sys.modules)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(mod_name, None)
        raise ValueError(f"{path}, line {exc.lineno}: syntax error: {exc.msg}; fix the file") from exc
    except Exception as exc:  # noqa: BLE001 - the user's module failed on import: say where
        sys.modules.pop(mod_name, None)
        raise ValueError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    except SystemExit as exc:  # a script's sys.exit() at import would end the command
        sys.modules.pop(mod_name, None)
        raise ValueError(f"importing {path} called sys.exit({exc.code!r}) at import: put the "
                         "script's top-level code under if __name__ == '__main__':") from None
    helpers = _helper_modules(set(sys.modules) - before - {mod_name}, path.resolve().parent)
    module.__ppl_vae_helpers__ = tuple(helpers)
    module.__ppl_vae_sha256__.update(helpers.values())
    return _attribute(module, path, attr)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _unchanged(recorded: dict) -> bool:
    return bool(recorded) and all(p.is_file() and _sha256(p) == h for p, h in recorded.items())


def _helper_modules(names, folder: Path) -> dict:
    """``{module name: (path, sha256)}`` of the modules a program file's import brought in
    from its own folder (its helpers)."""
    out = {}
    for name in names:
        file = getattr(sys.modules.get(name), "__file__", None)
        if file and Path(file).resolve().parent == folder:
            out[name] = (Path(file).resolve(), _sha256(Path(file)))
    return out


def _attribute(module, path: Path, attr: str):
    if attr not in vars(module):
        names = sorted(k for k in vars(module) if not k.startswith("_"))
        raise ValueError(f"{path} defines no {attr!r}; it defines: {', '.join(names)}")
    return vars(module)[attr]


def resolve(kind: str, spec: str):
    """Return the class or callable named by ``spec``: a registered name or ``path.py:name``."""
    if is_file_spec(spec):
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
    """Instantiate ``spec`` (a name, ``file.py:name``, or the class/function itself) for
    ``dataset``.

    A class is built with ``cls.from_dataset(dataset, **options)`` (the zoo's constructor
    contract); a function is a ready Pyro program and is returned as it is. ``defaults`` are
    options a class gets when its constructor takes them and ``options`` do not set them.
    """
    obj = resolve(kind, spec) if isinstance(spec, str) else spec
    if inspect.isclass(obj):
        params = inspect.signature(obj.__init__).parameters
        options = {**{k: v for k, v in (defaults or {}).items() if k in params}, **options}
        _check_options(kind, spec, obj, options)
        return obj.from_dataset(dataset, **options)
    if options:
        raise ValueError(f"{kind} {spec!r} is a function; options {sorted(options)} do not apply")
    return obj
