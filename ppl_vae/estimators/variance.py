"""``gradient_variance``: draw each estimator's gradient many times at fixed parameters.

The estimators in ``ppl_vae.ESTIMATORS`` estimate the gradient of one of two objectives: the
ELBO (``mc``, ``analytic``, ``score``, ``tracegraph``, ``stl``, ``enum``) or, with K > 1
particles, the importance-weighted bound L_K (``iwae``, ``vimco``, ``dreg``; the objective is each
spec's ``objective(K)``). Estimators of one objective differ only in variance (and cost). Measuring that
variance on the user's own model, at the user's own parameters, is what this module is for:
it is the evidence for picking an estimator (Kingma & Welling 2014, section 2.3; Roeder, Wu &
Duvenaud 2017; Rainforth et al. 2018 for the signal-to-noise ratio, which for the IWAE encoder
falls with K; Tucker et al. 2019). Pass several K as ``num_particles`` to see it:
:func:`snr_by_particles` tabulates the encoder's SNR by estimator and K.
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
from ppl_vae.programs.random import preserved, seeded
from ppl_vae.programs.util import trainable_parameters

__all__ = ["gradient_variance", "snr_by_particles", "VARIANCE_COLUMNS"]

VARIANCE_COLUMNS = [
    "estimator", "num_particles", "objective", "group", "num_params", "mean_norm",
    "total_variance", "snr", "variance_ratio", "mean_discrepancy", "mean_p_value", "agrees_in_mean",
    "seconds_per_estimate",
]


def _program_params(program: Callable, batch: tuple) -> list[torch.Tensor]:
    """Leaf tensors one program reads (``pyro.param`` sites and ``nn.Module`` parameters)."""
    with torch.no_grad(), poutine.block(), poutine.trace(param_only=True) as capture:
        program(*batch)
    params, _ = trainable_parameters([program], capture.trace)
    return [p for p in params if p.requires_grad]


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


def _particle_counts(num_particles) -> list[int]:
    counts = [num_particles] if isinstance(num_particles, int) else list(num_particles)
    if not counts or any(isinstance(k, bool) or int(k) != k or int(k) < 1 for k in counts):
        raise ValueError(
            f"num_particles must be a positive integer or a sequence of them, got {num_particles!r}"
        )
    return [int(k) for k in counts]


def _check(estimators, num_draws) -> list[str]:
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
    return estimators


def _parameter_groups(model, guide, batch):
    """(parameters, {group: slice of the flat gradient}): guide's first, then the model's."""
    guide_params = _program_params(guide, batch)
    guide_ids = {id(p) for p in guide_params}
    model_params = [p for p in _program_params(model, batch) if id(p) not in guide_ids]
    params = guide_params + model_params
    if not params:
        raise ValueError("the model and guide have no parameters to differentiate")
    sizes = [p.numel() for p in params]
    n_guide, n_all = sum(sizes[: len(guide_params)]), sum(sizes)
    return params, {"guide": slice(0, n_guide), "model": slice(n_guide, n_all),
                    "all": slice(0, n_all)}


def _measure(runs, programs, params, batch, num_draws, vectorize_particles, seed):
    """{(estimator, K): (moments, seconds per estimate)}, one independent stream per run."""
    results = {}
    for i, (name, k) in enumerate(runs):
        # A different stream per run: the equal-means test assumes independence. Each run's
        # generators are forked, so the caller's random state is as it was afterwards.
        with seeded(None if seed is None else int(seed) + 7919 * i):
            try:
                elbo = make_elbo(name, num_particles=k, vectorize_particles=vectorize_particles)
            except ValueError as error:
                raise ValueError(f"estimator {name!r} with num_particles={k}: {error}") from None
            results[name, k] = _draws(elbo(*programs), params, batch, int(num_draws))
    return results


def _reference(results, name, k) -> str:
    """The estimator the run (name, K) is compared with: same objective and K, the spec's
    variance reference when measured, else the first such run."""
    objective = get_spec(name).objective(k)
    same = [e for e, j in results if j == k and get_spec(e).objective(j) == objective]
    return next((e for e in same if get_spec(e).variance_reference), same[0])


def _rows(results, groups, alpha) -> list[dict]:
    rows = []
    for (name, k), (moments, seconds) in results.items():
        ref = _reference(results, name, k)
        ref_moments = results[ref, k][0]
        for group, sl in groups.items():
            if sl.stop == sl.start:
                continue
            mean, var = moments.mean[sl], moments.var[sl]
            total, ref_total = float(var.sum()), float(ref_moments.var[sl].sum())
            norm = float(mean.norm())
            if name == ref:
                disc, p_value = math.nan, math.nan
            else:
                disc, p_value = _compare(mean, var, ref_moments.mean[sl], ref_moments.var[sl],
                                         moments.n)
            rows.append({
                "estimator": name, "num_particles": k, "objective": get_spec(name).objective(k),
                "group": group, "num_params": sl.stop - sl.start, "mean_norm": norm,
                "total_variance": total,
                "snr": norm / math.sqrt(total) if total > 0 else math.inf,
                "variance_ratio": total / ref_total if ref_total > 0 else math.nan,
                "mean_discrepancy": disc, "mean_p_value": p_value,
                "agrees_in_mean": True if name == ref else bool(p_value > alpha),
                "seconds_per_estimate": seconds,
            })
    return rows


def gradient_variance(
    model: Callable,
    guide: Callable,
    batch,
    *,
    estimators: Sequence[str] = ("mc", "analytic", "score", "stl"),
    num_draws: int = 100,
    num_particles: int | Sequence[int] = 1,
    vectorize_particles: bool = False,
    num_data: int | None = None,
    data_plate: str | None = None,
    seed: int | None = 0,
    alpha: float = 1e-3,
) -> pd.DataFrame:
    """Mean, variance and cost of each estimator's gradient at the current parameters.

    For each estimator (and each K in ``num_particles``) the gradient of its loss with respect
    to every parameter is drawn ``num_draws`` times on the same ``batch`` and summarised per
    parameter group: ``"guide"`` (for a VAE, the encoder), ``"model"`` (the decoder) and
    ``"all"``.

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
        Gradient estimates per estimator and K (at least 2).
    num_particles : int or sequence of int
        K, as for :func:`ppl_vae.make_elbo` (the number of importance samples for ``"iwae"``,
        ``"vimco"``, ``"dreg"``); several values measure every estimator at each of them (for
        example ``(1, 5, 50)``, see :func:`snr_by_particles`).
    vectorize_particles : bool
        As for :func:`ppl_vae.make_elbo`.
    num_data : int, optional
        N for the data-plate scale N / B (default B: the gradient of the batch's loss).
    data_plate : str, optional
        Name of the plate over data points (None: found as ``fit`` finds it).
    seed : int, optional
        Seeds torch before each run's draws, with a different stream per run (the global RNG
        state is restored after).
    alpha : float
        Significance level of the equal-means test.

    Returns
    -------
    pandas.DataFrame
        One row per (estimator, K, group), columns:

        - ``num_particles``: K; ``objective``: the spec's ``objective(K)``, ``"ELBO"`` or
          ``"IWAE (K=...)"`` (runs are compared only with runs of the same objective and K);
        - ``num_params``; ``mean_norm``: |E g|, the norm of the mean gradient;
        - ``total_variance``: sum over elements of Var(g_j);
        - ``snr``: |E g| / sqrt(total_variance) (a group-level signal-to-noise ratio);
        - ``variance_ratio``: total variance / that of the reference run (the spec marked
          ``variance_reference``, ``"analytic"``, when measured, else the first estimator with
          the same objective);
        - ``mean_discrepancy``: |mean - reference mean|^2 over its expected value when both
          estimate the same gradient (about 1 when they do, growing with the number of draws
          when they do not); ``mean_p_value``: a conservative p-value for equal means (valid
          whatever the correlations between elements); ``agrees_in_mean``: p > ``alpha``;
        - ``seconds_per_estimate``: wall time of one loss evaluation plus backward pass.
    """
    batch = as_batch(batch)
    estimators = _check(estimators, num_draws)
    counts = _particle_counts(num_particles)
    num_data = batch[0].shape[0] if num_data is None else int(num_data)
    data_plate = resolve_data_plate(model, guide, batch, data_plate, num_data=num_data)
    programs = (ScaledProgram(model, num_data, data_plate),
                ScaledProgram(guide, num_data, data_plate))
    with preserved():  # finding the parameters runs the programs, which draw
        params, groups = _parameter_groups(model, guide, batch)
    runs = [(name, k) for k in counts for name in estimators]
    results = _measure(runs, programs, params, batch, num_draws, vectorize_particles, seed)
    table = pd.DataFrame(_rows(results, groups, alpha), columns=VARIANCE_COLUMNS)
    table.attrs["reference"] = next(
        (e for e in estimators if get_spec(e).variance_reference), estimators[0])
    table.attrs["num_draws"] = int(num_draws)
    return table


def snr_by_particles(table: pd.DataFrame, group: str = "guide") -> pd.DataFrame:
    """The signal-to-noise ratio of one parameter group, estimators by K.

    Parameters
    ----------
    table : pandas.DataFrame
        A :func:`gradient_variance` table (several ``num_particles``).
    group : {"guide", "model", "all"}
        ``"guide"``: the encoder's SNR, which falls like 1/sqrt(K) for ``iwae`` (Rainforth et
        al. 2018) and not for ``dreg`` (Tucker et al. 2019).

    Returns
    -------
    pandas.DataFrame
        Index: estimator (in the table's order); columns: K; values: ``snr``.
    """
    if group not in set(table["group"]):
        raise ValueError(f"group {group!r} is not in the table; it has {sorted(set(table['group']))}")
    rows = table[table["group"] == group]
    pivot = rows.pivot(index="estimator", columns="num_particles", values="snr")
    return pivot.reindex(list(dict.fromkeys(rows["estimator"])))
