"""Simulation-based calibration of a guide (Talts et al. 2018, "Validating Bayesian inference
algorithms with simulation-based calibration", arXiv:1804.06788).

If q(z | x) were the exact posterior, then for (z*, x) ~ p(z) p(x | z) the rank of z* among L
draws from q(z | x) would be uniform on {0, ..., L}. An amortized guide makes this cheap: one
batched pass of the model simulates N pairs, one pass of the guide draws for all of them.
Too-narrow guides pile ranks at both ends (a U shape), too-wide ones in the middle, biased ones
on one side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyro
import torch
from pyro import poutine
from pyro.util import get_rng_state, set_rng_state
from scipy import stats

from ppl_vae.data.tensors import as_tensors
from ppl_vae.evaluation.chunks import map_chunks, plan_points
from ppl_vae.evaluation.fastpath import guide_latents
from ppl_vae.evaluation.pointwise import FixSubsample, draw, in_draw_plate
from ppl_vae.programs.random import chunk_seed, seeded
from ppl_vae.programs.util import program_dtype

__all__ = ["SBCResult", "sbc", "uniformity_table"]

# An amortized guide is calibrated against the model it was trained with: the simulations come
# from the prior predictive of the model at its trained parameters (decoder weights, globals'
# priors), not from some other data-generating process, and the report says so.
SIMULATION_NOTE = ("simulations (z*, x) from the model at its trained parameters; the guide is "
                   "checked against that model's posterior, not against the data's process")


@dataclass
class SBCResult:
    """Ranks and uniformity tests of a simulation-based calibration run.

    Attributes
    ----------
    ranks : pandas.DataFrame
        One column per latent dimension (``"<site>[<j>]"``), one row per simulation, values in
        0..num_draws (global dimensions have fewer simulations; their columns end in NaN).
    table : pandas.DataFrame
        One row per latent dimension: ``site``, ``dim``, ``simulations``, ``chi2``, ``p_value``
        (Pearson's chi-square test of uniform ranks over ``bins`` equal bins), ``passed``
        (p-value >= alpha / number of dimensions, a Bonferroni correction).
    num_draws : int
        L, the guide draws per simulation (ranks take L + 1 values).
    bins : int
    alpha : float
    truth, posterior_mean, posterior_sd : pandas.DataFrame or None
        Laid out like ``ranks``: the simulated latent, and the mean and standard deviation of
        the L guide draws given its simulated data (for z-scores and posterior contraction,
        Schad, Betancourt & Vasishth 2021; see :mod:`ppl_vae.diagnostics.calibration`).
    simulation : str
        Where the simulations came from (the model at its current, trained, parameters).
    """

    ranks: pd.DataFrame
    table: pd.DataFrame
    num_draws: int
    bins: int
    alpha: float
    truth: pd.DataFrame | None = None
    posterior_mean: pd.DataFrame | None = None
    posterior_sd: pd.DataFrame | None = None
    simulation: str = SIMULATION_NOTE

    @property
    def passed(self) -> bool:
        """Whether every dimension passed its uniformity test."""
        return bool(self.table["passed"].all())

    def histograms(self) -> pd.DataFrame:
        """Counts per bin (rows) and dimension (columns)."""
        edges = np.linspace(0, self.num_draws + 1, self.bins + 1)
        return pd.DataFrame({c: np.histogram(self.ranks[c].dropna(), bins=edges)[0]
                             for c in self.ranks})


def _default_simulation_args(model_trace, batch) -> tuple:
    """Put each simulated observation in place of the argument it was observed from."""
    args = list(batch)
    for site in model_trace.nodes.values():
        if site["type"] == "sample" and site["infer"].get("was_observed"):
            obs = site["infer"]["obs"]
            hits = [i for i, a in enumerate(args) if a is obs]
            if len(hits) != 1:
                raise ValueError(
                    f"site {site['name']!r}: cannot tell which argument of the model holds its "
                    "observations; pass simulation_args=callable(trace, batch) -> guide args")
            args[hits[0]] = site["value"]
    return tuple(args)


@torch.no_grad()
def sbc(model, guide, data, *, num_draws: int = 99, num_runs: int = 1, bins: int = 10,
        alpha: float = 0.01, data_plate: str = "data", seed: int | None = 0,
        simulation_args: Callable | None = None, chunk_size: int | None = None, engine=None,
        progress: bool | None = False) -> SBCResult:
    """Simulation-based calibration of the guide against the model's prior predictive.

    Parameters
    ----------
    model, guide : callable
        Programs called as ``model(*data)``.
    data : tensor, ndarray, DataFrame or tuple
        A template: the model is run on it with its observations resampled, so only shapes (and
        non-observed arguments such as labels) matter. Each run simulates N local latents per
        site (one per row) and one draw of each global latent.
    num_draws : int
        L guide draws per simulation.
    num_runs : int
        Model runs (simulations of global latents; local ones get N per run).
    bins : int
        Histogram bins for the uniformity test; ``num_draws + 1`` must be divisible by it so
        every bin covers the same number of ranks.
    alpha : float
        Family-wise level of the tests (Bonferroni over dimensions).
    simulation_args : callable, optional
        ``(model_trace, batch) -> args`` building the guide's arguments from a simulation; by
        default each observed site's value replaces the argument it was observed from.
    chunk_size, engine, progress
        As for :func:`ppl_vae.evaluate`: without global latents the points are simulated
        chunk by chunk (memory bounded by one chunk), seeded per (seed, run, chunk).

    Returns
    -------
    SBCResult
    """
    if (num_draws + 1) % bins:
        raise ValueError(f"bins: num_draws + 1 = {num_draws + 1} must be divisible by bins={bins}")
    dtype, device = program_dtype(model, guide)
    batch = as_tensors(data, dtype=dtype, device=device, name="data")
    plan = plan_points(model, guide, batch, num_draws=num_draws, data_plate=data_plate,
                       chunk_size=chunk_size, draws_argument="num_draws")
    # With global latents a simulation is the whole data set (one global draw for all points);
    # without, each chunk of points is simulated on its own, which is the same joint draw.
    step = plan.num_points if plan.has_global else plan.chunk_size
    jobs = [(run, start) for run in range(num_runs) for start in range(0, plan.num_points, step)]

    def one(job):
        run, start = job
        with seeded(chunk_seed(seed, "sbc", run, start)):
            return _simulation_ranks(model, guide, batch, plan, start, step, num_draws,
                                     simulation_args)

    columns: dict[str, dict[str, list]] = {k: {} for k in ("ranks", "truth", "mean", "sd")}
    for part in map_chunks(one, jobs, engine=engine, desc="sbc", progress=progress):
        for kind, cols in part.items():
            for col, values in cols.items():
                columns[kind].setdefault(col, []).append(values)
    if not columns["ranks"]:
        raise ValueError("guide: no latent sites to calibrate")
    # Global dimensions have fewer simulations than local ones: shorter columns end in NaN.
    ranks, truth, mean, sd = (pd.DataFrame({c: pd.Series(np.concatenate(v)) for c, v in
                                            columns[k].items()})
                              for k in ("ranks", "truth", "mean", "sd"))
    return SBCResult(ranks, uniformity_table(ranks, num_draws, bins, alpha), int(num_draws),
                     int(bins), float(alpha), truth, mean, sd)


def _simulation_ranks(model, guide, batch, plan, start, step, num_draws, simulation_args):
    """Simulate (z*, x) on the points start..start+step and rank each z* among the guide's
    draws given x: {"<site>[<j>]": ranks (one per point, one per simulation for globals)}."""
    whole = step >= plan.num_points
    chunk, subsample = (tuple(batch), None) if whole and not plan.subsampled else \
        plan.chunk(batch, start)
    program = poutine.uncondition(model)
    if subsample is not None:
        program = FixSubsample(plan.data_plate, subsample)(program)
    with pyro.validation_enabled(False):
        sim = poutine.trace(program).get_trace(*chunk)
    args = (simulation_args or _default_simulation_args)(sim, chunk)
    latents, dims = _guide_draws(model, guide, args, plan, subsample, sim, num_draws)
    valid = min(start + step, plan.num_points) - start
    out = {k: {} for k in ("ranks", "truth", "mean", "sd")}
    for name, value in latents.items():
        true = sim.nodes[name]["value"]
        # draws (L, batch..., event) against the true value (batch..., event): rank of z* =
        # how many guide draws fall below it (ties have probability zero).
        per = {"ranks": (value < true).sum(0), "truth": true.expand(value.shape[1:]),
               "mean": value.mean(0), "sd": value.std(0)}
        for kind, v in per.items():
            rows = _rows(v, dims[name], plan.nesting)
            if dims[name] is not None:
                rows = rows[:valid]  # drop the padding of a self-subsampling model's last chunk
            for j in range(rows.shape[1]):
                col = rows[:, j] if kind == "ranks" else rows[:, j].double()
                out[kind][f"{name}[{j}]"] = col.cpu().numpy()
    return out


def _guide_draws(model, guide, args, plan, subsample, sim, num_draws):
    """The guide's ``num_draws`` latent draws given a simulation and their data-plate dims:
    from the guide alone where its draws are vectorized (the same draws as the full pass,
    :func:`~ppl_vae.evaluation.fastpath.guide_latents`; the model's score is not needed to
    rank), else from the full pass of ``draw``."""
    if plan.vectorized:
        program = in_draw_plate(guide, num_draws, plan.nesting + 1)
        if subsample is not None:
            program = FixSubsample(plan.data_plate, subsample)(program)
        state = get_rng_state()
        found = guide_latents(program, sim, args, plan.data_plate)
        if found is not None:
            return found
        set_rng_state(state)  # the full pass draws what it would have drawn without the try
    d = draw(model, guide, args, num_samples=num_draws, subsample=subsample,
             **plan.draw_options())
    return d.latents, d.data_dims


def uniformity_table(ranks: pd.DataFrame, num_draws: int, bins: int, alpha: float) -> pd.DataFrame:
    """Pearson's chi-square test of uniform ranks per dimension, Bonferroni over dimensions."""
    edges = np.linspace(0, num_draws + 1, bins + 1)
    rows = []
    for col in ranks:
        counts = np.histogram(ranks[col].dropna(), bins=edges)[0]
        chi2, p = stats.chisquare(counts)
        site, dim = col[:-1].split("[")
        rows.append({"site": site, "dim": int(dim), "simulations": int(counts.sum()),
                     "chi2": float(chi2), "p_value": float(p)})
    table = pd.DataFrame(rows)
    table["passed"] = table["p_value"] >= alpha / len(table)
    return table


def _rows(ranks: torch.Tensor, data_dim: int | None, batch_rank: int) -> torch.Tensor:
    """(simulations, dims): one row per data point for local sites, one row for global ones."""
    if data_dim is None:
        return ranks.reshape(1, -1)
    ranks = ranks.reshape((1,) * max(0, batch_rank - ranks.dim()) + tuple(ranks.shape))
    ranks = ranks.movedim(batch_rank + data_dim, 0)
    return ranks.reshape(ranks.shape[0], -1)
