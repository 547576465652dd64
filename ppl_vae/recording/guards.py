"""The Python a recorded step depends on: the values the programs read, guarded per recording
(as ``torch.compile`` guards a frame), and what makes a program impure.

A recorded graph (:class:`ppl_vae.recording.compile.TraceOnce`) replays tensor ops only: the
programs' Python never runs again. What that Python read (``self.kl_weight`` set by a callback,
a global, a closure variable) stays at its recorded value, and what it did (count its calls,
raise at the k-th, draw from Python's ``random``) never happens again. :class:`Watch` runs the
programs once under ``sys.setprofile`` and notes which of the *user's* functions ran (code
outside torch, Pyro, ppl_vae's own stages, the standard library and installed packages) and
which names each one loads: its globals, its closure variables and the attributes of ``self``.
Those become :class:`Guards`: re-read before every replay (a few dictionary look-ups), a changed
value means the step is recorded again. A value that changes *while the programs run* (a
counter they keep) and calls of Python's or NumPy's random numbers or the clock make the
programs impure: they cannot be replayed at all.

What is not seen: state read through objects more than two attribute levels away, C extension
state, and code installed as a package (it is taken to be a library). Reads of tensor values on
the host are :mod:`ppl_vae.recording.value_reads`' business.
"""

from __future__ import annotations

import contextlib
import dis
import functools
import gc
import itertools
import random
import sys
import sysconfig
import types
from pathlib import Path

import pyro
import torch

from ppl_vae.recording.private import tensor_version

__all__ = ["Watch", "Guards", "freeze", "is_user_code", "python_rng_kept"]

_MISSING = object()
_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_SCALAR_TYPES = frozenset(_SCALARS)
_PATHS = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
_LIBRARIES = tuple(
    {Path(p).resolve() for p in _PATHS}
    | {Path(m.__file__).resolve().parent for m in (torch, pyro)}
    | {Path(__file__).resolve().parents[1]})  # ppl_vae/: its handlers are not programs
_INSTALLED = {"site-packages", "dist-packages"}
_RANDOM_FILE = str(Path(random.__file__).resolve())
_LOAD_GLOBALS = {"LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL", "LOAD_NAME"}
_LOAD_ATTRS = {"LOAD_ATTR", "LOAD_METHOD", "STORE_ATTR", "DELETE_ATTR"}
_LOAD_CELLS = {"LOAD_DEREF", "STORE_DEREF", "LOAD_CLASSDEREF", "DELETE_DEREF"}


@functools.lru_cache(maxsize=4096)
def is_user_code(filename: str) -> bool:
    """Whether code from ``filename`` is the user's (a program or its helpers), not a library."""
    if filename.startswith(("<frozen", "<string>")) or not filename:
        return False  # namedtuple's and dataclasses' generated methods are "<string>"
    if filename.startswith("<"):  # typed at a prompt or in a notebook cell: the user's
        return True
    path = Path(filename).resolve()
    if _INSTALLED & set(path.parts):  # an installed package, wherever its environment lives
        return False
    return not any(path.is_relative_to(lib) for lib in _LIBRARIES)


def freeze(value, depth: int = 2):
    """A comparable stand-in for ``value``: scalars as themselves (NaN as a marker, since NaN
    != NaN), tensors by identity and version counter (an in-place write bumps it), containers
    and plain objects by their items up to ``depth`` levels, anything else by identity."""
    kind = type(value)
    if kind in _SCALAR_TYPES or isinstance(value, _SCALARS):
        return ("nan",) if value != value else value
    if isinstance(value, torch.Tensor):
        # Trained tensors are graph inputs: their values are read at every replay.
        return ("tensor", id(value)) if value.requires_grad else ("tensor", id(value), tensor_version(value))
    if isinstance(value, types.ModuleType | types.FunctionType | type | torch.nn.Module):
        return ("id", id(value))
    if depth and isinstance(value, tuple | list):
        return (kind, len(value), tuple(freeze(v, depth - 1) for v in value[:64]))
    if depth and isinstance(value, dict):
        return (kind, len(value), tuple((k, freeze(v, depth - 1))
                                        for k, v in itertools.islice(value.items(), 64)))
    attributes = getattr(value, "__dict__", None)
    if depth and isinstance(attributes, dict):
        return ("object", id(value), freeze(attributes, depth - 1))
    return ("id", id(value))


@functools.lru_cache(maxsize=4096)
def _names(code: types.CodeType) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The global, attribute and free-variable names ``code`` loads or stores."""
    globals_, attrs, cells = set(), set(), set()
    for ins in dis.get_instructions(code):
        if ins.opname in _LOAD_GLOBALS:
            globals_.add(ins.argval)
        elif ins.opname in _LOAD_ATTRS:
            attrs.add(ins.argval)
        elif ins.opname in _LOAD_CELLS and ins.argval in code.co_freevars:
            cells.add(ins.argval)
    return tuple(sorted(globals_)), tuple(sorted(attrs)), tuple(sorted(cells))


def _where(code: types.CodeType, line: int | None = None) -> str:
    at = f":{line}" if line is not None else ""
    return f"{Path(code.co_filename).name}{at} in {code.co_name}"


def _impure_call(function) -> str | None:
    """The name of a C function whose result is not a function of its arguments: Python's and
    NumPy's random numbers and the clock."""
    owner = getattr(function, "__self__", None)
    name = getattr(function, "__name__", "?")
    if isinstance(owner, random.Random):
        return f"Python's random.{name}"
    if type(owner).__module__.startswith("numpy.random"):
        return f"numpy.random's {name}"
    if getattr(function, "__module__", None) == "time":
        return f"time.{name}"
    return None


@contextlib.contextmanager
def python_rng_kept():
    """Python's (and, when imported, NumPy's) global random state restored on exit, as
    ``torch.random.fork_rng`` restores torch's: a trial run of the programs draws nothing that
    the step then taken would otherwise have drawn."""
    state = random.getstate()
    numpy = sys.modules.get("numpy")
    numpy_state = numpy.random.get_state() if numpy is not None else None
    try:
        yield
    finally:
        random.setstate(state)
        if numpy_state is not None:
            numpy.random.set_state(numpy_state)


class Watch:
    """Context manager: while it is active, note what the user's functions that run read by
    name (their globals, closure variables and ``self``'s attributes, each as it was before the
    function first ran), and the first impure call they make.

    Attributes
    ----------
    impure : str or None
        The first call of Python's ``random``, ``numpy.random`` or ``time`` made from user code,
        with where it was made.
    """

    def __init__(self):
        self.impure: str | None = None
        self._seen: set[tuple] = set()
        # (id(container), key) -> (label, container, key, value before the first read)
        self._reads: dict[tuple, tuple] = {}
        self._previous = None

    def __enter__(self) -> Watch:
        self._previous = sys.getprofile()
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc) -> None:
        previous = self._previous
        if previous is not None and not callable(previous) and callable(
                getattr(previous, "enable", None)):
            # cProfile's profiler (the user profiling a run) is installed from C: getprofile
            # returns the Profile object, which setprofile refuses; it puts itself back.
            sys.setprofile(None)
            previous.enable()
        else:
            sys.setprofile(previous)

    def _profile(self, frame, event, arg) -> None:
        if event == "c_call":
            if self.impure is None and is_user_code(frame.f_code.co_filename):
                what = _impure_call(arg)
                if what is not None:
                    self.impure = f"{what} ({_where(frame.f_code, frame.f_lineno)})"
            return
        if event != "call":
            return
        code = frame.f_code
        if not is_user_code(code.co_filename):
            caller = frame.f_back
            if (self.impure is None and code.co_filename == _RANDOM_FILE and caller is not None
                    and is_user_code(caller.f_code.co_filename)):
                self.impure = (f"Python's random.{code.co_name} "
                               f"({_where(caller.f_code, caller.f_lineno)})")
            return
        this = _self(code, frame) if code.co_argcount else None
        key = (code, id(this))
        if key not in self._seen:  # the function's body has not run yet: values as before
            self._seen.add(key)
            self._note(code, frame.f_globals, this)

    def _note(self, code: types.CodeType, globals_: dict, this) -> None:
        loaded_globals, attrs, cells = _names(code)
        found = []
        for name in loaded_globals:
            value = globals_.get(name, _MISSING)
            if value is not _MISSING and not isinstance(value, types.ModuleType):
                found.append((f"the global {name} ({Path(code.co_filename).name})", globals_, name))
        attributes = getattr(this, "__dict__", None) if this is not None else None
        if isinstance(attributes, dict):
            found += [(f"self.{name} ({type(this).__name__}, {_where(code)})", attributes, name)
                      for name in attrs if name in attributes]
        found += [(f"the closure variable {name} ({_where(code)})", cell, None)
                  for cell, name in _cells(code, cells)]
        for label, container, name in found:
            self._reads.setdefault((id(container), name),
                                   (label, container, name, _copy(_read(container, name))))

    def guards(self) -> Guards:
        """Guards on every value the noted functions read by name."""
        return Guards([read[:3] for read in self._reads.values()])

    def restore(self, guards: Guards, snapshot: list) -> None:
        """Put back, as they were before the programs first ran, the values that changed since
        ``snapshot`` (a counter the programs keep), so that trial runs leave no trace."""
        for (_, container, name), (kind, want) in zip(guards.reads, snapshot, strict=True):
            if not _same(kind, want, _read(container, name)):
                _write(container, name, self._reads[(id(container), name)][3])


def _self(code: types.CodeType, frame):
    """The frame's first argument when ``code`` is a method of its class (whatever the
    argument is called), else ``None``."""
    first = frame.f_locals.get(code.co_varnames[0])
    for klass in type(first).__mro__:
        found = klass.__dict__.get(code.co_name)
        if isinstance(found, types.FunctionType) and found.__code__ is code:
            return first
    return None


def _copy(value):
    """A shallow copy of a list, dict or set (their items can be put back), else the value."""
    return type(value)(value) if type(value) in (list, dict, set) else value


def _write(container, key, value) -> None:
    current = _read(container, key)
    if type(value) in (list, dict, set) and type(current) is type(value):
        current.clear()  # the same object, as others may hold it
        (current.extend if isinstance(current, list) else current.update)(value)
    elif key is None:
        container.cell_contents = value
    elif value is _MISSING:
        container.pop(key, None)
    else:
        container[key] = value


def _cells(code: types.CodeType, names: tuple[str, ...]) -> list:
    """(cell, name) of every function object running ``code`` for the free variables
    ``names`` (functions built by one factory share their code; all are guarded)."""
    if not names:
        return []
    found = []
    for function in gc.get_referrers(code):
        if isinstance(function, types.FunctionType) and function.__code__ is code \
                and function.__closure__:
            for name in names:
                found.append((function.__closure__[code.co_freevars.index(name)], name))
    return found


_SAME, _SCALAR, _TENSOR, _CONTAINER, _FROZEN = range(5)
_IMMUTABLE = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
              type, torch.nn.Module)


def _expect(value) -> tuple:
    """What a guard compares ``value`` with, by the cheapest test that sees a change: identity
    for functions, classes, modules and trained tensors; equality for scalars; identity and
    version counter for other tensors; :func:`freeze` for the rest (containers, objects)."""
    if type(value) in _SCALAR_TYPES:
        return (_SCALAR, value)
    if isinstance(value, _IMMUTABLE) or value is _MISSING:
        return (_SAME, value)
    if isinstance(value, torch.Tensor):
        return (_SAME, value) if value.requires_grad else (_TENSOR, (value, tensor_version(value)))
    if type(value) in (list, tuple, dict) and all(
            type(v) in _SCALAR_TYPES or isinstance(v, _IMMUTABLE)
            for v in (value.values() if type(value) is dict else value)):
        # A registry of classes, a list of numbers: one comparison in C with a shallow copy.
        return (_CONTAINER, (value, _copy(value)))
    return (_FROZEN, freeze(value))


def _same(kind: int, want, value) -> bool:
    if kind == _SCALAR:
        return value is want or (type(value) is type(want)
                                 and (value == want or (value != value and want != want)))
    if kind == _SAME:
        return value is want
    if kind == _TENSOR:
        return value is want[0] and tensor_version(value) == want[1]
    if kind == _CONTAINER:
        return value is want[0] and value == want[1]
    return freeze(value) == want


class Guards:
    """Values the programs read from Python, re-read on demand.

    Parameters
    ----------
    reads : list of (label, container, key)
        ``container[key]`` for a dictionary (globals, an instance's ``__dict__``), or a closure
        cell's contents when ``key`` is ``None``.

    Notes
    -----
    :meth:`changed` costs a dictionary look-up and one comparison per read (about 0.1 us for a
    scalar, an identity or a tensor's version); a container or an object is compared item by
    item, up to two levels deep.
    """

    def __init__(self, reads: list[tuple]):
        self.reads = reads

    def __len__(self) -> int:
        return len(self.reads)

    def snapshot(self) -> list:
        """What :meth:`changed` compares the values with, as they are now."""
        return [_expect(_read(container, key)) for _, container, key in self.reads]

    def changed(self, snapshot: list) -> str | None:
        """The label of the first value that differs from ``snapshot`` (``None``: none)."""
        for (label, container, key), (kind, want) in zip(self.reads, snapshot, strict=True):
            if not _same(kind, want, _read(container, key)):
                return label
        return None


def _read(container, key):
    if key is None:
        try:
            return container.cell_contents
        except ValueError:  # an empty cell (the variable is not bound yet)
            return _MISSING
    return container.get(key, _MISSING)
