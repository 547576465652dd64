"""The user's ``nn.Module``s in evaluation mode while ppl-vae evaluates their programs.

Dropout and batch norm behave differently in training and evaluation (``module.train()`` /
``module.eval()``). ``fit`` trains in the modules' own mode; ``evaluate``, the validation ELBO,
the diagnostics and the draws of ``to_arviz`` run the programs with every module found in them
in evaluation mode, as a PyTorch user evaluates a network, and put each module back in the mode
it had afterwards, even when the evaluation raises.
"""

from __future__ import annotations

import gc
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pyro
import torch

__all__ = ["program_modules", "eval_mode"]

_DIVIDER = "$$$"  # pyro.module's separator between module and parameter names


def _reachable(program) -> Iterator[object]:
    """The objects a program refers to: itself, a bound method's instance, a partial's
    function and arguments, its closure cells and the globals its code names."""
    seen = set()
    stack = [program]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, torch.nn.Module):
            # Its submodules come with it; a program it wraps (ppl-vae's ScaledProgram, an
            # ELBOModule's model) is an attribute that is not a module.
            stack.extend(v for v in vars(obj).values()
                         if callable(v) and not isinstance(v, torch.nn.Module))
            continue
        bound = getattr(obj, "__self__", None)
        if bound is not None and not inspect.ismodule(bound):
            stack.append(bound)
        func = getattr(obj, "func", None)  # functools.partial
        if callable(func):
            stack.extend([func, *getattr(obj, "args", ()), *getattr(obj, "keywords", {}).values()])
        code = getattr(obj, "__code__", None)
        if code is not None:
            stack.extend(cell.cell_contents for cell in (obj.__closure__ or ())
                         if _filled(cell))
            names = getattr(obj, "__globals__", {})
            stack.extend(names[n] for n in code.co_names if n in names
                         and isinstance(names[n], torch.nn.Module))
        elif not callable(obj) and hasattr(obj, "__dict__") and not inspect.isclass(obj):
            # A plain object holding networks as attributes (a class that is not a Module).
            stack.extend(v for v in vars(obj).values() if isinstance(v, torch.nn.Module))


def _filled(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def _registered_owners(known: set[int]) -> list[torch.nn.Module]:
    """Modules registered with ``pyro.module`` whose parameters no module in ``known`` (ids of
    parameters) owns: the owner of each such parameter in the param store."""
    store = pyro.get_param_store()
    owners = {}
    for name in store.keys():
        if _DIVIDER not in name:
            continue
        param = store._params.get(name)  # the unconstrained leaf: the module's own Parameter
        if param is None or id(param) in known:
            continue
        # The parameter's owner is the innermost layer; the registered module (a _Recorder
        # around a Linear, ProdLDA's encoder) is its outermost parent.
        for module in _holders(param, "_parameters"):
            owners.setdefault(id(module), _outermost(module))
    return list(owners.values())


def _holders(obj, slot: str) -> Iterator[torch.nn.Module]:
    """The modules whose dict ``slot`` (``_parameters`` or ``_modules``) holds ``obj``: that
    dict is referred to by the module, or by its ``__dict__`` (managed instance dicts)."""
    for holder in gc.get_referrers(obj):
        if not isinstance(holder, dict):
            continue
        for outer in gc.get_referrers(holder):
            candidates = [outer] if isinstance(outer, torch.nn.Module) else (
                gc.get_referrers(outer) if isinstance(outer, dict) else [])
            for module in candidates:
                if isinstance(module, torch.nn.Module) and getattr(module, slot) is holder:
                    yield module


def _outermost(module: torch.nn.Module) -> torch.nn.Module:
    seen = {id(module)}
    while (parent := next(_holders(module, "_modules"), None)) is not None \
            and id(parent) not in seen:
        seen.add(id(parent))
        module = parent
    return module


def program_modules(*programs: Callable) -> list[torch.nn.Module]:
    """Every ``nn.Module`` (submodules included) found in the programs: ``nn.Module`` programs,
    the instance of a bound-method program (``lda.model``), networks in closures and named
    globals, and the owners of parameters registered with ``pyro.module``."""
    roots = [obj for p in programs for obj in _reachable(p) if isinstance(obj, torch.nn.Module)]
    # The parameters the modules themselves hold (not .parameters(): Pyro's ELBOModule
    # answers it with every parameter its programs touch, modules it does not hold included).
    known = {id(p) for root in roots for m in root.modules() for p in m._parameters.values()}
    roots += _registered_owners(known)
    found: dict[int, torch.nn.Module] = {}
    for root in roots:
        for module in root.modules():
            found.setdefault(id(module), module)
    return list(found.values())


@contextmanager
def eval_mode(*programs: Callable):
    """Every module of the programs (:func:`program_modules`) in evaluation mode inside the
    block; each back in its own mode afterwards, also when the block raises. Yields the number
    of modules that were in training mode."""
    modules = program_modules(*programs)
    modes = [(m, m.training) for m in modules]
    try:
        for module in modules:
            module.training = False  # each one: .eval() would recurse over shared children
        yield sum(mode for _, mode in modes)
    finally:
        for module, mode in modes:
            module.training = mode
