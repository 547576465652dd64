"""``gradient_variance``: draw each estimator's gradient many times at fixed parameters.

All the estimators in ``ppl_vae.ESTIMATORS`` except ``"iwae"`` are unbiased for the same
quantity, the gradient of the ELBO, and differ only in variance (and cost). Measuring that
variance on the user's own model, at the user's own parameters, is what this module is for:
it is the evidence for picking an estimator (Kingma & Welling 2014, section 2.3; Roeder, Wu &
Duvenaud 2017; Rainforth et al. 2018 for the signal-to-noise ratio).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import pandas as pd
import torch
from pyro import poutine
from scipy.stats import chi2

from ppl_vae.estimators.kl import as_batch
from ppl_vae.estimators.registry import ESTIMATORS, get_spec, make_elbo
from ppl_vae.programs.checks import resolve_data_plate
from ppl_vae.programs.handlers import ScaledProgram

__all__ = ["gradient_variance", "VARIANCE_COLUMNS"]

VARIANCE_COLUMNS = [
    "estimator", "objective", "group", "num_params", "mean_norm", "total_variance", "snr",
    "variance_ratio", "mean_discrepancy", "mean_p_value", "agrees_in_mean",
    "seconds_per_estimate",
]


def _program_params(program: Callable, batch: tuple) -> list[torch.Tensor]:
    """Leaf tensors one program reads (``pyro.param`` sites and ``nn.Module`` parameters)."""
    with torch.no_grad(), poutine.block(), poutine.trace(param_only=True) as capture:
        program(*batch)
    found = {}
    for site in capture.trace.nodes.values():
        leaf = site["value"].unconstrained()
        found.setdefault(id(leaf), leaf)
    if isinstance(program, torch.nn.Module):
        for p in program.parameters():
            found.setdefault(id(p), p)
    return [p for p in found.values() if p.requires_grad]


class _Moments:
    """Running per-element mean and sum of squared deviations (Welford), in float64."""

    def __init__(self, size: int, device):
        self.n = 0
        self.mean = torch.zeros(size, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(size, dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    @property
    def var(self) -> torch.Tensor:
        return self.m2 / max(self.n - 1, 1)


def _draws(loss_fn, params, batch, num_draws):
    size = sum(p.numel() for p in params)
    moments = _Moments(size, params[0].device)
    seconds = 0.0
    for _ in range(num_draws):
        t0 = time.perf_counter()
        loss = loss_fn(*batch)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        flat = torch.cat([
            (g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params, strict=True)
        ]).double()
        if flat.is_cuda:
            torch.cuda.synchronize(flat.device)  # time the work, not its asynchronous launch
        seconds += time.perf_counter() - t0
        moments.add(flat)
    return moments, seconds / num_draws


def _compare(mean_a, var_a, mean_b, var_b, n):
    """Test that two independent gradient estimators have the same mean.

    D = |mean_a - mean_b|^2 has expectation (tr Var_a + tr Var_b) / n when the means agree;
    the discrepancy is D divided by that. For Gaussian means D is a weighted sum of chi-square
    variables whatever the correlations between elements, and for tail levels below 0.215 its
    tail is bounded by that of a single chi-square on 1 degree of freedom (Szekely & Bakirov
    2003), so ``chi2.sf(discrepancy, 1)`` is a conservative p-value.
    """
    expected = float((var_a + var_b).sum()) / n
    dist2 = float(((mean_a - mean_b) ** 2).sum())
    if expected <= 0:
        return (math.inf, 0.0) if dist2 > 1e-24 else (0.0, 1.0)
    disc = dist2 / expected
    return disc, float(chi2.sf(disc, 1))


def gradient_variance(
    model: Callable,
    guide: Callable,
    batch,
    *,
    estimators: Sequence[str] = ("mc", "analytic", "score", "stl"),
    num_draws: int = 100,
    num_particles: int = 1,
    vectorize_particles: bool = False,
    num_data: int | None = None,
    data_plate: str | None = None,
    seed: int | None = 0,
    alpha: float = 1e-3,
) -> pd.DataFrame:
    """Mean, variance and cost of each estimator's gradient at the current parameters.

    For each estimator the gradient of its loss with respect to every parameter is drawn
    ``num_draws`` times on the same ``batch`` and summarised per parameter group: ``"guide"``
    (for a VAE, the encoder), ``"model"`` (the decoder) and ``"all"``.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``model(*batch)``; their parameters must already exist (a
        trained pair, or one run once).
    batch : tensor or tuple of tensors
        The data the gradients are taken on, B rows.
    estimators : sequence of str
        Names from :data:`ppl_vae.ESTIMATORS`.
    num_draws : int
        Gradient estimates per estimator (at least 2).
    num_particles, vectorize_particles
        As for :func:`ppl_vae.make_elbo` (``num_particles`` is K for ``"iwae"``).
    num_data : int, optional
        N for the data-plate scale N / B (default B: the gradient of the batch's loss).
    data_plate : str, optional
        Name of the plate over data points (None: found as ``fit`` finds it).
    seed : int, optional
        Seeds torch before each estimator's draws, with a different stream per estimator (the
        global RNG state is restored after).
    alpha : float
        Significance level of the equal-means test.

    Returns
    -------
    pandas.DataFrame
        One row per (estimator, group), columns:

        - ``objective``: ``"ELBO"``, or ``"IWAE (K=...)"`` for ``"iwae"`` with K > 1 (a
          different objective, so it is compared only with other IWAE rows);
        - ``num_params``; ``mean_norm``: |E g|, the norm of the mean gradient;
        - ``total_variance``: sum over elements of Var(g_j);
        - ``snr``: |E g| / sqrt(total_variance) (a group-level signal-to-noise ratio);
        - ``variance_ratio``: total variance / that of the reference estimator (``"analytic"``
          when measured, else the first estimator with the same objective);
        - ``mean_discrepancy``: |mean - reference mean|^2 over its expected value when both
          estimate the same gradient (about 1 when they do, growing with the number of draws
          when they do not); ``mean_p_value``: a conservative p-value for equal means (valid
          whatever the correlations between elements); ``agrees_in_mean``: p > ``alpha``;
        - ``seconds_per_estimate``: wall time of one loss evaluation plus backward pass.
    """
    batch = as_batch(batch)
    rng_state = torch.get_rng_state()  # finding the parameters runs the programs, which draw
    estimators = list(estimators)
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise ValueError(
            f"unknown estimator(s) {unknown} in estimators; choose from: {', '.join(ESTIMATORS)}"
        )
    if not estimators:
        raise ValueError("estimators is empty; name at least one")
    if int(num_draws) < 2:
        raise ValueError(f"num_draws must be >= 2 to estimate a variance, got {num_draws}")
    n_rows = batch[0].shape[0]
    num_data = n_rows if num_data is None else int(num_data)
    if seed is None:
        rng_state = None
    data_plate = resolve_data_plate(model, guide, batch, data_plate, num_data=num_data)
    scaled_model = ScaledProgram(model, num_data, data_plate)
    scaled_guide = ScaledProgram(guide, num_data, data_plate)
    guide_params = _program_params(guide, batch)
    guide_ids = {id(p) for p in guide_params}
    model_params = [p for p in _program_params(model, batch) if id(p) not in guide_ids]
    params = guide_params + model_params
    if not params:
        raise ValueError("the model and guide have no parameters to differentiate")
    sizes = [p.numel() for p in params]
    n_guide = sum(sizes[: len(guide_params)])
    groups = {"guide": slice(0, n_guide), "model": slice(n_guide, sum(sizes)),
              "all": slice(0, sum(sizes))}

    results = {}
    try:
        for i, name in enumerate(estimators):
            if seed is not None:
                # A different stream per estimator: the equal-means test assumes independence.
                torch.manual_seed(int(seed) + 7919 * i)
            elbo = make_elbo(name, num_particles=num_particles,
                             vectorize_particles=vectorize_particles)
            results[name] = _draws(elbo(scaled_model, scaled_guide), params, batch, int(num_draws))
    finally:
        if rng_state is not None:
            torch.set_rng_state(rng_state)

    def objective(name):
        return get_spec(name).objective(int(num_particles))

    rows = []
    for name, (moments, seconds) in results.items():
        same = [e for e in estimators if objective(e) == objective(name)]
        ref = next((e for e in same if get_spec(e).variance_reference), same[0])
        ref_moments = results[ref][0]
        for group, sl in groups.items():
            if sl.stop == sl.start:
                continue
            mean, var = moments.mean[sl], moments.var[sl]
            total = float(var.sum())
            ref_total = float(ref_moments.var[sl].sum())
            norm = float(mean.norm())
            if name == ref:
                disc, p_value = math.nan, math.nan
            else:
                disc, p_value = _compare(mean, var, ref_moments.mean[sl], ref_moments.var[sl],
                                         moments.n)
            rows.append({
                "estimator": name, "objective": objective(name), "group": group,
                "num_params": sl.stop - sl.start, "mean_norm": norm, "total_variance": total,
                "snr": norm / math.sqrt(total) if total > 0 else math.inf,
                "variance_ratio": total / ref_total if ref_total > 0 else math.nan,
                "mean_discrepancy": disc, "mean_p_value": p_value,
                "agrees_in_mean": True if name == ref else bool(p_value > alpha),
                "seconds_per_estimate": seconds,
            })
    table = pd.DataFrame(rows, columns=VARIANCE_COLUMNS)
    table.attrs["reference"] = next(
        (e for e in estimators if get_spec(e).variance_reference), estimators[0])
    table.attrs["num_draws"] = int(num_draws)
    return table
