"""Export a trained Pyro model and guide to ArviZ: ``to_arviz`` returns an ``xarray.DataTree``.

ArviZ converts MCMC traces and NumPyro's SVI results, but not a Pyro guide. Here the guide's
draws play the role of posterior samples, and several independently trained runs play the role
of chains, so R-hat across chains measures how much the optimisations disagree.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable, Sequence

import numpy as np
import pyro
import torch
from arviz_base import dict_to_dataset
from pyro import poutine
from xarray import DataTree

from ppl_vae.data.tensors import as_tensors, check_finite
from ppl_vae.evaluation.metrics import RESOLVE_ROWS
from ppl_vae.evaluation.pointwise import (
    Draws,
    draw,
    in_draw_plate,
    reduce_to_points,
    site_log_prob,
)
from ppl_vae.programs.checks import data_dim, resolve_data_plate
from ppl_vae.programs.util import max_plate_nesting, program_dtype

__all__ = ["to_arviz", "runs_from"]


def runs_from(model, guide, runs) -> list[tuple[Callable, Callable, dict]]:
    """Normalise the ``(model, guide)`` / ``runs`` arguments to ``[(model, guide, settings)]``.

    ``model`` may itself be a ``FitResult`` (then ``guide`` is None); ``runs`` is a sequence of
    ``FitResult`` objects or ``(model, guide)`` pairs, one per chain.
    """
    if runs is None:
        if _is_fit_result(model):
            if guide is not None:
                raise ValueError("guide: give either a FitResult as model or a (model, guide) pair")
            return [(model.model, model.guide, dict(model.settings))]
        if model is None or guide is None:
            raise ValueError("model and guide are required when runs is not given")
        return [(model, guide, {})]
    if model is not None or guide is not None:
        raise ValueError("runs: pass model=None and guide=None when runs lists every chain")
    out = []
    for i, run in enumerate(runs):
        if _is_fit_result(run):
            out.append((run.model, run.guide, dict(run.settings)))
        elif isinstance(run, Sequence) and len(run) == 2:
            out.append((run[0], run[1], {}))
        else:
            raise ValueError(f"runs[{i}]: expected a FitResult or a (model, guide) pair")
    if not out:
        raise ValueError("runs: empty; give at least one trained (model, guide) pair")
    return out


def _is_fit_result(obj) -> bool:
    from ppl_vae.train.result import FitResult

    return isinstance(obj, FitResult)




@torch.no_grad()
def _replicate(model, latents, batch, num, rank, data_plate):
    """Replicated observations x_rep ~ p(x | z_k) for the given latent draws, the means of
    p(x | z_k) (None where the distribution has no closed-form mean) and each site's data dim."""
    program = poutine.condition(poutine.uncondition(in_draw_plate(model, num, rank)), data=latents)
    with pyro.validation_enabled(False):
        trace = poutine.trace(program).get_trace(*batch)
    reps, means, dims = {}, {}, {}
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and site["infer"].get("was_observed"):
            value = site["value"]
            reps[name] = value
            dims[name] = data_dim(site, data_plate)
            try:
                means[name] = site["fn"].mean.expand(value.shape)
            except (NotImplementedError, RuntimeError):
                means[name] = None
    return reps, means, dims


def _site_array(value: torch.Tensor, rank: int, data_dim, n: int) -> np.ndarray:
    """A sampled value with K leftmost at ``-(rank + event_dim)`` as an array of shape
    (K, N, *event) for local sites (``data_dim`` given) or (K, *plates, *event) for global ones."""
    value = value.detach().to("cpu")
    event = tuple(value.shape[rank:])
    num = value.shape[0]
    if data_dim is not None:
        value = value.movedim(rank + data_dim, 1)
        if any(s != 1 for s in value.shape[2:rank]):
            raise ValueError("a latent inside plates other than the data plate cannot be exported "
                             "yet; sum it into one site or use the data plate only")
        value = value.reshape(num, value.shape[1], *event).expand(num, n, *event)
    else:
        others = [s for s in value.shape[1:rank] if s != 1]
        value = value.reshape(num, *others, *event)
    return value.numpy()


def _versions() -> dict:
    out = {}
    for pkg in ("ppl-vae", "pyro-ppl", "torch", "arviz-base", "arviz-stats"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def to_arviz(
    model=None,
    guide=None,
    data=None,
    *,
    num_draws: int = 100,
    runs=None,
    seed: int | None = 0,
    data_plate: str | None = None,
    posterior_predictive: bool = True,
    settings: dict | None = None,
    name: str | None = None,
) -> DataTree:
    """Draw from the guide on ``data`` and return ArviZ's DataTree of the variational posterior.

    Parameters
    ----------
    model, guide : callable
        Trained Pyro programs called as ``model(*data)``; ``model`` may be a ``FitResult``.
        Leave both None when ``runs`` is given.
    data : tensor, ndarray, DataFrame or tuple of them
        N data points.
    num_draws : int
        K guide draws per chain (vectorized over a particle plate).
    runs : sequence of FitResult or (model, guide) pairs, optional
        Independently trained runs; each becomes one chain.
    seed : int, optional
        Seeds the draws (the global RNG state is restored afterwards).
    data_plate : str, optional
        Name of the plate over data points; local sites get a dimension of that name. None:
        found as ``fit`` finds it; the name used is ``tree.attrs["data_plate"]``.
    posterior_predictive : bool
        Also draw replicated observations x_rep ~ p(x | z_k).
    settings : dict, optional
        Training settings stored in the root attributes (a FitResult's own are used otherwise).

    Returns
    -------
    xarray.DataTree
        Groups ``posterior`` (local latents with dims ``(chain, draw, <data_plate>, <site>_dim_j)``,
        global ones without the data dimension), ``posterior_predictive`` (replicated observations
        and, where defined, ``<site>_mean`` = E[x | z]), ``log_likelihood`` (log p(x_i | z), per
        observed site), ``sample_stats`` (``log_p`` = log p(x_i, z_i), ``log_q`` = log q(z_i | x_i),
        both (chain, draw, <data_plate>), and ``log_p_global``/``log_q_global`` with global
        latents), ``observed_data``; the root attributes hold settings and versions.
    """
    if data is None:
        raise ValueError("data: required (the data points to draw the posterior on)")
    if int(num_draws) < 1:
        raise ValueError(f"num_draws must be a positive integer, got {num_draws!r}")
    chains = runs_from(model, guide, runs)
    dtype, device = program_dtype(chains[0][0], chains[0][1])
    batch = as_tensors(data, dtype=dtype, device=device, name="data")
    check_finite(batch)
    n = batch[0].shape[0]
    gen_state = torch.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        data_plate = resolve_data_plate(chains[0][0], chains[0][1],
                                        tuple(t[:RESOLVE_ROWS] for t in batch), data_plate,
                                        num_data=n)
        per_chain = [_one_chain(m, g, batch, int(num_draws), data_plate, posterior_predictive)
                     for m, g, _ in chains]
    finally:
        if seed is not None:
            torch.set_rng_state(gen_state)
    groups = {key: {} for key in ("posterior", "posterior_predictive", "log_likelihood",
                                  "sample_stats", "observed_data")}
    for key in groups:
        if key == "observed_data":
            continue
        names = per_chain[0][key].keys()
        for i, chain in enumerate(per_chain[1:], start=1):
            if chain[key].keys() != names or any(chain[key][v].shape != per_chain[0][key][v].shape
                                                 for v in names):
                raise ValueError(f"runs[{i}]: its sites or shapes differ from runs[0]; chains "
                                 "must be runs of the same model and guide")
        for var in names:
            groups[key][var] = np.stack([c[key][var] for c in per_chain])
    dims = {}
    first: Draws = per_chain[0]["draws"]
    for site, dim in first.data_dims.items():
        ndim = groups["posterior"][site].ndim - (3 if dim is not None else 2)
        dims[site] = ([data_plate] if dim is not None else []) + [
            f"{site}_dim_{j}" for j in range(ndim)]
    for site, value in per_chain[0]["observed"].items():
        dims[site] = [data_plate] + [f"{site}_dim_{j}" for j in range(value.ndim - 1)]
        dims[f"{site}_mean"] = dims[site]
    for var in groups["log_likelihood"]:
        dims[var] = [data_plate]
    for var in ("log_p", "log_q", "log_lik"):
        dims[var] = [data_plate]
    groups["observed_data"] = per_chain[0]["observed"]
    coords = {data_plate: np.arange(n)}
    sample_dims = ["chain", "draw"]
    tree_groups = {}
    for key, values in groups.items():
        if not values:
            continue
        tree_groups[key] = dict_to_dataset(
            values, dims=dims, coords=coords,
            sample_dims=[] if key == "observed_data" else sample_dims,
            inference_library=pyro, check_conventions=False,
        )
    tree = DataTree.from_dict(tree_groups, name=name)
    run_settings = settings if settings is not None else chains[0][2]
    tree.attrs = {
        "created_by": "ppl_vae.to_arviz",
        "estimator": str(run_settings.get("estimator", "unknown")),
        "seed": -1 if seed is None else int(seed),
        "chain_seeds": json.dumps([c[2].get("seed") for c in chains]),
        "num_draws": int(num_draws),
        "data_plate": data_plate,
        "local_sites": json.dumps(first.local_sites),
        "global_sites": json.dumps(first.global_sites),
        "observed_sites": json.dumps(list(first.observed)),
        "settings": json.dumps(run_settings, default=str),
        "versions": json.dumps(_versions()),
    }
    return tree


def _one_chain(model, guide, batch, num, data_plate, with_replicates) -> dict:
    n = batch[0].shape[0]
    nesting = max_plate_nesting(model, guide, batch)
    rank = nesting + 1
    d = draw(model, guide, batch, num_samples=num, data_plate=data_plate, nesting=nesting)
    out = {
        "draws": d,
        "posterior": {s: _site_array(v, rank, d.data_dims[s], n) for s, v in d.latents.items()},
        "sample_stats": {"log_p": _np(d.log_p), "log_q": _np(d.log_q)},
        "log_likelihood": {},
        "posterior_predictive": {},
        "observed": {s: _np(v) for s, v in d.observed.items()},
        "obs_dims": {},
    }
    if d.global_sites:
        out["sample_stats"]["log_p_global"] = _np(d.log_prior_global)
        out["sample_stats"]["log_q_global"] = _np(d.log_q_global)
    if len(d.observed) == 1:
        out["log_likelihood"][next(iter(d.observed))] = _np(d.log_lik)
    else:
        out["sample_stats"]["log_lik"] = _np(d.log_lik)
        for site in d.observed:
            out["log_likelihood"][site] = _np(_site_log_lik(model, d, batch, site, num, rank,
                                                            data_plate))
    if with_replicates:
        reps, means, obs_dims = _replicate(model, d.latents, batch, num, rank, data_plate)
        out["obs_dims"] = obs_dims
        for site, value in reps.items():
            out["posterior_predictive"][site] = _site_array(value, rank, obs_dims[site], n)
            if means.get(site) is not None:
                out["posterior_predictive"][f"{site}_mean"] = _site_array(
                    means[site], rank, obs_dims[site], n)
    return out


def _site_log_lik(model, d, batch, site, num, rank, data_plate):
    program = poutine.condition(in_draw_plate(model, num, rank), data=d.latents)
    with torch.no_grad(), pyro.validation_enabled(False):
        trace = poutine.trace(program).get_trace(*batch)
    s = trace.nodes[site]
    return reduce_to_points(site_log_prob(s), rank, data_dim(s, data_plate), batch[0].shape[0])


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu").numpy()
