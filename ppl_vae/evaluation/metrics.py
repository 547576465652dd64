"""``evaluate``: ELBO, its two terms, and the importance-weighted log-evidence, per data point."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch

from ppl_vae.data.tensors import as_tensors, check_finite
from ppl_vae.estimators._bound import log_mean_exp
from ppl_vae.evaluation.chunks import chunk_draws, global_draws, map_chunks, plan_points
from ppl_vae.programs.util import program_dtype

__all__ = ["evaluate", "Evaluation"]


class Evaluation(dict):
    """A dict of floats (nats per data point) that prints as a table."""

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"value (nats per data point)": pd.Series(self)})

    def __str__(self) -> str:
        return self.to_frame().to_string(float_format=lambda v: f"{v:.4f}")

    def _repr_html_(self) -> str:
        return self.to_frame().to_html(float_format=lambda v: f"{v:.4f}")


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
    engine : ppl_vae.train.distributed.Engine, optional
        Shard the chunks over the processes of a launched run (results gathered to all).
    progress : bool, optional
        A progress bar over chunks (``None``: on a terminal only).

    Returns
    -------
    Evaluation
        Keys ``elbo``, ``iwae``, ``kl``, ``recon`` (floats, nats per data point), ``num_samples``.
        A model that subsamples its own data plate is evaluated on all of its points.
    """
    ref_dtype, device = program_dtype(model, guide)
    tensors = as_tensors(data, dtype=ref_dtype, device=device, name="data")
    check_finite(tensors)
    plan = plan_points(model, guide, tensors, num_draws=num_samples, data_plate=data_plate,
                       chunk_size=batch_size)
    globals_ = global_draws(plan, model, guide, tensors, num_draws=num_samples, seed=seed)

    def one(start):
        d = chunk_draws(plan, model, guide, tensors, start, num_draws=num_samples, seed=seed,
                        globals_=globals_)
        lw = d.log_weights.double()
        return {"recon": float(d.log_lik.double().mean(0).sum()),
                "kl": float((d.log_q - d.log_prior).double().mean(0).sum()),
                "iwae": float(log_mean_exp(lw, 0).sum()), "joint": lw.sum(1).cpu(),
                "global": (d.log_q_global - d.log_prior_global).double().cpu()}

    parts = map_chunks(one, plan.starts(), engine=engine, desc="evaluate", progress=progress)
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
    return Evaluation(
        elbo=(recon - kl) / n, iwae=iwae / n, kl=kl / n, recon=recon / n,
        num_samples=int(num_samples),
    )
