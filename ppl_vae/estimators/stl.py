"""Sticking the landing (STL; Roeder, Wu & Duvenaud 2017): the path-derivative ELBO gradient.

With reparameterized draws z = g_phi(eps), the total derivative of log p(x, z) - log q_phi(z)
with respect to phi has two parts: the path through z, and the score term
d/dphi log q_phi(z) at fixed z. The score term has expectation zero, so dropping it keeps the
estimator unbiased; and when q equals the exact posterior, log p(x, z) - log q(z) = log p(x) is
constant in z, so the path part is zero for every draw: the variance of the guide's gradient
vanishes as q approaches the posterior ("sticking the landing").

The score term is removed generically, on Pyro's traces: after the usual guide and model traces,
the guide is replayed once more on the *detached* draws; that replay's log q has a gradient only
through phi at fixed z, i.e. exactly the score term, and it is subtracted as
``log_q_fixed - log_q_fixed.detach()`` (value unchanged, gradient removed). For a mean-field
guide this equals evaluating log q with the distribution's parameters detached; for a guide in
which later sites depend on earlier draws it also keeps the path through those draws, as the
paper's estimator does.
"""

from __future__ import annotations

from typing import final

import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.poutine.trace_struct import Trace

from ppl_vae.estimators._traces import loss_and_grads, loss_value, reparameterized_traces

__all__ = ["StickingTheLandingELBO"]


def _detached(guide_trace) -> Trace:
    fixed = Trace()
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample":
            fixed.add_node(name, **{**site, "value": site["value"].detach()})
    return fixed


@final
class StickingTheLandingELBO(ELBO):
    """Negative ELBO (same value as ``Trace_ELBO``) with the STL path-derivative gradient.

    The model's parameters get the ordinary reparameterized gradient; the guide's parameters
    get the path derivative only. Every guide site must be reparameterizable.

    Parameters
    ----------
    num_particles, max_plate_nesting, vectorize_particles
        As for :class:`pyro.infer.ELBO`.
    """

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = reparameterized_traces(
            "stl", self.max_plate_nesting, model, guide, args, kwargs
        )
        # ``guide`` is already wrapped in the particle plate when particles are vectorized.
        fixed_trace = poutine.trace(poutine.replay(guide, trace=_detached(guide_trace))).get_trace(
            *args, **kwargs
        )
        fixed_trace.compute_log_prob()
        return model_trace, guide_trace, fixed_trace

    def _elbo_particle(self, model_trace, guide_trace, fixed_trace) -> torch.Tensor:
        elbo = 0.0
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                elbo = elbo + site["log_prob_sum"]
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample":
                score = fixed_trace.nodes[name]["log_prob_sum"]
                elbo = elbo - site["log_prob_sum"] + (score - score.detach())
        return torch.as_tensor(elbo)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """-ELBO estimate (0-dim tensor) whose guide gradient is the path derivative."""
        loss = 0.0
        for traces in self._get_traces(model, guide, args, kwargs):
            loss = loss - self._elbo_particle(*traces) / self.num_particles
        return torch.as_tensor(loss)

    def loss(self, model, guide, *args, **kwargs) -> float:
        """-ELBO estimate (a float)."""
        return loss_value(self.differentiable_loss, model, guide, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """-ELBO estimate; accumulates the STL gradient into ``.grad``."""
        return loss_and_grads(
            self.differentiable_loss, self.retain_graph, model, guide, *args, **kwargs
        )
