"""Doubly reparameterized IWAE gradients (DReG; Tucker, Lawson, Gu & Maddison 2019).

The IWAE gradient with respect to the guide's parameters phi, sum_k w~_k grad_phi log w_k
(w~_k = w_k / sum_j w_j), contains the score term -w~_k d/dphi log q_phi(z_k) at fixed z_k,
whose noise does not shrink as K grows: the encoder's signal-to-noise ratio falls like
1/sqrt(K) (Rainforth et al. 2018). Applying the reparameterization trick a second time to that
term turns it into a path derivative, and the estimator becomes

    encoder:  sum_k w~_k^2  d log w_k / d z_k  d z_k / d phi     (log q's parameters held fixed)
    decoder:  sum_k w~_k    grad_theta log p(x, z_k)             (the usual IWAE gradient)

Both are unbiased for the gradient of the same bound L_K; the encoder's SNR no longer falls with
K. It is built on Pyro's traces without touching the programs:

- the model is replayed on *copies* of the guide's draws (``z.view_as(z)``); once the normalized
  weights are known, a gradient hook multiplies whatever reaches a copy by w~_k, so log p's
  path to phi carries w~_k * w~_k while theta gets w~_k;
- the guide is replayed on the detached draws (as ``stl`` does): that replay's log q has a
  gradient only through phi at fixed z (the score term), which is removed from log q's
  gradient, leaving the path derivative, weighted by w~_k^2. A guide's ``pyro.factor`` site keeps
  its direct gradient with weight w~_k (it is part of the weight, not of q's density).

Every guide site must be reparameterizable (``iwae`` or ``vimco`` handle the others).
"""

from __future__ import annotations

from typing import final

import torch
from pyro.poutine.messenger import Messenger

from ppl_vae.estimators._bound import log_mean_exp, particle_terms, stack_particles, zero_like
from ppl_vae.estimators._traces import (
    DifferentiableELBO,
    detached_replay,
    importance_trace,
    refuse_non_reparameterized,
)

__all__ = ["DoublyReparameterizedELBO"]


@final
class _DrawCopies(Messenger):
    """Give the model a distinct autograd node for each replayed latent draw, and keep them
    (with their event dimensions) so that a hook can reweight their gradient later."""

    def __init__(self):
        super().__init__()
        self.copies: list[tuple[torch.Tensor, int]] = []

    def _pyro_sample(self, msg):
        value = msg["value"]
        if msg["is_observed"] or not isinstance(value, torch.Tensor) or not value.requires_grad:
            return
        msg["value"] = value.view_as(value)
        self.copies.append((msg["value"], msg["fn"].event_dim))


def _hook(weight: torch.Tensor, event_dim: int):
    weight = weight.reshape(weight.shape + (1,) * event_dim)
    return lambda grad: grad * weight


@final
class DoublyReparameterizedELBO(DifferentiableELBO):
    """Negative IWAE bound (K = ``num_particles``) with the doubly reparameterized gradient.

    Same value as ``iwae`` with the same draws. ``loss_and_grads`` and ``differentiable_loss``
    give the same gradient (the loss is one ``backward()``; it cannot be traced with ``jit``).

    Parameters
    ----------
    num_particles, max_plate_nesting, vectorize_particles
        As for :class:`pyro.infer.ELBO` (``num_particles`` is K).
    accepting : callable, optional
        ``accepting() -> list of str``: the estimators to name when a guide site has no
        ``rsample`` (the registry passes those whose spec does not need it).
    """

    def __init__(self, num_particles: int = 1, max_plate_nesting: float = float("inf"),
                 vectorize_particles: bool = False, accepting=lambda: ["iwae", "vimco"],
                 **options):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles, **options)
        self.accepting = accepting

    def _get_trace(self, model, guide, args, kwargs):
        copies = _DrawCopies()
        model_trace, guide_trace = importance_trace(
            self.max_plate_nesting, model, guide, args, kwargs, around_replay=copies
        )
        refuse_non_reparameterized("dreg", guide_trace, self.accepting)
        fixed_trace = detached_replay(guide, guide_trace, args, kwargs)
        return model_trace, guide_trace, fixed_trace, copies.copies

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """-L_K as a 0-dim tensor whose gradient is the DReG estimator."""
        particles = list(self._get_traces(model, guide, args, kwargs))
        vectorized = self.vectorize_particles and self.num_particles > 1
        # (after tracing: Pyro guesses max_plate_nesting on the first call)
        particle_dim = -int(self.max_plate_nesting) if vectorized else None
        terms = [particle_terms(m, g) for m, g, _, _ in particles]
        if terms[0].empty:
            return zero_like(args)  # no sample site at all: Pyro's ELBOs give 0 too
        fixed = [particle_terms(m, g, f) for m, g, f, _ in particles]
        log_w = stack_particles([t.log_w for t in terms], particle_dim)
        shape = log_w.shape[1:]
        bound = log_mean_exp(log_w)
        weight = torch.softmax(log_w.detach(), dim=0)
        # Weights back in each particle's own layout, for the hooks on its draws' copies.
        for k, (_, _, _, copies) in enumerate(particles):
            w = weight.movedim(0, particle_dim) if particle_dim is not None else weight[k]
            for copy, event_dim in copies:
                copy.register_hook(_hook(w, event_dim))
        log_p = stack_particles([t.log_p for t in terms], particle_dim, shape)
        log_q = stack_particles([t.log_q for t in terms], particle_dim, shape)
        log_q_fixed = stack_particles([t.log_q for t in fixed], particle_dim, shape)
        factors_fixed = stack_particles([t.guide_factors for t in fixed], particle_dim, shape)
        # log q's gradient without its direct phi part at fixed z: the path derivative.
        path_q = log_q - (log_q_fixed - log_q_fixed.detach())
        # A guide pyro.factor's direct phi part belongs to the weight: IWAE weight w~.
        direct_factors = factors_fixed - factors_fixed.detach()
        surrogate = (weight * (log_p - direct_factors) - weight**2 * path_q).sum(0)
        value = bound.detach() + (surrogate - surrogate.detach())
        return -terms[0].scale * value.sum()

