"""The importance-weighted bound (IWAE; Burda, Grosse & Salakhutdinov 2016).

For every data point x_i, with K draws z_ik ~ q(z | x_i) and w_ik = p(x_i, z_ik) / q(z_ik | x_i),

    L_K = sum_i log (1/K) sum_k w_ik  <=  log p(x),

a bound that tightens as K grows (L_1 is the ELBO). Its gradient is taken through reparameterized
draws.

Why not Pyro's ``RenyiELBO(alpha=0)``: it does keep one log-mean-exp per data point (plates
shared by every site stay unsummed), but (1) it has no ``differentiable_loss``, so it cannot be
used as a ``torch.nn.Module`` loss, and (2) it applies each site's scale (the N / batch-size
factor of mini-batching) *inside* the exponential, so with mini-batches its value and gradient
are not N / B times the batch bound. Here the log-weights are formed from unscaled log-densities
and the common scale multiplies the bound outside the log-mean-exp.
"""

from __future__ import annotations

import math
from typing import final

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.infer.util import get_dependent_plate_dims

from ppl_vae.estimators._traces import loss_and_grads, loss_value, reparameterized_traces

__all__ = ["ImportanceWeightedELBO"]


def _sample_sites(model_trace, guide_trace):
    for trace in (model_trace, guide_trace):
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and (trace is model_trace or not site["is_observed"]):
                yield trace is model_trace, name, site


def _common_scale(sites) -> float | None:
    """The scale every site shares, or ``None`` when they differ (e.g. global + local sites)."""
    scales = set()
    for site in sites:
        scale = site["scale"]
        if isinstance(scale, torch.Tensor):
            if scale.numel() != 1:
                return None
            scale = float(scale)
        scales.add(float(scale))
    return scales.pop() if len(scales) == 1 else None


def _log_weight(model_trace, guide_trace) -> torch.Tensor:
    """log p(x, z) - log q(z | x) summed over everything except the plates every site shares.

    Returns a tensor whose remaining dimensions are those shared plates (the data plate, and
    the vectorized particle plate when present), right-aligned as in the program.
    """
    sites = [site for _, _, site in _sample_sites(model_trace, guide_trace)]
    sum_dims = get_dependent_plate_dims(sites)
    scale = _common_scale(sites)
    total = None
    for in_model, _, site in _sample_sites(model_trace, guide_trace):
        if scale is None:
            lp = site["log_prob"]  # mixed scales: the joint bound of the batch, scales inside
        else:
            lp = scale_and_mask(site["unscaled_log_prob"], 1.0, site["mask"])
        lp = torch.as_tensor(lp)
        dims = [d for d in sum_dims if -d <= lp.dim()]
        if dims:
            lp = lp.sum(dims, keepdim=True)
        lp = lp if in_model else -lp
        total = lp if total is None else total + lp
    return total, (1.0 if scale is None else scale)


@final
class ImportanceWeightedELBO(ELBO):
    """Negative importance-weighted bound with K = ``num_particles`` importance samples.

    ``loss`` / ``differentiable_loss`` return -L_K (scaled to the whole data set when the
    programs' data plate is scaled). With K = 1 this is the Monte Carlo ELBO (``"mc"``).

    Particles are either drawn in a Python loop or, with ``vectorize_particles=True``, in one
    pass with an extra leftmost plate; both give the same estimator. Every guide site must be
    reparameterizable: the gradient is the pathwise gradient of log-mean-exp.

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
        return reparameterized_traces("iwae", self.max_plate_nesting, model, guide, args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """-L_K as a 0-dim tensor, differentiable through reparameterized draws."""
        vectorized = self.vectorize_particles and self.num_particles > 1
        weights, scale = [], 1.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            log_w, scale = _log_weight(model_trace, guide_trace)
            weights.append(log_w)
        if vectorized:
            log_w = weights[0]
            particle_dim = -int(self.max_plate_nesting)
            if log_w.dim() < -particle_dim:
                log_w = log_w.reshape((1,) * (-particle_dim - log_w.dim()) + log_w.shape)
        else:
            shape = torch.broadcast_shapes(*(w.shape for w in weights))
            log_w = torch.stack([w.expand(shape) for w in weights])
            particle_dim = 0
        bound = torch.logsumexp(log_w, dim=particle_dim) - math.log(self.num_particles)
        return -scale * bound.sum()

    def loss(self, model, guide, *args, **kwargs) -> float:
        """-L_K estimate (a float)."""
        return loss_value(self.differentiable_loss, model, guide, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """-L_K estimate; accumulates its gradient into ``.grad``."""
        return loss_and_grads(
            self.differentiable_loss, self.retain_graph, model, guide, *args, **kwargs
        )
