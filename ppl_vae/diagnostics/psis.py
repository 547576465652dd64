"""Pareto-smoothed importance sampling per data point (Vehtari et al. 2024, "Pareto smoothed
importance sampling", JMLR 25).

For a guide q(z | x_i) and draws z_k ~ q, the importance ratios r_k = p(x_i, z_k) / q(z_k | x_i)
have a right tail that a generalized Pareto fit summarises by its shape k-hat: below 0.5 the
ratios have finite variance and importance sampling (and the IWAE bound) is reliable; between
0.5 and 0.7 it still works with more draws; above 0.7 q misses mass that p has, and estimates
built on q (ELBO, IWAE, posterior means) cannot be trusted for that point (Yao et al. 2018,
"Yes, but did it work?: Evaluating variational inference", ICML).

With S draws the estimate is reliable below ``min(1 - 1 / log10(S), 0.7)`` (Vehtari et al.
2024, section 3.2.3; 0.57 at S = 200, 0.70 at S = 2000): :func:`khat_threshold`. The k-hat of
one point is itself an estimate from the largest ``min(S / 5, 3 sqrt(S))`` ratios, with a
standard deviation of about 0.17 at S = 200 and 0.11 at S = 2000 (a guide whose true k is 0.3
puts 2% of points above 0.7 at S = 200 and none at S = 2000): over thousands of points a few
above 0.7 are the estimate's noise, and more draws tell them from a guide that misses mass.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from arviz_stats.base import array_stats
from scipy.special import logsumexp

__all__ = ["KHAT_THRESHOLDS", "joint_khat", "khat_category", "khat_shares", "khat_threshold",
           "pointwise_psis", "psis", "psis_table"]

KHAT_THRESHOLDS = (0.5, 0.7)


def khat_threshold(num_draws: int) -> float:
    """``min(1 - 1 / log10(S), 0.7)``: below it, importance sampling with S draws is reliable
    (Vehtari et al. 2024, "Pareto smoothed importance sampling", JMLR 25, section 3.2.3)."""
    return min(1.0 - 1.0 / np.log10(max(int(num_draws), 11)), KHAT_THRESHOLDS[1])


def _constant(log_ratios: np.ndarray, rtol: float) -> np.ndarray:
    """Rows whose ratios are equal up to rounding: q is the posterior there (up to a constant)."""
    spread = log_ratios.max(-1) - log_ratios.min(-1)
    scale = 1.0 + np.abs(log_ratios).max(-1)
    return spread <= rtol * scale


def psis(log_ratios, *, rtol: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed log weights and k-hat for each row of ``log_ratios``.

    Parameters
    ----------
    log_ratios : array, shape (..., K)
        log p(x, z_k) - log q(z_k | x) for K independent draws (the last axis).
    rtol : float, optional
        Rows whose spread max - min is below ``rtol * (1 + max |log ratio|)`` are constant
        weights: q equals the posterior there, which is reported as ``k_hat = -inf`` (a perfect
        fit) with uniform weights instead of fitting a tail that does not exist. Defaults to 64
        machine epsilons of the input's precision (float32 ratios carry float32 rounding).

    Returns
    -------
    log_weights : array, shape (..., K)
        Smoothed, normalised log weights (logsumexp over the last axis is 0).
    k_hat : array, shape (...)
        Pareto shape estimate per row.

    Notes
    -----
    ``arviz_stats``' ``psislw`` takes the negated log ratio (its 1.x convention: it expects
    log-likelihood values of a leave-one-out ratio) so the ratio is negated on the way in. Its
    ``pareto_khat(..., log_weights=True)`` fits the tail of the log weights, not of the weights,
    and is not used here. Draws from a guide are independent, so the relative efficiency is 1.
    """
    arr = np.asarray(log_ratios)
    if arr.ndim == 0 or arr.shape[-1] < 25:
        # The tail fit uses K / 5 draws (3 sqrt(K) for K > 225) and needs at least 5 of them.
        raise ValueError("log_ratios: PSIS needs at least 25 draws on the last axis (num_draws),"
                         f" got shape {arr.shape}")
    if rtol is None:
        eps = np.finfo(arr.dtype).eps if np.issubdtype(arr.dtype, np.floating) else 1e-12
        rtol = 64 * eps
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr).all(-1))
        raise ValueError(f"log_ratios: non-finite values in rows {bad[:5].tolist()} "
                         "(the guide puts mass where the model has none?)")
    flat = arr.reshape(-1, arr.shape[-1])
    constant = _constant(flat, rtol)
    log_w = np.full_like(flat, -np.log(flat.shape[-1]))
    khat = np.full(flat.shape[0], -np.inf)
    fit = ~constant
    if fit.any():
        lw, k = array_stats.psislw(-flat[fit], r_eff=1.0, axis=-1)
        log_w[fit] = lw
        khat[fit] = k
    return log_w.reshape(arr.shape), khat.reshape(arr.shape[:-1])


def khat_category(k_hat, num_draws: int | None = None) -> np.ndarray:
    """``"exact"`` (constant weights), ``"good"`` (< 0.5, or below :func:`khat_threshold` of
    ``num_draws`` when given), ``"ok"`` (up to 0.7), ``"bad"`` (> 0.7)."""
    k = np.asarray(k_hat, dtype=float)
    low, high = KHAT_THRESHOLDS
    low = low if num_draws is None else khat_threshold(num_draws)
    return np.select([np.isneginf(k), k < low, k <= high], ["exact", "good", "ok"], "bad")


def pointwise_psis(tree) -> pd.DataFrame:
    """PSIS diagnostics of every data point (and chain) of a ``to_arviz`` DataTree.

    The log ratios are ``sample_stats.log_p - sample_stats.log_q`` (local sites, so the ratio
    of a point is conditional on the global latents of the same draw). The tree holds the
    exported points only; :func:`ppl_vae.diagnose` computes this table for every point.

    Returns
    -------
    pandas.DataFrame
        One row per (chain, data point): ``chain``, ``point``, ``k_hat``, ``category``,
        ``ess`` (PSIS effective sample size 1 / sum w^2 of the smoothed weights), ``log_px``
        (importance-weighted estimate log mean_k r_k, the IWAE bound of Burda et al. 2016),
        ``elbo`` (mean_k log r_k) and ``elbo_gap`` = log_px - elbo (>= 0; close to
        KL(q || p(z | x_i)) when K is large and k-hat is small).
    """
    stats = tree["sample_stats"]
    plate = tree.attrs.get("data_plate", "data")
    log_r = (stats["log_p"] - stats["log_q"]).transpose("chain", plate, "draw").values
    points = stats[plate].values
    return pd.concat([psis_table(log_r[i], points, chain)
                      for i, chain in enumerate(stats["chain"].values)], ignore_index=True)


def psis_table(log_r: np.ndarray, points: np.ndarray, chain=0) -> pd.DataFrame:
    """The rows of :func:`pointwise_psis` for log ratios of shape (points, K) of one chain."""
    log_w, khat = psis(log_r)
    log_r = log_r.astype(np.float64)
    log_px = logsumexp(log_r, axis=-1) - np.log(log_r.shape[-1])
    elbo = log_r.mean(-1)
    return pd.DataFrame({
        "chain": np.full(len(points), chain),
        "point": np.asarray(points),
        "k_hat": khat,
        "category": khat_category(khat, log_r.shape[-1]),
        "ess": 1.0 / np.exp(logsumexp(2 * log_w, axis=-1)),
        "log_px": log_px,
        "elbo": elbo,
        "elbo_gap": log_px - elbo,
    })


def khat_shares(table: pd.DataFrame, num_draws: int | None = None) -> dict:
    """Share of rows with k-hat above each threshold and of exact (constant-weight) rows; with
    ``num_draws``, also ``khat_threshold`` and the share above it (``share_khat_gt_threshold``)."""
    k = table["k_hat"].to_numpy()
    out = {f"share_khat_gt_{t}": float(np.mean(k > t)) for t in KHAT_THRESHOLDS}
    if num_draws is not None:
        out["khat_threshold"] = khat_threshold(num_draws)
        out["share_khat_gt_threshold"] = float(np.mean(k > out["khat_threshold"]))
    out["share_exact"] = float(np.mean(np.isneginf(k)))
    out["max_khat"] = float(np.max(k))
    return out


def joint_khat(tree) -> np.ndarray | None:
    """k-hat of the whole-data ratio p(x, z, theta) / q(z, theta | x) per chain, or None without
    global latents.

    With globals theta the per-point ratios are conditional on each draw's theta; the joint
    ratio sum_i log r_i + log p(theta) - log q(theta) diagnoses the global part as well
    (Yao et al. 2018 apply k-hat to the full posterior this way).
    """
    stats = tree["sample_stats"]
    if "log_p_global" not in stats:
        return None
    plate = tree.attrs.get("data_plate", "data")
    # The tree may export a subset of the points; local_log_ratio sums over all of them.
    local = (stats["local_log_ratio"] if "local_log_ratio" in stats
             else (stats["log_p"] - stats["log_q"]).sum(plate))
    joint = (local + stats["log_p_global"] - stats["log_q_global"]).transpose("chain", "draw")
    return psis(joint.values)[1]
