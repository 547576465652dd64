"""Export a trained Pyro model and guide to ArviZ: ``to_arviz`` returns an ``xarray.DataTree``.

ArviZ converts MCMC traces and NumPyro's SVI results, but not a Pyro guide. Here the guide's
draws play the role of posterior samples, and several independently trained runs play the role
of chains, so R-hat across chains measures how much the optimisations disagree.

At real size the draws of every point do not fit (200 draws x 60,000 MNIST rows x 784 pixels
of posterior predictive is 37 GB): by default the draws of a fixed, reproducible subset of
points are exported (``points=100``), computed chunk by chunk; ``points="all"`` exports all.
"""

from __future__ import annotations

import importlib.metadata
import json
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pyro
from arviz_base import from_dict
from xarray import DataTree

from ppl_vae.data.tensors import as_tensors, check_finite
from ppl_vae.evaluation.chunks import PointPlan, plan_points
from ppl_vae.evaluation.export import DEFAULT_POINTS, ChainPass, chain_pass, select_points
from ppl_vae.programs.modes import eval_mode
from ppl_vae.programs.util import program_dtype
from ppl_vae.train.result import FitResult

__all__ = ["build_tree", "to_arviz", "runs_from", "split_result"]


# arviz_stats.loo runs on this tree and gives numbers that mean nothing (on the digits VAE:
# elpd_loo -2464, 93% of k-hat bad, no warning): say so where a user of ArviZ looks.
NO_LOO = ("leave-one-out (arviz_stats.loo) does not apply: every data point has its own "
          "amortized local latent, so leaving a point out removes its latent too and PSIS-LOO "
          "weights are the guide's importance ratios, not leave-one-out ratios. Compare models by "
          "held-out log p(x) per point with ppl_vae.compare (or ppl-vae compare)")


def split_result(model, guide, result) -> tuple:
    """``(model, result)`` of a public function's arguments: a ``FitResult`` has its own
    keyword ``result=``; one given as ``model`` (the old spelling) still works, moves to
    ``result`` and warns (``FutureWarning``)."""
    if _is_fit_result(model):
        warnings.warn("passing a FitResult as model is deprecated and will stop working in the "
                      "next release: pass it as result=... (model and guide are for programs)",
                      FutureWarning, stacklevel=3)
        if result is not None:
            raise ValueError("model: a FitResult, and result= another: give one FitResult, "
                             "as result=")
        return None, model
    if result is None:
        return model, None
    if not _is_fit_result(result):
        raise ValueError(f"result: expected what fit returns (a FitResult), got "
                         f"{type(result).__name__}; pass programs as model= and guide=")
    if model is not None or guide is not None:
        raise ValueError("result: give either result= (a FitResult) or model= and guide=, not "
                         "both")
    return None, result


def runs_from(model, guide, runs, result=None) -> list[tuple[Callable, Callable, dict]]:
    """Normalise the ``(model, guide)`` / ``result`` / ``runs`` arguments to
    ``[(model, guide, settings)]``.

    ``result`` is a ``FitResult`` (then ``model`` and ``guide`` are None; a ``FitResult`` given
    as ``model`` is read the same way); ``runs`` is a sequence of ``FitResult`` objects or
    ``(model, guide)`` pairs, one per chain.
    """
    if runs is None and result is not None:
        return [(result.model, result.guide, dict(result.settings))]
    if result is not None:
        raise ValueError("runs: pass result=None when runs lists every chain")
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
    return isinstance(obj, FitResult)




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
    points=DEFAULT_POINTS,
    chunk_size: int | None = None,
    engine=None,
    progress: bool | None = False,
    result=None,
) -> DataTree:
    """Draw from the guide on ``data`` and return ArviZ's DataTree of the variational posterior.

    Parameters
    ----------
    model, guide : callable
        Trained Pyro programs called as ``model(*data)`` (a ``FitResult`` given as ``model``
        still works, with a ``FutureWarning``: pass it as ``result``).
        Leave both None when ``runs`` is given.
    data : tensor, ndarray, DataFrame or tuple of them
        N data points.
    num_draws : int
        K guide draws per chain (vectorized over a particle plate where the programs allow it,
        else drawn one by one).
    runs : sequence of FitResult or (model, guide) pairs, optional
        Independently trained runs; each becomes one chain.
    seed : int, optional
        Seeds the draws (the global RNG state is restored afterwards). A point's draws depend
        on the seed and on the chunk it falls in, not on which points are exported.
    data_plate : str, optional
        Name of the plate over data points; local sites get a dimension of that name. None:
        found as ``fit`` finds it; the name used is ``tree.attrs["data_plate"]``.
    posterior_predictive : bool
        Also draw replicated observations x_rep ~ p(x | z_k).
    settings : dict, optional
        Training settings stored in the root attributes (a FitResult's own are used otherwise).
    points : "all", int or sequence of int
        The data points whose draws are exported: by default 100 chosen at random (reproducibly
        from ``seed``), ``"all"``, a number of random points, or indices. Their indices are the
        coordinate of the ``<data_plate>`` dimension.
    chunk_size : int, optional
        Data points drawn at once (memory is bounded by one chunk); by default about 2^23
        elements per drawn tensor.
    engine : ppl_vae.parallel.engine.Engine, optional
        Shard the chunks over the processes of a launched run.
    progress : bool, optional
        A progress bar over chunks (``None``: on a terminal only).
    result : FitResult, optional
        What ``fit`` returned, instead of ``model`` and ``guide`` (its settings are used).

    Returns
    -------
    xarray.DataTree
        Groups ``posterior`` (local latents with dims ``(chain, draw, <data_plate>, <site>_dim_j)``,
        global ones without the data dimension), ``posterior_predictive`` (replicated observations
        and, where defined, ``<site>_mean`` = E[x | z]), ``log_likelihood`` (log p(x_i | z), per
        observed site), ``sample_stats`` (``log_p`` = log p(x_i, z_i), ``log_q`` = log q(z_i | x_i),
        both (chain, draw, <data_plate>), and ``log_p_global``/``log_q_global`` with global
        latents, with ``local_log_ratio`` = sum over all N points of log p(x_i, z_i) - log q, per
        draw), ``observed_data``; the root attributes hold settings, versions and ``num_points``
        (N, all points).
    """
    if data is None:
        raise ValueError("data: required (the data points to draw the posterior on)")
    if int(num_draws) < 1:
        raise ValueError(f"num_draws must be a positive integer, got {num_draws!r}")
    model, result = split_result(model, guide, result)
    chains = runs_from(model, guide, runs, result)
    dtype, device = program_dtype(chains[0][0], chains[0][1])
    batch = as_tensors(data, dtype=dtype, device=device, name="data")
    check_finite(batch)
    # The draws with the programs' modules in evaluation mode (dropout off), as evaluate.
    with eval_mode(*(p for m, g, _ in chains for p in (m, g))) as switched:
        plan = plan_points(chains[0][0], chains[0][1], batch, num_draws=int(num_draws),
                           data_plate=data_plate, chunk_size=chunk_size,
                           draws_argument="num_draws")
        selected = select_points(plan.num_points, points, seed)
        passes = [chain_pass(m, g, batch, plan, selected, num_draws=int(num_draws), seed=seed,
                             key=i, with_replicates=posterior_predictive, engine=engine,
                             progress=progress) for i, (m, g, _) in enumerate(chains)]
    run_settings = settings if settings is not None else chains[0][2]
    tree = build_tree(passes, plan, selected, chains=chains, num_draws=int(num_draws),
                      seed=seed, settings=run_settings, name=name)
    tree.attrs["modules_switched_to_eval"] = int(switched)
    return tree


def build_tree(passes: list[ChainPass], plan: PointPlan, selected: np.ndarray, *, chains,
               num_draws: int, seed, settings: dict, name=None) -> DataTree:
    """The DataTree of one :class:`~ppl_vae.evaluation.export.ChainPass` per chain
    (``arviz_base.from_dict``), with the selected points as the data-plate coordinate."""
    first, plate = passes[0], plan.data_plate
    groups: dict = {}
    for key, value in first.arrays.items():
        for i, other in enumerate(passes[1:], start=1):
            if key not in other.arrays or other.arrays[key].shape != value.shape:
                raise ValueError(f"runs[{i}]: its sites or shapes differ from runs[0]; chains "
                                 "must be runs of the same model and guide")
        stacked = value if key[0] == "observed_data" else np.stack([p.arrays[key] for p in passes])
        groups.setdefault(key[0], {})[key[1]] = stacked
    meta = first.meta
    if meta["global_sites"] and all(p.local_log_ratio is not None for p in passes):
        groups["sample_stats"]["local_log_ratio"] = np.stack(
            [p.local_log_ratio.numpy() for p in passes]).astype(groups["sample_stats"]["log_p"].dtype)
    tree = from_dict(groups, dims=_dims(groups, meta, plate), coords={plate: selected},
                     sample_dims=["chain", "draw"], check_conventions=False, name=name,
                     attrs={g: {"inference_library": "pyro",
                                "inference_library_version": pyro.__version__,
                                **({"leave_one_out": NO_LOO} if g == "log_likelihood" else {})}
                            for g in groups})
    tree.attrs = {
        "created_by": "ppl_vae.to_arviz",
        "estimator": str(settings.get("estimator", "unknown")),
        "seed": -1 if seed is None else int(seed),
        "chain_seeds": json.dumps([c[2].get("seed") for c in chains]),
        "num_draws": int(num_draws),
        "num_points": int(plan.num_points),
        "num_exported_points": int(len(selected)),
        "chunk_size": int(plan.chunk_size),
        "vectorized_draws": int(plan.vectorized),
        "data_plate": plate,
        "local_sites": json.dumps(meta["local_sites"]),
        "global_sites": json.dumps(meta["global_sites"]),
        "observed_sites": json.dumps(meta["observed_sites"]),
        # Sites the program scales itself (poutine.scale) and their scale: log_p, log_q and
        # log_likelihood carry it, as in Pyro's ELBO (not normalized densities).
        "scaled_sites": json.dumps(meta.get("scales", {})),
        # How the first chain's chunks were drawn (ppl_vae.evaluation.recorded): eager,
        # recorded or compiled, the same numbers up to rounding.
        "draws_path": meta.get("draws_path", "eager"),
        "settings": json.dumps(settings, default=str),
        "versions": json.dumps(_versions()),
        "leave_one_out": NO_LOO,
    }
    return tree


def _dims(groups: dict, meta: dict, plate: str) -> dict:
    """ArviZ dims of every variable: the data plate first for local ones, then event dims."""
    dims = {}
    for site, dim in meta["data_dims"].items():
        if site in groups.get("posterior", {}):
            ndim = groups["posterior"][site].ndim - (3 if dim is not None else 2)
            dims[site] = ([plate] if dim is not None else []) + [
                f"{site}_dim_{j}" for j in range(ndim)]
    for site, value in groups.get("observed_data", {}).items():
        lead = [plate] if meta["observed_dims"][site][0] is not None else []
        dims[site] = lead + [f"{site}_dim_{j}" for j in range(value.ndim - len(lead))]
        dims[f"{site}_mean"] = dims[site]
    for var in groups.get("log_likelihood", {}):
        dims[var] = [plate]
    for var in ("log_p", "log_q", "log_lik"):
        dims[var] = [plate]
    return dims
