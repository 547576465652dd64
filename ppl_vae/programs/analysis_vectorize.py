"""Whether a pair of programs can take K draws in one pass: the second trace of
:mod:`ppl_vae.programs.analysis`, inside a plate of draws left of every plate they use."""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.distributions import Unit
from pyro.poutine.util import site_is_subsample

from ppl_vae.programs.analysis_sites import DataPlate
from ppl_vae.programs.handlers import PARTICLE_PLATE, FixSubsample, in_draw_plate

__all__ = ["vectorize_verdict", "vectorized_programs"]

_PROBE_DRAWS = 2
# What torch, Pyro and user code raise on tensors of unexpected shapes (broadcasting, indexing,
# plate checks, ``assert x.dim() == 2``): inside the plate of draws, the finding that the draws
# do not vectorize. Anything else is the program's own failure and propagates.
_SHAPE_ERRORS = (RuntimeError, IndexError, ValueError, TypeError, AssertionError,
                 NotImplementedError)


def vectorized_programs(model, guide, plate: DataPlate, rank: int, num: int, rows: int, device):
    """The programs as a vectorized pass runs them: in a plate of ``num`` draws, with the
    chunk's indices for a subsampling plate."""
    model, guide = in_draw_plate(model, num, rank), in_draw_plate(guide, num, rank)
    if plate.subsampled or plate.indexed:
        count = plate.subsample_size if plate.subsampled else rows
        index = torch.arange(count, device=device)
        model, guide = FixSubsample(plate.name, index)(model), FixSubsample(plate.name, index)(guide)
    return model, guide


def vectorize_verdict(model, guide, probe, plate, nesting, enumerated, model_trace,
                       guide_trace) -> tuple[bool, str | None, int]:
    """Trace the pair in a plate of two draws and compare every site's shape with the probe's:
    the draws vectorize when each site gains the draw dimension at ``-(nesting + 1)`` (size 1 or
    2) and keeps its other dimensions. A program that raises inside the plate (Pyro's CVAE:
    ``loc[mask]`` with a mask of the data's shape) is one that does not broadcast over it: the
    error is that observation, recorded as the reason, and no other plan is tried on it.
    Returns (vectorizes, reason, programs run)."""
    rank = nesting + 1
    m, g = vectorized_programs(model, guide, plate, rank, _PROBE_DRAWS, probe[0].shape[0],
                               probe[0].device)
    traces, runs = [], 0
    for label, program in (("guide", g), ("model", m)):
        if traces:
            program = poutine.replay(program, trace=traces[0])
            if enumerated:
                program = poutine.enum(program, first_available_dim=-rank - 1)
        runs += 1
        try:
            traces.append(poutine.trace(program).get_trace(*probe))
        except _SHAPE_ERRORS as exc:
            message = f"{exc}".split("\n")[0]
            return False, f"the {label} raised {type(exc).__name__} in a plate of draws: {message}", runs
    for trace, flat in zip(traces, (guide_trace, model_trace), strict=True):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site) or name == PARTICLE_PLATE:
                continue
            reason = _shape_reason(name, site, flat.nodes.get(name), rank)
            if reason is not None:
                return False, reason, runs
    return True, None, runs


def _broadcast(a: torch.Size, b: torch.Size) -> torch.Size | None:
    """``torch.broadcast_shapes(a, b)``, or None where they do not broadcast."""
    width = max(len(a), len(b))
    a, b = (1,) * (width - len(a)) + tuple(a), (1,) * (width - len(b)) + tuple(b)
    if any(x != y and 1 not in (x, y) for x, y in zip(a, b, strict=True)):
        return None
    return torch.Size(max(x, y) for x, y in zip(a, b, strict=True))


def _batch_shape(site) -> torch.Size | None:
    """The site's batch shape with its value's (None where they do not broadcast)."""
    value, event = site["value"], len(site["fn"].event_shape)
    shape = torch.Size(site["fn"].batch_shape)
    if isinstance(value, torch.Tensor) and value.dim() >= event:
        return _broadcast(shape, value.shape[: value.dim() - event])
    return shape


def _shape_reason(name, site, flat, rank) -> str | None:
    """Why site ``name``'s vectorized batch shape is not the probe's with a draw dimension."""
    if flat is None or isinstance(site["fn"], Unit):
        return None
    got, want = _batch_shape(site), _batch_shape(flat)
    if got is None or want is None:
        return (f"site {name!r}: its value's shape {tuple(site['value'].shape)} does not "
                f"broadcast with its distribution's batch shape inside a plate of draws")
    if site["infer"].get("_enumerate_dim") is not None or len(got) > rank:
        got = got[-rank:]  # enumerated dimensions lie left of the draws
    inner = got[1:] if len(got) == rank else got
    ok_draw = len(got) < rank or got[0] in (1, _PROBE_DRAWS)
    inner_want = want[-len(inner):] if inner else torch.Size()
    if ok_draw and all(a in (1, b) or b == 1 for a, b in zip(inner, inner_want, strict=False)):
        return None
    return (f"site {name!r} has batch shape {tuple(got)} inside a plate of {_PROBE_DRAWS} "
            f"draws at dim {-rank}, {tuple(want)} without it: the program mixes the draws")
