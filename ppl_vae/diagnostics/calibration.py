"""Calibration of a guide beyond rank histograms, from one :func:`~ppl_vae.diagnostics.sbc` run.

- ECDF of the ranks with simultaneous confidence bands (Säilynoja, Bürkner & Vehtari 2022,
  "Graphical test for discrete uniformity and its applications in goodness-of-fit evaluation
  and multiple sample comparison", Statistics and Computing 32): the ranks are turned into PIT
  values (rank + U) / (L + 1), uniform on (0, 1) exactly when the guide is calibrated, and the
  ECDF must stay inside a band that holds the whole uniform ECDF with probability ``ci_prob``
  (``arviz_stats.ecdf_utils.ecdf_pit``, the simulation method of that paper). No binning.
- Coverage of central intervals: the share of simulations whose true latent lies in the central
  c-interval of the guide draws, at several levels c, against c with its binomial error.
- Posterior z-scores and contraction per latent dimension (Schad, Betancourt & Vasishth 2021,
  "Toward a principled Bayesian workflow in cognitive science", Psychological Methods 26):
  z = (E_q[z | x] - z*) / sd_q(z | x) has mean 0 and mean square 1 under calibration (for any
  posterior, since E[(z* - E[z | x])^2 | x] = Var(z | x)); a mean square above 1 is an
  overconfident guide, a mean away from 0 a biased one. Contraction 1 - E[Var_q] / Var_prior
  says how much the data taught the guide about each dimension (0: the prior, 1: a point).
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
from arviz_stats.ecdf_utils import compute_ecdf, ecdf_pit
from scipy import stats

from ppl_vae.diagnostics.sbc import SBCResult

__all__ = [
    "COVERAGE_LEVELS", "MAX_ECDF_RANKS", "calibration_table", "coverage_table", "ecdf_bands",
    "ecdf_subset", "pit_values",
]

# The most ranks per dimension the ECDF band check uses (see ecdf_subset).
MAX_ECDF_RANKS = 1000

COVERAGE_LEVELS = (0.5, 0.8, 0.9, 0.95)


def pit_values(result: SBCResult, seed: int = 0) -> pd.DataFrame:
    """PIT values (rank + U) / (L + 1), U ~ Uniform(0, 1): continuous and exactly uniform under
    calibration (the jitter removes the ties of discrete ranks). Laid out like ``result.ranks``."""
    rng = np.random.default_rng(seed)
    ranks = result.ranks.to_numpy(dtype=float)
    pit = (ranks + rng.uniform(size=ranks.shape)) / (result.num_draws + 1)
    return pd.DataFrame(pit, columns=result.ranks.columns)


def ecdf_bands(result: SBCResult, *, alpha: float | None = None, n_simulations: int | None = None,
               seed: int = 0) -> pd.DataFrame:
    """Does each dimension's rank ECDF stay inside its simultaneous confidence band?

    Parameters
    ----------
    result : SBCResult
    alpha : float, optional
        Family-wise level over all dimensions (default ``result.alpha``): each band holds a
        uniform ECDF with probability 1 - alpha / D (Bonferroni over D dimensions).
    n_simulations : int, optional
        Uniform samples simulated for the band (default: 2 / (1 - level), between 1000 and
        4000; the band of a given size and level is computed once per process).

    Returns
    -------
    pandas.DataFrame
        One row per dimension: ``column``, ``max_deviation`` (largest |ECDF - x|),
        ``inside_band`` (bool), ``ci_prob``.
    """
    pit = pit_values(result, seed)
    alpha = result.alpha if alpha is None else float(alpha)
    ci_prob = 1.0 - alpha / max(1, pit.shape[1])
    if n_simulations is None:
        n_simulations = int(min(4000, max(1000, np.ceil(2 / (1 - ci_prob)))))
    rows = []
    for col in pit:
        vals = ecdf_subset(pit[col].dropna().to_numpy(), seed)
        n = len(vals)
        if n < 2:
            rows.append({"column": col, "max_deviation": np.nan, "inside_band": True,
                         "ci_prob": ci_prob})
            continue
        x, lower, upper = _band(n, ci_prob, n_simulations, seed)
        ecdf = compute_ecdf(vals, x)
        inside = bool(((ecdf >= lower) & (ecdf <= upper)).all())
        rows.append({"column": col, "max_deviation": float(np.abs(ecdf - x).max()),
                     "inside_band": inside, "ci_prob": ci_prob})
    return pd.DataFrame(rows)


def ecdf_subset(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """At most ``MAX_ECDF_RANKS`` of one dimension's PIT values, chosen at random (fixed seed).

    The simultaneous band is simulated at every evaluation point, so its cost grows with the
    square of the number of ranks (an SBC of 60,000 points took minutes per dimension). A
    subset chosen independently of the values keeps the band's level exactly; it only lowers
    the power, and 1,000 ranks still resolve a deviation of about 0.05 from uniform.
    """
    if len(values) <= MAX_ECDF_RANKS:
        return values
    rng = np.random.default_rng(seed)
    return values[np.sort(rng.choice(len(values), MAX_ECDF_RANKS, replace=False))]


@functools.lru_cache(maxsize=32)
def _band(n: int, ci_prob: float, n_simulations: int, seed: int):
    """Simultaneous band of the ECDF of n uniform values (it depends on n and the level only)."""
    x, _, lower, upper = ecdf_pit(np.linspace(0, 1, n), ci_prob, n_simulations,
                                  rng=np.random.default_rng(seed))
    return x, lower, upper


def coverage_table(result: SBCResult, *, levels=COVERAGE_LEVELS, seed: int = 0) -> pd.DataFrame:
    """Empirical coverage of the central intervals of the guide draws at each level.

    Returns
    -------
    pandas.DataFrame
        One row per (dimension, level): ``column``, ``level``, ``coverage``, ``se`` (binomial
        standard error sqrt(c (1 - c) / S) under calibration), ``z`` = (coverage - c) / se.
    """
    pit = pit_values(result, seed)
    rows = []
    for col in pit:
        vals = pit[col].dropna().to_numpy()
        for c in levels:
            cov = float(np.mean(np.abs(vals - 0.5) <= c / 2)) if len(vals) else np.nan
            se = float(np.sqrt(c * (1 - c) / max(len(vals), 1)))
            rows.append({"column": col, "level": float(c), "coverage": cov, "se": se,
                         "z": (cov - c) / se})
    return pd.DataFrame(rows)


def _zscores(result: SBCResult) -> pd.DataFrame:
    rows = []
    for col in result.ranks:
        truth = result.truth[col].dropna().to_numpy()
        mean = result.posterior_mean[col].dropna().to_numpy()
        sd = result.posterior_sd[col].dropna().to_numpy()
        z = (mean - truth) / np.where(sd > 0, sd, np.nan)
        z = z[np.isfinite(z)]
        s = max(len(z), 1)
        prior_var = float(np.var(truth, ddof=1)) if len(truth) > 1 else np.nan
        rows.append({
            "column": col, "z_mean": float(z.mean()) if len(z) else np.nan,
            "z_mean_se": float(z.std(ddof=1) / np.sqrt(s)) if len(z) > 1 else np.nan,
            "z_ms": float((z**2).mean()) if len(z) else np.nan,
            "z_ms_se": float((z**2).std(ddof=1) / np.sqrt(s)) if len(z) > 1 else np.nan,
            "contraction": 1.0 - float(np.mean(sd**2)) / prior_var if prior_var > 0 else np.nan,
        })
    return pd.DataFrame(rows)


def calibration_table(result: SBCResult, *, alpha: float | None = None,
                      levels=COVERAGE_LEVELS, seed: int = 0) -> pd.DataFrame:
    """Every calibration check per latent dimension, with a pass/fail per check.

    A dimension's ``ecdf_ok`` is its ECDF inside the simultaneous band; ``coverage_ok`` its
    coverage within ``zcrit`` binomial errors at every level; ``zscore_ok`` its z-score mean
    and mean square within ``zcrit`` standard errors of 0 and 1, with ``zcrit`` the two-sided
    normal quantile at alpha / (number of tests) (Bonferroni). ``calibrated`` needs all three.
    ``problem`` names what the failures point to (biased / overconfident / underconfident).
    """
    alpha = result.alpha if alpha is None else float(alpha)
    table = result.table.copy()
    table["column"] = [f"{s}[{d}]" for s, d in zip(table["site"], table["dim"], strict=True)]
    ecdf = ecdf_bands(result, alpha=alpha, seed=seed)
    cov = coverage_table(result, levels=levels, seed=seed)
    dims = max(1, len(table))
    zcrit_cov = stats.norm.isf(alpha / (2 * dims * len(levels)))
    zcrit = stats.norm.isf(alpha / (4 * dims))
    cov_ok = cov.assign(ok=cov["z"].abs() <= zcrit_cov).groupby("column", sort=False)["ok"].all()
    wide = cov.pivot(index="column", columns="level", values="coverage")
    wide.columns = [f"coverage_{c:g}" for c in wide.columns]
    z = _zscores(result).set_index("column")
    out = table.set_index("column").join(
        ecdf.set_index("column")[["max_deviation", "inside_band", "ci_prob"]])
    out = out.join(wide).join(z)
    out["ecdf_ok"] = out.pop("inside_band").astype(bool)
    out["coverage_ok"] = cov_ok.reindex(out.index).fillna(True).astype(bool)
    bias = (out["z_mean"] / out["z_mean_se"]).abs() > zcrit
    spread = (out["z_ms"] - 1) / out["z_ms_se"]
    out["zscore_ok"] = ~(bias.fillna(False) | (spread.abs() > zcrit).fillna(False))
    out["calibrated"] = out["ecdf_ok"] & out["coverage_ok"] & out["zscore_ok"]
    out["problem"] = [_problem(b, s, zcrit) for b, s in zip(bias.fillna(False),
                                                           spread.fillna(0.0), strict=True)]
    return out.reset_index()


def _problem(biased: bool, spread: float, zcrit: float) -> str:
    words = []
    if biased:
        words.append("biased mean")
    if spread > zcrit:
        words.append("overconfident (too narrow)")
    elif spread < -zcrit:
        words.append("underconfident (too wide)")
    return ", ".join(words)
