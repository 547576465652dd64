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

Guide sites without ``rsample`` (a discrete code, a label) have no path derivative: they get
``TraceGraph_ELBO``'s score-function term (downstream costs, per data point), centred by the
leave-one-out baseline of the other particles with ``vectorize_particles=True`` and K >= 2
(:mod:`ppl_vae.estimators.tracegraph`). Every guide ``mc`` accepts is accepted.
"""

from __future__ import annotations

from typing import final

import torch
from pyro.distributions.util import is_identically_zero

from ppl_vae.estimators._traces import DifferentiableELBO, detached_replay
from ppl_vae.estimators.tracegraph import check_baseline, graph_loss, graph_trace

__all__ = ["StickingTheLandingELBO"]


def _score_terms(guide_trace, fixed_trace):
    """sum over reparameterized guide sites of log q at fixed z minus its detached value: the
    score term, with value 0, to remove from the surrogate ELBO's gradient."""
    total = 0.0
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if not is_identically_zero(site["score_parts"].score_function):
            continue  # no rsample: the score function is this site's gradient, keep it
        score = fixed_trace.nodes[name]["log_prob_sum"]
        total = total + (score - score.detach())
    return total


@final
class StickingTheLandingELBO(DifferentiableELBO):
    """Negative ELBO (same value as ``Trace_ELBO``) with the STL path-derivative gradient.

    The model's parameters get the ordinary gradient; the guide's parameters get the path
    derivative at reparameterizable sites and the Rao-Blackwellised score function at the
    others.

    Parameters
    ----------
    num_particles, max_plate_nesting, vectorize_particles
        As for :class:`pyro.infer.ELBO`.
    baseline : {"leave_one_out", "none"}
        The baseline of the score-function terms with vectorized particles (K >= 2).
    """

    def __init__(self, num_particles: int = 1, max_plate_nesting: float = float("inf"),
                 vectorize_particles: bool = False, baseline: str = "leave_one_out",
                 **options):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles, **options)
        self.leave_one_out = check_baseline(baseline, vectorize_particles, num_particles)

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = graph_trace(self.max_plate_nesting, model, guide, args, kwargs)
        # ``guide`` is already wrapped in the particle plate when particles are vectorized.
        fixed_trace = detached_replay(guide, guide_trace, args, kwargs)
        return model_trace, guide_trace, _score_terms(guide_trace, fixed_trace)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """-ELBO estimate (0-dim tensor) whose guide gradient is the path derivative."""
        return graph_loss(self, model, guide, args, kwargs, self.leave_one_out)

