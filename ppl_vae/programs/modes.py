"""The user's ``nn.Module``s in evaluation mode while ppl-vae evaluates their programs.

Dropout and batch norm behave differently in training and evaluation (``module.train()`` /
``module.eval()``). ``fit`` trains in the modules' own mode; ``evaluate``, the validation ELBO,
the diagnostics and the draws of ``to_arviz`` run the programs with every module found in them
in evaluation mode, as a PyTorch user evaluates a network, and put each module back in the mode
it had afterwards, even when the evaluation raises.
"""

from __future__ import annotations

import functools
import gc
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pyro
import torch

from ppl_vae.compat import module_children, module_parameters

__all__ = ["program_modules", "eval_mode"]

_DIVIDER = "$$$"  # pyro.module's separator between module and parameter names


def _reachable(program) -> Iterator[object]:
    """The objects a program refers to: itself, a bound method's instance (and the networks
    it holds), a partial's function and arguments, a function's closure cells and the
    networks among the globals its code names."""
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
        elif inspect.ismethod(obj):
            stack.append(obj.__self__)
        elif isinstance(obj, functools.partial):
            stack.extend([obj.func, *obj.args, *obj.keywords.values()])
        elif inspect.isfunction(obj):
            stack.extend(cell.cell_contents for cell in obj.__closure__ or () if _filled(cell))
            stack.extend(obj.__globals__[n] for n in obj.__code__.co_names
                         if isinstance(obj.__globals__.get(n), torch.nn.Module))
        elif not inspect.isclass(obj) and not inspect.ismodule(obj):
            # An instance holding networks as attributes (a class that is not a Module).
            attrs = getattr(obj, "__dict__", None)
            if isinstance(attrs, dict):
                stack.extend(v for v in attrs.values() if isinstance(v, torch.nn.Module))


def _filled(cell) -> bool:
    """Whether a closure cell holds a value (one bound later in the enclosing scope does not
    yet; reading it raises)."""
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def _registered_owners(known: set[int]) -> list[torch.nn.Module]:
    """Modules registered with ``pyro.module`` whose parameters no module in ``known`` (ids of
    parameters) holds: the outermost module above each such parameter in the param store (a
    ``_Recorder`` around a ``Linear``, ProdLDA's encoder), found by following references."""
    store = pyro.get_param_store()
    params = [value for name, value in store.named_parameters()  # the modules' own Parameters
              if _DIVIDER in name and id(value) not in known]
    if not params:
        return []
    level = _holders(params, module_parameters)
    seen = {id(m) for m in level}
    outermost = []
    while level:  # one scan of the heap per level, for all modules of the level at once
        parents = _holders(level, module_children)
        have_parent = {id(child) for parent in parents for child in module_children(parent).values()}
        outermost += [m for m in level if id(m) not in have_parent]
        level = [p for p in parents if id(p) not in seen]
        seen.update(id(p) for p in level)
    return outermost


def _holders(objs: list, slot: Callable[[torch.nn.Module], dict]) -> list[torch.nn.Module]:
    """The modules whose dict ``slot(module)`` (its own parameters or children) holds one of
    ``objs``.
    That dict is referred to by the module itself, or by the module's ``__dict__`` (Python's
    managed instance dicts); ``gc.get_referrers`` scans the heap once per call."""
    dicts = [d for d in gc.get_referrers(*objs) if isinstance(d, dict)]
    if not dicts:
        return []
    wanted = {id(d) for d in dicts}
    outer = gc.get_referrers(*dicts)
    instance_dicts = [d for d in outer if isinstance(d, dict)]
    candidates = [m for m in outer if isinstance(m, torch.nn.Module)]
    if instance_dicts:
        candidates += [m for m in gc.get_referrers(*instance_dicts)
                       if isinstance(m, torch.nn.Module)]
    found: dict[int, torch.nn.Module] = {}
    for module in candidates:
        if id(slot(module)) in wanted:
            found.setdefault(id(module), module)
    return list(found.values())


def program_modules(*programs: Callable) -> list[torch.nn.Module]:
    """Every ``nn.Module`` (submodules included) found in the programs: ``nn.Module`` programs,
    the instance of a bound-method program (``lda.model``), networks in closures and named
    globals, and the owners of parameters registered with ``pyro.module``."""
    roots = [obj for p in programs for obj in _reachable(p) if isinstance(obj, torch.nn.Module)]
    # The parameters the modules themselves hold (not .parameters(): Pyro's ELBOModule
    # answers it with every parameter its programs touch, modules it does not hold included).
    known = {id(p) for root in roots for m in root.modules() for p in module_parameters(m).values()}
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
