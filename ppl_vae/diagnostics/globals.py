"""Global latents with many dimensions: one row per dimension (posterior against prior), the few
that matter, and summary statistics of the rest.

A model's global site can have tens of thousands of dimensions (the weights of Pyro's
sparse_gamma_def: 66,040); one panel each is neither readable nor affordable. What matters in a
dimension is how far the data moved it from its prior: the posterior mean's shift in prior
standard deviations, ``(E_q[w] - E_p[w]) / sd_p[w]``, and the contraction ``1 - Var_q / Var_p``
(Schad, Betancourt & Vasishth 2021). The dimensions with the largest shift are drawn, the rest are
summarized; everything here is vectorized over dimensions (no per-dimension Python loop).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyro
import torch
from pyro import poutine

__all__ = ["global_table", "global_overview", "select_globals"]


@torch.no_grad()
def _prior_moments(model, batch, sites) -> dict:
    """Prior mean and standard deviation of each global site, from one trace of the model on
    ``batch`` (``None`` for a site whose prior has no closed-form moments)."""
    with pyro.validation_enabled(False):
        trace = poutine.trace(model).get_trace(*batch)
    out = {}
    for name in sites:
        site = trace.nodes.get(name)
        if site is None or site["type"] != "sample":
            out[name] = None
            continue
        fn, shape = site["fn"], site["value"].shape
        try:  # Distribution.mean / .stddev raise NotImplementedError where not closed-form
            mean, sd = fn.mean.expand(shape), fn.stddev.expand(shape)
        except NotImplementedError:
            out[name] = None
            continue
        out[name] = (mean.double().cpu().numpy().ravel(), sd.double().cpu().numpy().ravel())
    return out


def _labels(name: str, shape: tuple) -> np.ndarray:
    if not shape:
        return np.array([name])
    index = np.indices(shape).reshape(len(shape), -1).T
    return np.array([f"{name}[{', '.join(map(str, i))}]" for i in index])


def global_table(tree, model=None, batch=None) -> pd.DataFrame | None:
    """One row per dimension of every global latent site of a ``to_arviz`` export.

    Parameters
    ----------
    tree : xarray.DataTree
        The export (``global_sites`` attribute; ``posterior`` draws of shape
        (chain, draw, *site_shape)).
    model : callable, optional
        The model, traced once on ``batch`` for the prior moments (without it the prior columns
        are NaN).
    batch : tuple of tensors, optional
        Data rows the model is called with (a few rows suffice).

    Returns
    -------
    pandas.DataFrame or None
        ``site``, ``index`` (``w[3, 7]``), ``position`` (in the flattened site), ``mean``, ``sd`` (over chains and draws),
        ``prior_mean``, ``prior_sd``, ``shift`` ((mean - prior_mean) / prior_sd),
        ``contraction`` (1 - sd^2 / prior_sd^2); None without global latents.
    """
    sites = json.loads(tree.attrs.get("global_sites", "[]"))
    if not sites:
        return None
    priors = _prior_moments(model, batch, sites) if model is not None else {}
    frames = []
    for name in sites:
        draws = tree["posterior"][name].values  # (chain, draw, *shape)
        shape = draws.shape[2:]
        flat = draws.reshape(draws.shape[0] * draws.shape[1], -1).astype(np.float64)
        mean = flat.mean(0)
        sd = flat.std(0, ddof=1) if flat.shape[0] > 1 else np.zeros_like(mean)
        prior = priors.get(name)
        if prior is None or prior[0].size != mean.size:
            prior = (np.full_like(mean, np.nan), np.full_like(mean, np.nan))
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = (mean - prior[0]) / prior[1]
            contraction = 1.0 - sd**2 / prior[1] ** 2
        frames.append(pd.DataFrame({
            "site": name, "index": _labels(name, shape), "position": np.arange(mean.size),
            "mean": mean, "sd": sd,
            "prior_mean": prior[0], "prior_sd": prior[1], "shift": shift,
            "contraction": contraction}))
    return pd.concat(frames, ignore_index=True)


def select_globals(table: pd.DataFrame, count: int = 6) -> tuple[pd.DataFrame, str]:
    """The ``count`` dimensions that matter most, and why they were chosen.

    The largest |shift| (the data moved them farthest from their prior); where the prior has no
    closed-form moments, the largest |mean| / sd (the posterior farthest from zero)."""
    score = table["shift"].abs()
    why = "whose posterior mean moved farthest from the prior mean, in prior standard deviations"
    if not np.isfinite(score).any():
        with np.errstate(divide="ignore", invalid="ignore"):
            score = (table["mean"] / table["sd"]).abs()
        why = ("whose posterior mean lies farthest from zero in posterior standard deviations "
               "(the prior has no closed-form mean and sd)")
    order = np.argsort(-np.nan_to_num(score.to_numpy(), nan=-np.inf), kind="stable")
    return table.iloc[order[:count]], why


def global_overview(table: pd.DataFrame) -> pd.DataFrame:
    """Summary statistics of every global site over its dimensions: how many, and the 0, 5, 50,
    95 and 100% quantiles of the posterior mean, sd, shift and contraction."""
    rows = []
    for name, part in table.groupby("site", sort=False):
        for column in ("mean", "sd", "shift", "contraction"):
            values = part[column].to_numpy()
            values = values[np.isfinite(values)]
            q = np.quantile(values, [0, 0.05, 0.5, 0.95, 1]) if values.size else [np.nan] * 5
            rows.append({"site": name, "dimensions": len(part), "statistic": column,
                         "min": q[0], "5%": q[1], "median": q[2], "95%": q[3], "max": q[4]})
    return pd.DataFrame(rows)
