"""HTML pieces of the report: figures, tables that fit the page, and the legend of every
column a table shows."""

from __future__ import annotations

import base64
import html

import pandas as pd

__all__ = ["COLUMNS", "img", "legend", "table"]

# What each column of the report's tables means (the legend under every table draws from it).
COLUMNS = {
    "chain": "the run (several runs are chains)",
    "point": "the data point's row in the test data",
    "k_hat": "Pareto k-hat of the point's importance ratios p(x, z) / q(z | x): above 0.7 q "
             "misses posterior mass and importance sampling is unreliable",
    "category": "k-hat's band: good (below min(1 - 1/log10 S, 0.7) for S draws: 0.57 at "
                "200), ok (<= 0.7), bad (> 0.7)",
    "ess": "effective sample size of the point's importance weights (of the guide draws)",
    "log_px": "importance-weighted estimate of log p(x) for the point (nats)",
    "elbo": "the point's ELBO, E_q[log p(x, z) - log q(z | x)] (nats)",
    "elbo_gap": "log_px - elbo: what a better guide could gain at this point (nats)",
    "mean": "posterior (guide) mean", "sd": "posterior (guide) standard deviation",
    "eti89_lb": "lower end of the 89% equal-tailed interval",
    "eti89_ub": "upper end of the 89% equal-tailed interval",
    "ess_bulk": "effective sample size of the bulk, over runs",
    "ess_tail": "effective sample size of the tails, over runs",
    "r_hat": "R-hat across runs (1 when they agree)",
    "mcse_mean": "Monte Carlo standard error of the mean", "mcse_sd": "... of the sd",
    "prior_mean": "the prior's mean", "prior_sd": "the prior's standard deviation",
    "shift": "(mean - prior_mean) / prior_sd: how far the data moved the dimension",
    "contraction": "1 - sd^2 / prior_sd^2: how much the data narrowed it (0: not at all)",
    "index": "the dimension", "site": "the latent site",
    "dimensions": "dimensions of the site summarized in the row",
    "statistic": "the per-dimension quantity whose spread over dimensions the row gives",
    "column": "the latent dimension", "simulations": "simulated data sets ranked",
    "p_value": "chi-square test of uniform ranks",
    "max_deviation": "largest distance of the ranks' ECDF from uniform",
    "ecdf_ok": "the ECDF stays inside its simultaneous band",
    "z_mean": "mean posterior z-score (0 when calibrated)",
    "z_ms": "mean square posterior z-score (1 when calibrated; above: overconfident)",
    "calibrated": "every test of the row passes",
    "problem": "what the failing tests point to (too narrow, biased, ...)",
    "quantity": "what the row measures", "value": "its value",
    "mean (nats)": "mean over the refined points",
}


def img(png: bytes | None, caption: str) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def table(frame: pd.DataFrame, *, index=False, digits=4) -> str:
    """A table in a horizontally scrolling box, so that a wide one never runs off the page."""
    inner = frame.to_html(index=index, border=0, float_format=lambda v: f"{v:.{digits}g}",
                          escape=True)
    return f"<div class='scroll'>{inner}</div>"


def legend(columns, extra: dict | None = None) -> str:
    """One line per column of a table that the reader may not know (``COLUMNS`` and
    ``extra``)."""
    known = {**COLUMNS, **(extra or {})}
    items = [f"<b>{html.escape(str(c))}</b>: {html.escape(known[c])}" for c in columns
             if c in known and c not in ("quantity", "value")]
    return f"<p class='legend'>{'; '.join(items)}.</p>" if items else ""
