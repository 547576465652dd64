"""The report's simulation-based calibration section: the figures and the table start with the
dimensions that fail (then those farthest from uniform), and the captions name them."""

from __future__ import annotations

import html

from ppl_vae.reporting import figures as figs
from ppl_vae.reporting.html import img as _img
from ppl_vae.reporting.html import legend
from ppl_vae.reporting.html import table as _table

__all__ = ["sbc_section"]


def _sbc_order(table) -> list[str]:
    """Dimensions, failing first, then by how far their ranks are from uniform (the ECDF's
    largest deviation), so that every figure and the table start with what fails."""
    calibrated = table["calibrated"] if "calibrated" in table else True
    key = table.assign(_ok=calibrated).sort_values(["_ok", "max_deviation", "p_value"],
                                                   ascending=[True, False, True])
    return key["column"].tolist()


def _shown(names: list[str], table, count: int) -> str:
    failing = set(table.loc[~table["calibrated"], "column"]) if "calibrated" in table else set()
    shown = names[:count]
    bad = [n for n in shown if n in failing]
    what = (f"the {len(shown)} of {len(names)} dimensions farthest from uniform"
            if len(shown) < len(names) else f"all {len(names)} dimensions")
    return (f"{what} ({', '.join(shown)})" + (f"; failing: {', '.join(bad)}" if bad else
                                                 "; none fails"))


def sbc_section(diagnostics) -> list[str]:
    """The SBC section: ECDF and rank-histogram figures and the per-dimension table, each
    starting with the failing dimensions (empty without SBC)."""
    result, table = diagnostics.sbc, diagnostics.calibration
    if result is None:
        return []
    order = _sbc_order(table) if table is not None else list(result.histograms().columns)
    ecdf_names, hist_names = order[:8], order[:12]
    which_ecdf = _shown(order, table, 8) if table is not None else ", ".join(ecdf_names)
    which_hist = _shown(order, table, 12) if table is not None else ", ".join(hist_names)
    parts = ["<h2>Simulation-based calibration (Talts et al. 2018)</h2>",
             f"<p>{html.escape(result.simulation.capitalize())}. Ranks of the simulated latents "
             "among guide draws given the simulated data are uniform when the guide is "
             "calibrated.</p>",
             _img(figs.ecdf_figure(result, names=ecdf_names),
                  f"Δ-ECDF of the ranks (PIT) with simultaneous 99% bands of {which_ecdf} "
                  "(Säilynoja, Bürkner & Vehtari 2022; arviz-plots plot_ecdf_pit): a curve "
                  "leaving the band is miscalibrated (U-shaped departure: too narrow, "
                  "one-sided: biased)"),
             _img(figs.sbc_figure(result, names=hist_names),
                  f"SBC rank histograms of {which_hist}; gray band: 99% range of a bin under "
                  "uniformity; red: the dimension's chi-square test fails")]
    if table is not None:
        parts += _calibration_table(table, order)
    return parts


def _calibration_table(table, order) -> list[str]:
    cov = [c for c in table if c.startswith("coverage_") and c != "coverage_ok"]
    shown = table.set_index("column").loc[order[:40]].reset_index()
    frame = shown[["column", "calibrated", "problem", "p_value", "max_deviation", "ecdf_ok"]].copy()
    levels = "/".join(c.split("_")[1] for c in cov)
    frame[f"coverage {levels}"] = [" / ".join(f"{shown[c].iloc[i]:.2f}" for c in cov)
                                   for i in range(len(shown))]
    for c in ("z_mean", "z_ms", "contraction"):
        frame[c] = shown[c]
    cut = (f" The {len(order) - 40} other dimensions pass every test." if len(order) > 40 and
           not (~table.set_index("column").loc[order[40:], "calibrated"]).any() else
           f" The table is cut at 40 of {len(order)} dimensions." if len(order) > 40 else "")
    sims = int(table["simulations"].max()) if "simulations" in table else None
    return ["<p>Per dimension, failing first"
            + (f" ({sims} simulations each)" if sims else "") + f".{cut}</p>",
            _table(frame, digits=3),
            legend(frame.columns, {f"coverage {levels}": "share of simulations whose central "
                                   f"{levels} % guide interval contains the simulated latent "
                                   "(calibrated: the level itself)"})]
