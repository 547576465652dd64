"""The importance-weighted bound (IWAE; Burda, Grosse & Salakhutdinov 2016).

For every data point x_i, with K draws z_ik ~ q(z | x_i) and w_ik = p(x_i, z_ik) / q(z_ik | x_i),

    L_K = sum_i log (1/K) sum_k w_ik  <=  log p(x),

a bound that tightens as K grows (L_1 is the ELBO). Its gradient is taken through reparameterized
draws where a guide site has ``rsample``. Where it does not (a discrete code, a label), the site
gets a score-function term whose learning signal for particle k is L_i - L_i^{-k}, VIMCO's
leave-one-out baseline (Mnih & Rezende 2016; :mod:`ppl_vae.estimators.vimco` uses it at every
site): unbiased, because L_i^{-k} does not depend on z_ik. With K = 1 there is no other particle
and the signal is L_i itself (per data point, as in ``mc``).

Why not Pyro's ``RenyiELBO(alpha=0)``: it does keep one log-mean-exp per data point (plates
shared by every site stay unsummed), but (1) it has no ``differentiable_loss``, so it cannot be
used as a ``torch.nn.Module`` loss, and (2) it applies each site's scale (the N / batch-size
factor of mini-batching) *inside* the exponential, so with mini-batches its value and gradient
are not N / B times the batch bound. Here the log-weights are formed from unscaled log-densities
and the common scale multiplies the bound outside the log-mean-exp (:mod:`ppl_vae.estimators._bound`).
"""

from __future__ import annotations

from typing import final

import torch
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace

from ppl_vae.compat import elbo_traces
from ppl_vae.estimators._bound import (
    leave_one_out_bound,
    log_mean_exp,
    particle_terms,
    stack_particles,
    zero_like,
)
from ppl_vae.estimators._traces import DifferentiableELBO

__all__ = ["ImportanceWeightedELBO", "importance_weighted_loss"]


def importance_weighted_loss(elbo: ELBO, model, guide, args, kwargs) -> torch.Tensor:
    """-L_K (0-dim) with the pathwise gradient at reparameterized sites and VIMCO-centred
    score-function terms at the others; shared by ``iwae`` and ``vimco``."""
    vectorized = elbo.vectorize_particles and elbo.num_particles > 1
    terms = [particle_terms(m, g) for m, g in elbo_traces(elbo, model, guide, args, kwargs)]
    if terms[0].empty:
        return zero_like(args)  # no sample site at all: Pyro's ELBOs give 0 too
    particle_dim = -int(elbo.max_plate_nesting) if vectorized else None
    log_w = stack_particles([t.log_w for t in terms], particle_dim)
    bound = log_mean_exp(log_w)
    surrogate = bound
    if any(t.has_score for t in terms):
        score = stack_particles([t.score for t in terms], particle_dim, log_w.shape[1:])
        with torch.no_grad():
            signal = bound - leave_one_out_bound(log_w) if log_w.shape[0] > 1 else bound
        surrogate = surrogate + (signal * score).sum(0)
    value = bound.detach() + (surrogate - surrogate.detach())
    return -terms[0].scale * value.sum()


@final
class ImportanceWeightedELBO(DifferentiableELBO):
    """Negative importance-weighted bound with K = ``num_particles`` importance samples.

    ``loss`` / ``differentiable_loss`` return -L_K (scaled to the whole data set when the
    programs' data plate is scaled). With K = 1 this is the Monte Carlo ELBO (``"mc"``), with
    the guide's ``pyro.factor`` sites counted as ``Trace_ELBO`` counts them.

    Particles are either drawn in a Python loop or, with ``vectorize_particles=True``, in one
    pass with an extra leftmost plate; both give the same estimator. Reparameterizable guide
    sites get the pathwise gradient of log-mean-exp; the others a score-function term with the
    VIMCO leave-one-out baseline (K >= 2).

    When all latent sites share the data plate, the log-mean-exp is taken per data point. When
    some are global (outside the data plate), the sites' scales differ and the bound becomes the
    joint one, log (1/K) sum_k prod_i w_ik over the batch (exact for full-batch training).

    Parameters
    ----------
    num_particles : int
        K.
    max_plate_nesting, vectorize_particles
        As for :class:`pyro.infer.ELBO`.
    """

    def _get_trace(self, model, guide, args, kwargs):
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """-L_K as a 0-dim tensor (its gradient: see the class docstring)."""
        return importance_weighted_loss(self, model, guide, args, kwargs)

