"""What the model says before any data: E[x | z] with z drawn from the prior.

Computed by :func:`~ppl_vae.diagnostics.diagnose` (and stored with the run folder's
diagnostics) so that the report only renders it: the report's image grid shows these rows
beside the data and the reconstructions.
"""

from __future__ import annotations

import pandas as pd
import pyro
import torch
from pyro import poutine

from ppl_vae.data.tensors import as_tensors
from ppl_vae.diagnostics.globals import global_table
from ppl_vae.programs.analysis import analyze_programs
from ppl_vae.programs.util import program_dtype

__all__ = ["prior_means", "prior_views"]


@torch.no_grad()
def prior_means(model, batch: tuple, count: int = 10, *,
                subsamples: bool = False) -> pd.DataFrame | None:
    """E[x | z] of the first observed site, z from the prior, on the first ``count`` rows.

    Parameters
    ----------
    model : callable
        The model, called as ``model(*rows)`` (unconditioned: its observed site is sampled).
    batch : tuple of torch.Tensor
        Data rows in the model's dtype and device (the first ``count`` are used).
    count : int
        Rows to draw.
    subsamples : bool
        The model subsamples its data plate itself (the program analysis' sizing
        ``"model-subsamples"``): it is given all the rows.

    Returns
    -------
    pandas.DataFrame or None
        One row per drawn row, the observed site's mean flattened into columns ``x0`` ...
        (the drawn value where the distribution has no closed-form mean); None when the model
        observes nothing.
    """
    # A model that subsamples its data plate itself (pyro.plate(name, len(x), subsample_size=b)
    # indexes x with its own indices) needs all the rows: traced on them, the first ``count`` kept.
    rows = batch if subsamples else tuple(t[:count] for t in batch)
    trace = _unconditioned_trace(model, rows)
    for site in trace.nodes.values():
        if site["type"] == "sample" and site["infer"].get("was_observed"):
            try:
                values = site["fn"].mean.expand(site["value"].shape)
            except (NotImplementedError, RuntimeError):
                values = site["value"]
            values = values[:count]
            flat = values.detach().cpu().double().reshape(values.shape[0], -1).numpy()
            return pd.DataFrame(flat, columns=[f"x{j}" for j in range(flat.shape[1])])
    return None


def _unconditioned_trace(model, rows):
    with pyro.validation_enabled(False):
        return poutine.trace(poutine.uncondition(model)).get_trace(*rows)


def prior_views(model, guide, data, tree) -> tuple:
    """What the report shows of the prior: the global latents' table with their prior moments
    (:func:`~ppl_vae.diagnostics.globals.global_table`, one trace on all the rows: a program
    may size its plates from its data) and :func:`prior_means` on ten rows.

    Returns
    -------
    (pandas.DataFrame or None, pandas.DataFrame or None)
    """
    dtype, device = program_dtype(model, guide)
    batch = as_tensors(data, dtype=dtype, device=device, name="data")
    sizing = analyze_programs(model, guide, batch).data_plate.sizing
    return global_table(tree, model, batch), prior_means(
        model, batch, subsamples=sizing == "model-subsamples")
