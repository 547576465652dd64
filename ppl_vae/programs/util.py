"""Facts about a pair of Pyro programs, read off one run of them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import torch

from ppl_vae.compat import mask_of
from ppl_vae.programs.checks import trace_pair

__all__ = [
    "max_plate_nesting", "program_dtype", "module_parameters", "trainable_parameters",
    "unwrap_distribution",
]


def max_plate_nesting(model: Callable, guide: Callable, batch: Sequence[torch.Tensor]) -> int:
    """Deepest plate dimension used by either program (as a positive number)."""
    with torch.no_grad(), pyro.validation_enabled(False):
        model_trace, guide_trace = trace_pair(model, guide, batch)
    depth = 0
    for trace in (model_trace, guide_trace):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        depth = max(depth, -frame.dim)
    return depth


def program_dtype(*programs):
    """The dtype and device of the first parameter of any module program (else None, None)."""
    for program in programs:
        if isinstance(program, torch.nn.Module):
            p = next(program.parameters(), None)
            if p is not None:
                return p.dtype, p.device
    return None, None


def module_parameters(*programs) -> dict[int, torch.Tensor]:
    """The parameters that require grad of the programs that are ``torch.nn.Module``s, by
    ``id`` (each once, in the modules' order)."""
    found: dict[int, torch.Tensor] = {}
    for program in programs:
        if isinstance(program, torch.nn.Module):
            for p in program.parameters():
                if p.requires_grad:
                    found.setdefault(id(p), p)
    return found


def trainable_parameters(programs: Sequence[Callable], param_trace) -> tuple[list[torch.Tensor],
                                                                             list[str]]:
    """Every leaf tensor the programs train, and the names of the ``pyro.param`` sites among
    them that no module owns.

    ``param_trace`` is a ``poutine.trace(param_only=True)`` trace of a run of the programs: its
    ``pyro.param`` / ``pyro.module`` sites give their unconstrained leaves. Parameters of a
    ``torch.nn.Module`` program count even when it never called ``pyro.module`` (plain Pyro
    would silently train nothing); they come first, and their param-store names are left out:
    module parameters travel in the module's ``state_dict``, and a ``PyroModule``'s param-store
    names change from instance to instance.
    """
    params = module_parameters(*programs)
    names = []
    for name, site in param_trace.nodes.items():
        leaf = site["value"].unconstrained()
        if id(leaf) not in params:
            params[id(leaf)] = leaf
            names.append(name)
    return list(params.values()), names


def unwrap_distribution(fn, *, through_mask: bool = False):
    """The distribution that holds a site's parameters, under its wrappers.

    Strips ``Independent`` (counting the batch dims it reinterpreted as event dims) and
    ``ExpandedDistribution``; with ``through_mask``, ``MaskedDistribution`` too (a sequence model
    masks its padded steps, as Pyro's deep Markov model does), combining the masks.

    Returns
    -------
    (distribution, reinterpreted dims, mask or None)
    """
    reinterpreted, mask = 0, None
    while True:
        if isinstance(fn, torch.distributions.Independent):
            reinterpreted += fn.reinterpreted_batch_ndims
            fn = fn.base_dist
        elif isinstance(fn, pyro.distributions.ExpandedDistribution):
            fn = fn.base_dist
        elif through_mask and isinstance(fn, pyro.distributions.MaskedDistribution):
            mask = mask_of(fn) if mask is None else mask & mask_of(fn)
            fn = fn.base_dist
        else:
            return fn, reinterpreted, mask
