"""The report's "ArviZ view of the posterior": the global latents (the few dimensions that
matter drawn, every dimension tabled or summarized) and the local latents of the worst points
(the most informative dimensions drawn). Each caption says which dimensions are shown and why."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ppl_vae.diagnostics.globals import global_overview, global_table, select_globals
from ppl_vae.reporting import figures as figs
from ppl_vae.reporting.html import img, legend, table

__all__ = ["posterior_section"]

MAX_PANELS = 6  # panels per figure: more stop being readable at 1400 px
MAX_ROWS = 15  # dimensions listed one per row; beyond, summary statistics


def posterior_section(diagnostics, worst_points) -> list[str]:
    """The section's HTML parts (empty when the model has no latent to show). The global
    latents' table is the one :func:`~ppl_vae.diagnostics.diagnose` computed (with the prior
    moments); for diagnostics without it, the tree's draws alone (no prior columns)."""
    tree = diagnostics.tree
    parts = []
    globals_ = diagnostics.global_latents if diagnostics.global_latents is not None else global_table(tree)
    if globals_ is not None:
        parts += _globals(tree, globals_)
    parts += _locals(diagnostics, worst_points)
    return ["<h2>ArviZ view of the posterior</h2>", *parts] if parts else []


def _globals(tree, frame: pd.DataFrame) -> list[str]:
    total = len(frame)
    if total <= MAX_PANELS:
        shown, why = frame, None
        caption = (f"posterior of every global latent dimension ({total}; arviz-plots "
                   "plot_dist)")
    else:
        shown, why = select_globals(frame, MAX_PANELS)
        caption = (f"posterior of {len(shown)} of the {total:,} global latent dimensions, the "
                   f"ones {why}: {', '.join(shown['index'])} (arviz-plots plot_dist); every "
                   "dimension is in the tables below")
    parts = [img(figs.globals_figure(tree, shown), caption)]
    columns = ["index", "mean", "sd", "prior_mean", "prior_sd", "shift", "contraction"]
    if total <= MAX_ROWS:
        listed = frame
        parts.append(f"<p>Every global latent dimension ({total}):</p>")
    else:
        listed, why = select_globals(frame, MAX_ROWS)
        parts.append(f"<p>The {MAX_ROWS} of {total:,} global dimensions {why}; the table after "
                     "it summarizes all of them:</p>")
    parts += [table(listed[columns]), legend(columns)]
    if total > MAX_ROWS:
        overview = global_overview(frame)
        parts += ["<p>Every global dimension, summarized per site: the spread over its "
                  "dimensions of each quantity (quantiles over dimensions).</p>",
                  table(overview, digits=3), legend(["dimensions", "statistic"])]
    return parts


def _informative_dims(latent: pd.DataFrame, site: str, size: int) -> tuple[list, str]:
    """The local site's event dimensions to draw: all when few, else those with the largest KL
    to the prior (the ones that carry information about x), and the reason."""
    if size <= MAX_PANELS:
        return list(range(size)), f"all {size} dimensions"
    rows = latent[latent["site"] == site] if latent is not None and len(latent) else None
    if rows is not None and len(rows) == size and np.issubdtype(rows["dim"].dtype, np.integer):
        top = rows.nlargest(MAX_PANELS, "kl")["dim"].astype(int).tolist()
        return sorted(top), (f"dimensions {', '.join(map(str, sorted(top)))} of {size}: the "
                             f"{MAX_PANELS} with the largest KL to the prior, i.e. the ones "
                             "that carry information about x (the others sit near the prior)")
    return list(range(MAX_PANELS)), (f"dimensions 0-{MAX_PANELS - 1} of {size} only (cut for "
                                     "readability)")


def _locals(diagnostics, worst_points) -> list[str]:
    tree = diagnostics.tree
    sites = json.loads(tree.attrs.get("local_sites", "[]"))
    if not sites or not worst_points:
        return []
    site, points = sites[0], list(worst_points)[:3]
    event = f"{site}_dim_0"
    dims, which = None, "its only dimension"
    if event in tree["posterior"][site].dims:
        dims, which = _informative_dims(diagnostics.latent, site,
                                        int(tree["posterior"].sizes[event]))
    png = figs.forest_figure(tree, site, points, dims)
    caption = (f"guide posterior of {site!r} at the {len(points)} points with the largest k-hat "
               f"({', '.join(map(str, points))}), {which} (arviz-plots plot_forest)")
    parts = [img(png, caption)]
    post = diagnostics.posterior
    if len(post):
        labels = {f"{site}[{p}, {d}]" for p in points for d in (dims or [])} | \
                 {f"{site}[{p}]" for p in points}
        rows = post[post.index.isin(labels)].reset_index()
        if len(rows):
            parts += [table(rows), legend(rows.columns, {"index": "site[point, dimension]"})]
    return parts
