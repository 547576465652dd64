"""The draws of selected data points, chunk by chunk, laid out for ArviZ (``to_arviz``'s
groups) -- the part of a pass over the data that is kept, where the rest is reduced."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyro
import torch
from pyro import poutine

from ppl_vae.evaluation.chunks import PointPlan, global_draws, map_chunks
from ppl_vae.evaluation.pointwise import Draws, FixSubsample, in_draw_plate
from ppl_vae.evaluation.recorded import ChunkDrawer
from ppl_vae.programs.checks import data_dim
from ppl_vae.programs.random import chunk_seed, seeded

__all__ = ["ChainPass", "chain_pass", "select_points"]

# Draws exported per chain by default: 100 points x 200 draws of E[x | z] on 784 pixels is
# 63 MB of float32 before compression, which keeps diagnostics.nc of MNIST under 100 MB.
DEFAULT_POINTS = 100


def select_points(n: int, points, seed: int | None) -> np.ndarray:
    """Sorted indices of the exported points.

    ``points`` is ``"all"``, a number (that many points chosen at random, reproducibly from
    ``seed``; all of them when N is not larger) or a sequence of indices.
    """
    if isinstance(points, str):
        if points != "all":
            raise ValueError(f"points: expected 'all', a number or a list of indices, got {points!r}")
        return np.arange(n)
    if np.ndim(points) == 0:
        count = int(points)
        if count < 1:
            raise ValueError(f"points: must be at least 1, got {points!r}")
        if count >= n:
            return np.arange(n)
        rng = np.random.default_rng(chunk_seed(0 if seed is None else seed, "points"))
        return np.sort(rng.choice(n, size=count, replace=False))
    index = np.unique(np.asarray(points, dtype=np.int64))
    if index.size == 0 or index[0] < 0 or index[-1] >= n:
        raise ValueError(f"points: indices must lie in 0..{n - 1} (the data points), got "
                         f"{np.asarray(points).ravel()[:5].tolist()}...")
    return index


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu").numpy()


def site_array(value: torch.Tensor, rank: int, dim, n: int) -> np.ndarray:
    """A sampled value with K leftmost at ``-(rank + event_dim)`` as an array of shape
    (K, N, *event) for local sites (``dim`` given) or (K, *plates, *event) for global ones."""
    value = value.detach().to("cpu")
    event = tuple(value.shape[rank:])
    num = value.shape[0]
    if dim is not None:
        value = value.movedim(rank + dim, 1)
        if any(s != 1 for s in value.shape[2:rank]):
            raise ValueError("a latent inside plates other than the data plate cannot be exported "
                             "yet; sum it into one site or use the data plate only")
        value = value.reshape(num, value.shape[1], *event).expand(num, n, *event)
    else:
        others = [s for s in value.shape[1:rank] if s != 1]
        value = value.reshape(num, *others, *event)
    return value.numpy()


@torch.no_grad()
def _replicate(model, plan: PointPlan, d: Draws, batch, subsample, num: int) -> dict:
    """Replicated observations x_rep ~ p(x | z_k) at the draws ``d`` (and E[x | z_k] where the
    distribution has a mean): {site: (value, mean or None, data dim)} in the draws' layout."""
    program = poutine.uncondition(model)
    if subsample is not None:
        program = FixSubsample(plan.data_plate, subsample)(program)
    rank = plan.nesting + 1
    with pyro.validation_enabled(False):
        if plan.vectorized:
            traces = [poutine.trace(poutine.condition(in_draw_plate(program, num, rank),
                                                      data=d.latents)).get_trace(*batch)]
        else:  # one draw at a time, each latent in the shape the program itself gives it
            shapes = {s: site["value"].shape for s, site in
                      poutine.trace(program).get_trace(*batch).nodes.items() if s in d.latents}
            traces = [poutine.trace(poutine.condition(program, data={
                s: v[k].reshape(shapes[s]) for s, v in d.latents.items()})).get_trace(*batch)
                for k in range(num)]
    out = {}
    for name, site in traces[0].nodes.items():
        if site["type"] != "sample" or not site["infer"].get("was_observed"):
            continue
        values, means = [], []
        event = len(site["fn"].event_shape)
        for tr in traces:
            s = tr.nodes[name]
            values.append(s["value"] if plan.vectorized else
                          s["value"].reshape((1,) * (rank + event - s["value"].dim())
                                             + tuple(s["value"].shape)))
            try:
                means.append(s["fn"].mean.expand(s["value"].shape).reshape(values[-1].shape))
            except (NotImplementedError, RuntimeError):
                means = None
        out[name] = (torch.cat(values), None if means is None else torch.cat(means),
                     data_dim(site, plan.data_plate))
    return out


def export_chunk(plan: PointPlan, model, d: Draws, tensors, start: int, positions: np.ndarray,
                 *, with_replicates: bool, seed, key) -> dict:
    """{(group, var): (array, is_local)} for the points ``start + positions`` of a chunk's
    draws; local arrays have the points on axis 1 (axis 0 for observed data)."""
    index = torch.as_tensor(positions, dtype=torch.long, device=d.log_lik.device)
    sel = d.take(index)
    n, rank = len(positions), d.rank
    out = {}
    for s, v in sel.latents.items():
        out[("posterior", s)] = (site_array(v, rank, sel.data_dims[s], n),
                                 sel.data_dims[s] is not None)
    out[("sample_stats", "log_p")] = (_np(sel.log_p), True)
    out[("sample_stats", "log_q")] = (_np(sel.log_q), True)
    if sel.global_sites:
        out[("sample_stats", "log_p_global")] = (_np(sel.log_prior_global), False)
        out[("sample_stats", "log_q_global")] = (_np(sel.log_q_global), False)
    if len(sel.observed) > 1:
        out[("sample_stats", "log_lik")] = (_np(sel.log_lik), True)
    for s, lp in sel.log_lik_sites.items():
        out[("log_likelihood", s)] = (_np(lp), True)
    for s, v in sel.observed.items():
        out[("observed_data", s)] = (_np(v), sel.observed_dims[s][0] is not None)
    if with_replicates:
        with seeded(chunk_seed(seed, "replicate", key, start)):
            reps = _chunk_replicates(plan, model, d, sel, tensors, start, positions)
        for s, (value, mean, dim) in reps.items():
            out[("posterior_predictive", s)] = (value, dim is not None)
            if mean is not None:
                out[("posterior_predictive", f"{s}_mean")] = (mean, dim is not None)
    return out


def _chunk_replicates(plan, model, d, sel, tensors, start, positions) -> dict:
    num = d.log_lik.shape[0]
    if not plan.subsampled:
        batch, _ = plan.chunk(tensors, start, positions)
        reps = _replicate(model, plan, sel, batch, None, num)
        return {s: (site_array(v, d.rank, dim, len(positions)), None if m is None else
                    site_array(m, d.rank, dim, len(positions)), dim) for s, (v, m, dim) in reps.items()}
    # A self-subsampling model takes its whole (padded) chunk; the padding gets any latents.
    batch, subsample = plan.chunk(tensors, start)
    valid = d.log_lik.shape[1]
    pad = torch.arange(len(subsample), device=d.log_lik.device).clamp(max=valid - 1)
    reps = _replicate(model, plan, d.take(pad), batch, subsample, num)
    size = len(subsample)

    def keep(v, dim):
        a = site_array(v, d.rank, dim, size)
        return a[:, positions] if dim is not None else a

    return {s: (keep(v, dim), None if m is None else keep(m, dim), dim)
            for s, (v, m, dim) in reps.items()}


class ChainPass:
    """One chain's pass: the exported arrays of the selected points, what ``per_chunk``
    returned for every visited chunk, and the sum over all points of the local log ratios
    per draw (``local_log_ratio``, shape (K,); None when not every chunk was visited); ``meta``
    names the sites (``local_sites``, ``global_sites``, ``observed_sites``, ``data_dims``,
    ``observed_dims``)."""

    def __init__(self, arrays, extras, local_log_ratio, meta: dict, local=frozenset()):
        self.arrays, self.extras, self.local_log_ratio = arrays, extras, local_log_ratio
        self.meta, self.local = meta, frozenset(local)

    def merged(self, other: ChainPass, mine: np.ndarray, theirs: np.ndarray) -> ChainPass:
        """This pass's arrays with ``other``'s (of disjoint points) inserted in index order."""
        order = np.argsort(np.concatenate([mine, theirs]), kind="stable")
        arrays = {}
        for key, value in self.arrays.items():
            if key not in self.local:
                arrays[key] = value
                continue
            axis = 0 if key[0] == "observed_data" else 1
            arrays[key] = np.take(np.concatenate([value, other.arrays[key]], axis=axis), order,
                                  axis=axis)
        return ChainPass(arrays, self.extras, self.local_log_ratio, self.meta, self.local)


def chain_pass(model, guide, tensors, plan: PointPlan, selected: np.ndarray, *, num_draws: int,
               seed, key=0, with_replicates=True, per_chunk: Callable | None = None,
               engine=None, progress=None, need_joint: bool = True) -> ChainPass:
    """Draw chunk by chunk, keep the selected points' draws and reduce the rest.

    Only chunks that hold a selected point are drawn, unless ``per_chunk`` is given or the
    programs have global latents and ``need_joint`` (the joint ratio needs every point).
    ``per_chunk(start, draws)`` is called on every visited chunk (its results are kept).
    """
    globals_ = global_draws(plan, model, guide, tensors, num_draws=num_draws, seed=seed, key=key)
    everything = per_chunk is not None or (plan.has_global and need_joint)
    starts = [s for s in plan.starts()
              if everything or np.any((selected >= s) & (selected < plan.stop(s)))]

    drawer = ChunkDrawer(plan, model, guide, tensors, num_draws=num_draws, seed=seed,
                         globals_=globals_, key=key, num_chunks=len(starts), engine=engine)

    def one(start):
        d = drawer(start)
        mine = selected[(selected >= start) & (selected < plan.stop(start))] - start
        arrays = (export_chunk(plan, model, d, tensors, start, mine,
                               with_replicates=with_replicates, seed=seed, key=key)
                  if mine.size else None)
        extra = per_chunk(start, d) if per_chunk is not None else None
        meta = {"local_sites": d.local_sites, "global_sites": d.global_sites,
                "observed_sites": list(d.observed), "data_dims": d.data_dims,
                "observed_dims": d.observed_dims, "scales": d.scales}
        return arrays, extra, d.log_weights.double().sum(1).cpu(), meta

    parts = map_chunks(one, starts, engine=engine, desc="draws", progress=progress)
    arrays, local = _merge([p[0] for p in parts if p[0] is not None])
    total = torch.stack([p[2] for p in parts]).sum(0) if everything else None
    meta = {**parts[0][3], "draws_path": drawer.path}  # this process's
    return ChainPass(arrays, [p[1] for p in parts], total, meta, local)


def _merge(chunks: list[dict]) -> dict:
    """Concatenate the chunks' local arrays along their point axis (globals from the first)."""
    if not chunks:
        return {}, set()
    out, local_keys = {}, set()
    for key, (first, local) in chunks[0].items():
        if not local:
            out[key] = first
            continue
        axis = 0 if key[0] == "observed_data" else 1
        out[key] = np.concatenate([c[key][0] for c in chunks], axis=axis)
        local_keys.add(key)
    return out, local_keys
