"""``latents``: the per-point latent representation of any guide (scvi-tools'
``get_latent_representation``), in chunks like every per-point pass (:mod:`.chunks`)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence

import pyro
import torch
from pyro import poutine

from ppl_vae.data.tensors import as_tensors, check_finite
from ppl_vae.evaluation.chunks import PointPlan, chunk_draws, global_draws, map_chunks, plan_points
from ppl_vae.evaluation.pointwise import FixSubsample
from ppl_vae.programs.checks import latent_sites
from ppl_vae.programs.random import chunk_seed, seeded
from ppl_vae.programs.util import program_dtype

__all__ = ["latents", "eval_mode", "MEAN_DRAWS"]

MEAN_DRAWS = 100  # draws averaged where the guide's distribution gives no mean


@contextlib.contextmanager
def eval_mode(*programs):
    """``module.eval()`` for the programs that are ``torch.nn.Module``s (dropout off, batch norm
    on its running statistics), their training flags restored afterwards."""
    modules = [p for p in programs if isinstance(p, torch.nn.Module)]
    flags = [{m: m.training for m in module.modules()} for module in modules]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for saved in flags:
            for m, flag in saved.items():
                m.train(flag)


def latents(model: Callable, guide: Callable, data, *, sites: Sequence[str] | None = None,
            num_draws: int = 0, data_plate: str | None = None, batch_size: int | None = None,
            seed: int | None = 0, progress: bool | None = False) -> dict[str, torch.Tensor]:
    """The guide's latent representation of every data point: per-point means, or draws.

    Parameters
    ----------
    model, guide : callable
        Trained Pyro programs (user guides, autoguides, zoo guides), run in eval mode.
    data : tensor, ndarray, DataFrame or tuple of these
        ``N`` rows, as ``fit`` takes them; the result has their device and dtype.
    sites : sequence of str, optional
        Local latent sites (those in the data plate) to return; default all of them.
    num_draws : int
        0 (default): the per-point guide mean. K > 0: K draws per point.
    data_plate, batch_size, seed, progress
        As for :func:`~ppl_vae.evaluation.metrics.evaluate` (``batch_size``: points per
        chunk; ``seed`` seeds the draws and leaves the global random state as it was).

    Returns
    -------
    dict of str -> tensor
        Per site, shape ``(N, *event_shape)`` for means and ``(num_draws, N, *event_shape)`` for
        draws (a site inside another plate of size > 1 keeps that dimension after ``N``).

    Notes
    -----
    The mean is the guide distribution's ``.mean`` (for ``AutoNormal``'s real-valued sites,
    their auxiliary ``Normal``'s) where that is the whole answer: it exists and two guide runs
    with other draws give the same one (it depends on no global or joint draw). Otherwise (a
    normalizing flow, a discrete site, an ``AutoDiagonalNormal`` whose sites are functions of
    one joint draw, a local site whose distribution depends on a global draw) it is the average
    of ``MEAN_DRAWS`` draws, with a ``UserWarning`` naming the sites and why.
    """
    if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 0:
        raise ValueError(f"num_draws must be a whole number >= 0, got {num_draws!r}")
    ref_dtype, device = program_dtype(model, guide)
    tensors = as_tensors(data, dtype=ref_dtype, device=device, name="data")
    check_finite(tensors)
    with eval_mode(model, guide), torch.no_grad():
        plan = plan_points(model, guide, tensors, num_draws=max(num_draws, MEAN_DRAWS),
                           data_plate=data_plate, chunk_size=batch_size,
                           draws_argument="num_draws")
        local, direct = _local_sites(plan, guide, tensors, seed)
        chosen = list(local) if sites is None else list(sites)
        unknown = [s for s in chosen if s not in local]
        if unknown:
            raise ValueError(f"sites: {unknown} are not local latent sites of the guide (in "
                             f"plate {plan.data_plate!r}); its local sites are {list(local)}")
        if num_draws:
            return _draws(plan, model, guide, tensors, chosen, num_draws, seed, progress)
        averaged = [s for s in chosen if s not in direct]
        out = {}
        if averaged:
            warnings.warn(f"latents: sites {averaged} have no mean in closed form here ("
                          f"{'; '.join(local[s] for s in averaged)}): their means average "
                          f"{MEAN_DRAWS} draws", UserWarning, stacklevel=2)
            drawn = _draws(plan, model, guide, tensors, averaged, MEAN_DRAWS, seed, progress)
            out.update({s: v.mean(0) for s, v in drawn.items()})
        exact = [s for s in chosen if s in direct]
        if exact:
            parts = map_chunks(lambda start: _chunk_means(plan, guide, tensors, start, exact),
                               plan.starts(), desc="latents", progress=progress)
            out.update({s: torch.cat([p[s] for p in parts]) for s in exact})
    return {s: out[s] for s in chosen}


def _guide_trace(plan: PointPlan, guide, tensors, start: int, seed):
    batch, subsample = plan.chunk(tensors, start)
    program = guide if subsample is None else FixSubsample(plan.data_plate, subsample)(guide)
    with seeded(chunk_seed(seed, "latents", start)), pyro.validation_enabled(False):
        return poutine.trace(program).get_trace(*batch)


def _in_plate(site, plate: str):
    return next((f for f in site["cond_indep_stack"] if f.name == plate), None)


def _local_sites(plan: PointPlan, guide, tensors, seed) -> tuple[dict, set]:
    """``{local site: why its mean is averaged, or ""}`` and the sites with a direct mean, from
    two guide traces on the first chunk (other draws): a mean that changes between them depends
    on a draw (of a global site, or a joint auxiliary one) and is averaged instead."""
    trace = _guide_trace(plan, guide, tensors, 0, seed)
    again = _guide_trace(plan, guide, tensors, 0, chunk_seed(seed, "again"))
    local = {n: "" for n in latent_sites(trace)
             if not trace.nodes[n]["infer"].get("is_auxiliary")
             and _in_plate(trace.nodes[n], plan.data_plate) is not None}
    for name in local:
        fn = _mean_source(trace, name, plan.data_plate)
        if fn.support.is_discrete:
            local[name] = f"{name!r} is discrete"
        elif not _has_mean(fn):
            local[name] = f"{name!r}: {type(fn).__name__} has no .mean"
        elif not torch.equal(fn.mean, _mean_source(again, name, plan.data_plate).mean):
            local[name] = f"{name!r} depends on another draw of the guide (a global or joint site)"
    return local, {n for n, why in local.items() if not why}


def _mean_source(trace, name: str, plate: str):
    """The distribution whose mean is the site's: its own, or for an autoguide's ``Delta`` site
    whose value is its local auxiliary draw unchanged (``AutoNormal`` on a real-valued site),
    that auxiliary site's."""
    site = trace.nodes[name]
    partner = trace.nodes.get(f"{name}_unconstrained")
    if (isinstance(site["fn"], pyro.distributions.Delta) and partner is not None
            and partner["infer"].get("is_auxiliary") and _in_plate(partner, plate) is not None
            and partner["value"].shape == site["value"].shape
            and torch.equal(partner["value"], site["value"])):
        return partner["fn"]
    return site["fn"]


def _has_mean(fn) -> bool:
    """Whether ``fn`` (through Pyro's and torch's wrappers) defines its mean."""
    while isinstance(fn, torch.distributions.Independent | pyro.distributions.ExpandedDistribution
                     | pyro.distributions.MaskedDistribution):
        fn = fn.base_dist
    return type(fn).mean is not torch.distributions.Distribution.mean


def _points_first(value: torch.Tensor, first: int, event_dim: int, keep: int) -> torch.Tensor:
    """``value`` with its data dimension (``first``) moved to position ``keep`` and the other
    batch dimensions of size 1 dropped."""
    value = value.movedim(first, keep)
    batch = value.dim() - event_dim
    drop = [d for d in range(keep + 1, batch) if value.shape[d] == 1]
    return value.squeeze(drop) if drop else value


def _chunk_means(plan: PointPlan, guide, tensors, start: int, sites) -> dict:
    trace = _guide_trace(plan, guide, tensors, start, None)
    valid = plan.stop(start) - start
    out = {}
    for name in sites:
        site, fn = trace.nodes[name], _mean_source(trace, name, plan.data_plate)
        event_dim = len(fn.event_shape)
        mean = fn.mean.expand(fn.batch_shape + fn.event_shape)
        first = mean.dim() - event_dim + _in_plate(site, plan.data_plate).dim
        out[name] = _points_first(mean, first, event_dim, 0)[:valid].detach().clone()
    return out


def _draws(plan, model, guide, tensors, sites, num_draws, seed, progress) -> dict:
    globals_ = global_draws(plan, model, guide, tensors, num_draws=num_draws, seed=seed)

    def one(start):
        d = chunk_draws(plan, model, guide, tensors, start, num_draws=num_draws, seed=seed,
                        globals_=globals_)
        out = {}
        for name in sites:
            value = d.latents[name]
            event_dim = value.dim() - d.rank
            # The draws lie at dimension 0; the data dimension d.data_dims[name] of the batch.
            out[name] = _points_first(value, d.rank + d.data_dims[name], event_dim, 1).detach()
        return out

    parts = map_chunks(one, plan.starts(), desc="latents", progress=progress)
    return {s: torch.cat([p[s] for p in parts], dim=1) for s in sites}
