"""Facts about a pair of Pyro programs, read off one run of them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import torch

from ppl_vae.programs.checks import trace_pair

__all__ = ["max_plate_nesting", "program_dtype"]


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
