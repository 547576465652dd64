"""``evaluate``: ELBO, its two terms, and the importance-weighted log-evidence, per data point."""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd
import torch

from ppl_vae.data.tensors import as_tensors, check_finite, num_rows
from ppl_vae.evaluation.pointwise import draw
from ppl_vae.programs.checks import resolve_data_plate
from ppl_vae.programs.util import max_plate_nesting, program_dtype

__all__ = ["evaluate", "Evaluation", "logmeanexp", "RESOLVE_ROWS"]

# Rows the programs are run on to find the data plate: enough that an inner plate rarely has the
# same size by chance, few enough to cost one small trace.
RESOLVE_ROWS = 256


def logmeanexp(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


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

    Returns
    -------
    Evaluation
        Keys ``elbo``, ``iwae``, ``kl``, ``recon`` (floats, nats per data point), ``num_samples``.
    """
    ref_dtype, device = program_dtype(model, guide)
    tensors = as_tensors(data, dtype=ref_dtype, device=device, name="data")
    check_finite(tensors)
    n = num_rows(tensors)
    gen_state = torch.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        data_plate = resolve_data_plate(model, guide, tuple(t[:RESOLVE_ROWS] for t in tensors),
                                        data_plate, num_data=n)
        nesting = max_plate_nesting(model, guide, tuple(t[: min(n, 2)] for t in tensors))
        first = draw(model, guide, tuple(t[:1] for t in tensors), num_samples=1,
                     data_plate=data_plate, nesting=nesting)
        has_global = bool(first.global_sites)
        width = max(1, sum(t[0].numel() for t in tensors))
        chunk = n if has_global else (batch_size or max(1, min(n, 2**23 // (num_samples * width))))
        recon = kl = iwae = 0.0
        for start in range(0, n, chunk):
            batch = tuple(t[start : start + chunk] for t in tensors)
            d = draw(model, guide, batch, num_samples=num_samples, data_plate=data_plate,
                     nesting=nesting)
            recon += float(d.log_lik.mean(0).sum())
            kl += float((d.log_q - d.log_prior).mean(0).sum())
            if has_global:
                kl += float((d.log_q_global - d.log_prior_global).mean())
                joint = d.log_weights.sum(1) + d.log_prior_global - d.log_q_global
                iwae += float(logmeanexp(joint, 0))
            else:
                iwae += float(logmeanexp(d.log_weights, 0).sum())
    finally:
        if seed is not None:
            torch.set_rng_state(gen_state)
    return Evaluation(
        elbo=(recon - kl) / n, iwae=iwae / n, kl=kl / n, recon=recon / n,
        num_samples=int(num_samples),
    )
