"""``evaluate``: ELBO, its two terms, and the importance-weighted log-evidence, per data point."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pandas as pd
import torch

from ppl_vae.data.tensors import as_tensors, check_finite
from ppl_vae.estimators._bound import log_mean_exp
from ppl_vae.evaluation.chunks import global_draws, map_chunks, plan_points
from ppl_vae.evaluation.recorded import ChunkDrawer
from ppl_vae.programs.modes import eval_mode
from ppl_vae.programs.util import program_dtype
from ppl_vae.train.arguments import as_integer

__all__ = ["evaluate", "Evaluation", "ScaledProgramWarning"]


class Evaluation(dict):
    """A dict of floats (nats per data point) that prints as a table.

    Attributes
    ----------
    scales : dict of str -> float
        The sites the program scales itself (``poutine.scale``) and their scale; empty for a
        normalized program. When not empty, ``scaled`` is True, every value is in the program's
        scaled units (``elbo`` is Pyro's ELBO of the program), and ``iwae`` is the importance-
        weighted bound of the scaled weights, not a bound on log p(x).
    """

    def __init__(self, *args, scales: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.scales = dict(scales or {})

    @property
    def scaled(self) -> bool:
        return bool(self.scales)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"value (nats per data point)": pd.Series(self)})

    def __str__(self) -> str:
        return self.to_frame().to_string(float_format=lambda v: f"{v:.4f}")

    def _repr_html_(self) -> str:
        return self.to_frame().to_html(float_format=lambda v: f"{v:.4f}")

    def __repr__(self) -> str:
        return "Evaluation(" + ", ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in self.items()) + ")"


def evaluate(
    model: Callable,
    guide: Callable,
    data,
    *,
    num_samples: int = 100,
    data_plate: str | None = None,
    batch_size: int | None = None,
    seed: int | None = 0,
    engine=None,
    progress: bool | None = False,
) -> Evaluation:
    """Estimate the ELBO, its terms and log p(x) on ``data``, averaged per data point.

    With K = ``num_samples`` draws z_k ~ q(z | x_i) for every point:

    - ``recon`` = E_q[log p(x_i | z)], ``kl`` = E_q[log q(z | x_i) - log p(z)] (Monte Carlo over
      the K draws, so ``kl`` is exactly the KL term the ELBO uses), ``elbo = recon - kl``;
    - ``iwae`` = log (1/K) sum_k p(x_i, z_k) / q(z_k | x_i), the importance-weighted bound of
      Burda et al. (2016): a lower bound on log p(x_i) that tightens as K grows.

    Terms of global latents (outside ``data_plate``) are shared by all points and divided by N;
    with global latents ``iwae`` is the joint bound on log p(x_1..N) divided by N.
    ``data_plate=None`` finds the plate over data points as ``fit`` does
    (:func:`~ppl_vae.programs.checks.resolve_data_plate`).

    Parameters
    ----------
    batch_size : int, optional
        Data points per chunk (by default as many as keep one drawn tensor near 2^23 elements).
        Memory is bounded by one chunk; the draws of a chunk are seeded from (seed, its first
        index), the global ones drawn once and shared by every chunk.
    seed : int, optional
        Seeds the draws; the global random state is restored afterwards (None: not seeded).
    engine : ppl_vae.parallel.engine.Engine, optional
        Shard the chunks over the processes of a launched run (results gathered to all).
    progress : bool, optional
        A progress bar over chunks (``None``: on a terminal only).

    Returns
    -------
    Evaluation
        Keys ``elbo``, ``iwae``, ``kl``, ``recon`` (floats, nats per data point), ``num_samples``.
        A model that subsamples its own data plate is evaluated on all of its points.
        The programs' ``nn.Module``s run in evaluation mode (dropout off, batch norm on its
        running statistics), each put back in its own mode afterwards
        (:func:`~ppl_vae.programs.modes.eval_mode`). ``Evaluation.scales`` names the sites
        the program scales itself (``poutine.scale``): the values are then in those units, as
        Pyro's ELBO is.
    """
    num_samples = as_integer("num_samples", num_samples)
    ref_dtype, device = program_dtype(model, guide)
    tensors = as_tensors(data, dtype=ref_dtype, device=device, name="data")
    check_finite(tensors)
    with eval_mode(model, guide):
        return _evaluate(model, guide, tensors, num_samples, data_plate, batch_size, seed,
                         engine, progress)


def _evaluate(model, guide, tensors, num_samples, data_plate, batch_size, seed, engine,
              progress) -> Evaluation:
    plan = plan_points(model, guide, tensors, num_draws=num_samples, data_plate=data_plate,
                       chunk_size=batch_size)
    globals_ = global_draws(plan, model, guide, tensors, num_draws=num_samples, seed=seed)

    starts = plan.starts()
    drawer = ChunkDrawer(plan, model, guide, tensors, num_draws=num_samples, seed=seed,
                         globals_=globals_, num_chunks=len(starts), engine=engine)

    def one(start):
        d = drawer(start)
        lw = d.log_weights.double()
        return {"bad": _non_finite(start, d),
                "recon": float(d.log_lik.double().mean(0).sum()),
                "kl": float((d.log_q - d.log_prior).double().mean(0).sum()),
                "iwae": float(log_mean_exp(lw, 0).sum()), "joint": lw.sum(1).cpu(),
                "global": (d.log_q_global - d.log_prior_global).double().cpu(),
                "scales": d.scales}

    parts = map_chunks(one, starts, engine=engine, desc="evaluate", progress=progress)
    n = plan.num_points
    recon = sum(p["recon"] for p in parts)
    kl = sum(p["kl"] for p in parts)
    if plan.has_global:
        kl_global = parts[0]["global"]  # the same global draws in every chunk
        kl += float(kl_global.mean())
        joint = torch.stack([p["joint"] for p in parts]).sum(0) - kl_global
        iwae = float(log_mean_exp(joint, 0))
    else:
        iwae = sum(p["iwae"] for p in parts)
    out = Evaluation(
        elbo=(recon - kl) / n, iwae=iwae / n, kl=kl / n, recon=recon / n,
        num_samples=int(num_samples), scales=scales_of(parts),
    )
    if out.scaled:
        consequence = "iwae is the bound of the scaled weights, not of log p(x)"
        if any(isinstance(v, tuple) for v in out.scales.values()):
            consequence += ("; the scale differs between chunks (it depends on the batch "
                            "size): pass batch_size=N for the ELBO of the whole data set")
        warnings.warn(scaled_message(out.scales, consequence), ScaledProgramWarning,
                      stacklevel=3)
    _warn_non_finite(out, [p["bad"] for p in parts])
    return out


class ScaledProgramWarning(UserWarning):
    """The program scales its own sites: a check that assumes a normalized density is not
    one on these units."""


def scales_of(parts) -> dict:
    """The program's own scales seen by the chunks (``Draws.scales`` of each), merged; a site
    scaled differently in two chunks (a scale that depends on the batch size) keeps its
    largest and smallest as a ``(min, max)`` pair."""
    seen: dict[str, set] = {}
    for part in parts:
        for name, scale in part["scales"].items():
            seen.setdefault(name, set()).add(round(scale, 12))
    return {name: next(iter(v)) if len(v) == 1 else (min(v), max(v)) for name, v in seen.items()}


def scaled_message(scales: dict, consequence: str) -> str:
    """One line naming the scaled sites, their scale and what follows."""
    shown = ", ".join(f"{name!r} x {scale if isinstance(scale, tuple) else f'{scale:.4g}'}"
                      for name, scale in list(scales.items())[:4])
    more = f" and {len(scales) - 4} more" if len(scales) > 4 else ""
    return (f"the program scales its own sites with poutine.scale ({shown}{more}): values are "
            f"Pyro's scaled terms, as in its ELBO; {consequence}")


# The terms of the log weights, as a warning names them.
_TERMS = {"log_lik": "the model's likelihood log p(x | z)", "log_prior": "the prior log p(z)",
          "log_q": "the guide's log q(z | x)"}


def _non_finite(start: int, draws) -> dict:
    """``{term: (points, first point)}`` for the terms that are NaN or infinite somewhere."""
    out = {}
    for term in _TERMS:
        bad = ~torch.isfinite(getattr(draws, term)).all(0)  # (K, B) -> per point
        if bool(bad.any()):
            out[term] = (int(bad.sum()), start + int(bad.nonzero()[0, 0]))
    return out


def _warn_non_finite(result: Evaluation, chunks: list[dict]) -> None:
    """Say why a metric is NaN or infinite: which term, at how many points, the first one."""
    metrics = [k for k in ("elbo", "iwae", "kl", "recon") if not math.isfinite(result[k])]
    if not metrics:
        return
    causes = []
    for term, what in _TERMS.items():
        found = [c[term] for c in chunks if term in c]
        if found:
            causes.append(f"{what} is NaN or infinite at {sum(f[0] for f in found)} data "
                          f"point(s), the first row {min(f[1] for f in found)}")
    warnings.warn(f"evaluate: {', '.join(metrics)} not finite: "
                  + ("; ".join(causes) or "the sums overflow") + " (check the trained "
                  "parameters, and the data against the model's support)", stacklevel=4)
