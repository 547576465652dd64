"""VIMCO: the importance-weighted bound with score-function gradients and a leave-one-out
multi-sample baseline (Mnih & Rezende 2016, "Variational inference for Monte Carlo objectives").

The objective is the IWAE bound L_K = sum_i log (1/K) sum_k w_ik of :mod:`ppl_vae.estimators.iwae`.
No guide site is differentiated through its draw: every latent guide site is treated as
non-reparameterizable (as TensorFlow Probability's ``csiszar_vimco`` does), which makes the
estimator applicable to discrete codes, labels and any other site without ``rsample``. Its
gradient with respect to the guide's parameters phi is

    sum_k (L_i - L_i^{-k}) grad log q(z_ik | x_i)  +  sum_k w~_ik grad log w_ik,

where w~_ik = w_ik / sum_j w_ij and L_i^{-k} is the bound with log w_ik replaced by the mean of
the other K - 1 log-weights. L_i^{-k} does not depend on z_ik, so the baseline keeps the
gradient unbiased; it removes the part of the learning signal the other particles explain, and
the per-particle signal is local to data point i. The model's parameters get the IWAE gradient.

Use ``iwae`` instead when some guide sites have ``rsample``: it applies this score-function
term only where one is needed and the pathwise gradient elsewhere.
"""

from __future__ import annotations

import warnings
from typing import final

import torch
from pyro.infer.enum import get_importance_trace

from ppl_vae.estimators._traces import DifferentiableELBO
from ppl_vae.estimators.iwae import importance_weighted_loss
from ppl_vae.estimators.score import score_function_only

__all__ = ["VIMCO"]


@final
class VIMCO(DifferentiableELBO):
    """Negative IWAE bound (K = ``num_particles``) with the VIMCO gradient.

    ``loss``, ``loss_and_grads`` and ``differentiable_loss`` give the same value as ``iwae``
    with the same draws; only the guide's gradient differs.

    Parameters
    ----------
    num_particles : int
        K, at least 2 for a baseline (each particle's is built from the other K - 1); with
        K = 1 a warning says there is none (the ELBO with the score function at every site).
    max_plate_nesting, vectorize_particles
        As for :class:`pyro.infer.ELBO`; ``vectorize_particles=True`` draws the K particles in
        one pass (an extra leftmost plate).
    """

    def __init__(self, num_particles: int = 1, max_plate_nesting: float = float("inf"),
                 vectorize_particles: bool = False, **options):
        if int(num_particles) < 2:
            # Still unbiased (the ELBO's score-function gradient, per data point), but not VIMCO.
            warnings.warn(
                "the 'vimco' estimator with num_particles=1 has no baseline (each particle's "
                "baseline is built from the other K - 1): pass num_particles >= 2",
                stacklevel=3,
            )
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles, **options)

    def _get_trace(self, model, guide, args, kwargs):
        return get_importance_trace(
            "flat", self.max_plate_nesting, model, score_function_only(guide), args, kwargs
        )

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """-L_K as a 0-dim tensor whose guide gradient is the VIMCO estimator."""
        return importance_weighted_loss(self, model, guide, args, kwargs)

