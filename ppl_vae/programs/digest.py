"""What a program is, as digests of its source: recorded with a run, so that a resume or an
evaluation with changed program code is refused, listing what changed.

A program is a function, a bound method, a ``functools.partial``, a class or an instance (an
``nn.Module``, a ``PyroModule``, a callable object). Its digest holds the sha256 of

- the source of the function, or of the class and every user class it derives from
  (``inspect.getsource``), with the simple module-level constants its code reads
  (``SCALE = 0.5`` beside ``def model``);
- the functions and classes of the same file it calls or names, the same way;
- every user file it imports from the program's folder (its whole text), and what those import
  from the folder in turn.

Library code (the standard library, site-packages) and files outside the program's folder are
not part of it: a program is what its author wrote beside it. Labels are ``file:qualname`` and
``file`` with the file relative to the program's folder, so that a run moved to another folder
or machine compares alike.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import marshal
import sysconfig
import tokenize
import types
from pathlib import Path

__all__ = ["program_digest", "program_digests", "digest_differences", "programs_differences"]

# The standard library, and installed packages wherever their environment lives.
_STDLIB = tuple({str(Path(sysconfig.get_paths()[k]).resolve()) for k in ("stdlib", "platstdlib")})
_PACKAGES = {"site-packages", "dist-packages"}
_CONSTANTS = (bool, int, float, complex, str, bytes, type(None))


def _sha(data) -> str:
    return hashlib.sha256(data if isinstance(data, bytes) else data.encode()).hexdigest()


def _file_of(obj) -> Path | None:
    """The source file of a module, class or function; None for built-ins and library code."""
    try:
        name = inspect.getsourcefile(obj)
    except (TypeError, OSError):  # built-in, or defined where no file is (a notebook's class)
        return None
    if name is None or not Path(name).is_file():
        return None
    path = Path(name).resolve()
    library = str(path).startswith(_STDLIB) or not _PACKAGES.isdisjoint(path.parts)
    return None if library else path


def _root(program) -> object:
    """The function or class that defines ``program``."""
    while isinstance(program, functools.partial):
        program = program.func
    if inspect.ismethod(program):  # a method: its whole class (``__init__`` builds the nets)
        owner = program.__self__
        return owner if inspect.isclass(owner) else type(owner)
    if inspect.isfunction(program) or inspect.isclass(program):
        return program
    return type(program)


class _Walk:
    def __init__(self, root):
        self.home = inspect.getmodule(root)
        self.folder, self.seen, self.out = _file_of(root).parent, set(), {}

    def label(self, path: Path) -> str:
        return path.relative_to(self.folder).as_posix()

    def inside(self, obj) -> Path | None:
        path = _file_of(obj)
        return path if path is not None and path.is_relative_to(self.folder) else None

    def visit(self, obj, *, root: bool = False) -> None:
        if id(obj) in self.seen:
            return
        self.seen.add(id(obj))
        path = _file_of(obj) if root else self.inside(obj)
        if path is None:
            return
        if inspect.ismodule(obj):
            self.out[self.label(path)] = _sha(path.read_bytes())
            for value in vars(obj).values():
                if inspect.ismodule(value) or inspect.getmodule(value) not in (obj, None):
                    self.visit(value if inspect.ismodule(value) else inspect.getmodule(value))
            return
        module = inspect.getmodule(obj)
        if not root and module is not None and module is not self.home:
            self.visit(module)  # another file of the folder: all of it
            return
        self.out[f"{self.label(path)}:{obj.__qualname__}"] = self.source(obj)
        functions = [obj] if inspect.isfunction(obj) else [
            v for cls in obj.__mro__ if self.inside(cls) is not None
            for v in vars(cls).values() if inspect.isfunction(v)]
        if inspect.isclass(obj):
            for base in obj.__mro__[1:]:
                self.visit(base)
        for function in functions:
            self.names(function)

    def source(self, obj) -> str:
        try:
            return _sha(inspect.getsource(obj))
        except (OSError, tokenize.TokenError, SyntaxError):
            # Defined where no source is kept (exec, an interactive prompt), or exec'd under a
            # file name whose lines are not its source (a README's blocks joined and run).
            code = [obj.__code__] if inspect.isfunction(obj) else [
                v.__code__ for v in vars(obj).values() if inspect.isfunction(v)]
            return _sha(b"".join(marshal.dumps(c) for c in code))

    def names(self, function) -> None:
        """What ``function``'s code reads from its module: constants are recorded, functions,
        classes and modules of the program's folder visited."""
        codes, names = [function.__code__], set()
        while codes:
            code = codes.pop()
            names.update(code.co_names)
            codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        where = self.inside(function)
        label = self.label(where) if where is not None else "?"
        for name in sorted(names & set(function.__globals__)):
            value = function.__globals__[name]
            if isinstance(value, _CONSTANTS):
                self.out[f"{label}:{name}"] = _sha(repr(value))
            elif inspect.ismodule(value) or inspect.isfunction(value) or inspect.isclass(value):
                self.visit(value)


def program_digest(program) -> dict[str, str]:
    """``{label: sha256}`` of ``program``'s source (see the module's docstring); empty when
    the program is library code only (a Pyro autoguide)."""
    root = _root(program)
    if _file_of(root) is None:
        return _interactive_digest(root)
    walk = _Walk(root)
    walk.visit(root, root=True)
    return dict(sorted(walk.out.items()))


def _interactive_digest(root) -> dict[str, str]:
    """A program defined where no source file is (a notebook cell, an interactive prompt):
    the digest of its compiled code, ``{"<interactive>:qualname": sha256}``; library code
    (its module has a file, in the standard library or site-packages) has none."""
    module = inspect.getmodule(root)
    if module is None or getattr(module, "__file__", None) is not None:
        return {}
    functions = [root] if inspect.isfunction(root) else [
        v for cls in root.__mro__ if inspect.getmodule(cls) is module
        for v in vars(cls).values() if inspect.isfunction(v)]
    code = b"".join(marshal.dumps(f.__code__) for f in functions)
    return {f"<interactive>:{root.__qualname__}": _sha(code)} if functions else {}


def digest_differences(kind: str, old: dict, new: dict) -> list[str]:
    """Each way the digest ``new`` of ``kind`` ("model", "guide") differs from ``old``."""
    out = []
    for label in sorted(set(old) | set(new)):
        if label not in new:
            out.append(f"{kind}: {label} is gone")
        elif label not in old:
            out.append(f"{kind}: {label} is new")
        elif old[label] != new[label]:
            out.append(f"{kind}: {label} changed")
    return out


def program_digests(model, guide) -> dict:
    """``{"model": ..., "guide": ...}``: what a run records (``settings["programs"]``)."""
    return {"model": program_digest(model), "guide": program_digest(guide)}


def programs_differences(old: dict, new: dict) -> list[str]:
    """Each way :func:`program_digests` ``new`` differs from the recorded ``old``."""
    return [line for kind in ("model", "guide")
            for line in digest_differences(kind, old.get(kind, {}), new.get(kind, {}))]
