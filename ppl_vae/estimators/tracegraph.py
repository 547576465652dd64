"""Pyro's ``TraceGraph_ELBO`` with a ``differentiable_loss``.

The gradient is Pyro's: the pathwise gradient at guide sites with ``rsample``, and a
score-function term only at the sites without it, each multiplied by the costs downstream of the
site in the dependency graph and by its own data point's costs inside a plate (Schulman et al.
2015, "Gradient estimation using stochastic computation graphs"; Rao-Blackwellisation), minus
the site's baseline when its ``infer`` dict names one (Mnih & Gregor 2014). Pyro's class has no
``differentiable_loss``, so it cannot be the loss of a ``torch.nn.Module`` training loop: here
``differentiable_loss`` returns ``-ELBO + (surrogate - surrogate.detach())``, and
``loss_and_grads`` backpropagates that same tensor, so both give Pyro's gradient.

``score`` (:mod:`ppl_vae.estimators.score`) is the same estimator with the score function forced
on every guide site, reparameterizable or not.
"""

from __future__ import annotations

from typing import final

import torch
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.tracegraph_elbo import TrackNonReparam
from pyro.infer.util import is_validation_enabled
from pyro.util import check_if_enumerated

from ppl_vae.compat import compute_tracegraph_elbo, elbo_traces
from ppl_vae.estimators._surrogate import set_leave_one_out_baselines, value_with_gradient
from ppl_vae.estimators._traces import DifferentiableELBO

__all__ = ["TraceGraphELBO", "graph_trace", "graph_loss"]

BASELINES = ("none", "leave_one_out")


def graph_trace(max_plate_nesting, model, guide, args, kwargs):
    """``TraceGraph_ELBO``'s traces of one particle: dense dependency graphs, and provenance
    tracking from each non-reparameterized draw to the costs it influences."""
    with TrackNonReparam():
        model_trace, guide_trace = get_importance_trace(
            "dense", max_plate_nesting, model, guide, args, kwargs
        )
    if is_validation_enabled():
        check_if_enumerated(guide_trace)
    missing = [name for name, site in model_trace.nodes.items()
               if site["type"] == "sample" and not site["is_observed"]
               and name not in guide_trace.nodes]
    if missing:
        # Pyro's surrogate looks each tracked draw up in the guide (a KeyError otherwise).
        raise ValueError(
            f"latent site(s) {missing} of the model are not in the guide: a score-function "
            "term needs each latent drawn by the guide; sum a discrete one out with 'enum' "
            "(infer={'enumerate': 'parallel'}) or add it to the guide"
        )
    return model_trace, guide_trace


def graph_loss(elbo: ELBO, model, guide, args, kwargs, leave_one_out: bool) -> torch.Tensor:
    """-ELBO (0-dim) with the gradient of ``TraceGraph_ELBO``'s surrogate, over ``elbo``'s
    particles.

    ``elbo_traces(elbo, ...)`` yields ``(model_trace, guide_trace, *extra)``; ``extra`` (when given)
    are surrogate-ELBO terms of value 0 added to the particle's surrogate (``stl``'s removal
    of the score terms).
    """
    value, surrogate = 0.0, 0.0
    for model_trace, guide_trace, *extra in elbo_traces(elbo, model, guide, args, kwargs):
        if leave_one_out:
            set_leave_one_out_baselines(model_trace, guide_trace, elbo.num_particles)
        elbo_particle, surrogate_particle = compute_tracegraph_elbo(model_trace, guide_trace)
        for term in extra:
            surrogate_particle = surrogate_particle - term
        value, surrogate = value + elbo_particle, surrogate + surrogate_particle
    # one vectorized trace holds all the particles: average them, as Pyro does
    return value_with_gradient(value / elbo.num_particles, surrogate / elbo.num_particles, args)


def check_baseline(baseline: str, vectorize_particles: bool, num_particles: int) -> bool:
    """Whether the leave-one-out baseline applies: asked for, and K >= 2 vectorized particles
    to leave one out of (``ValueError`` for an unknown ``baseline``)."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be 'leave_one_out' or 'none', got {baseline!r}")
    return baseline == "leave_one_out" and bool(vectorize_particles) and num_particles > 1


@final
class TraceGraphELBO(DifferentiableELBO):
    """Negative ELBO with ``TraceGraph_ELBO``'s gradient, as a differentiable loss.

    Parameters
    ----------
    num_particles, max_plate_nesting, vectorize_particles, **options
        As for :class:`pyro.infer.ELBO`.
    baseline : {"none", "leave_one_out"}
        ``"none"`` (the default) is Pyro's behaviour: a site's baseline is whatever its
        ``infer`` dict asks for. ``"leave_one_out"`` gives every other non-reparameterized site,
        with ``vectorize_particles=True`` and K >= 2 particles, the mean cost of the other K - 1
        particles as its baseline (as ``score`` does by default).
    """

    def __init__(self, num_particles: int = 1, max_plate_nesting: float = float("inf"),
                 vectorize_particles: bool = False, baseline: str = "none", **options):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles, **options)
        self.leave_one_out = check_baseline(baseline, vectorize_particles, num_particles)

    def _get_trace(self, model, guide, args, kwargs):
        return graph_trace(self.max_plate_nesting, model, guide, args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """0-dim tensor: value = -ELBO estimate, gradient = ``TraceGraph_ELBO``'s."""
        return graph_loss(self, model, guide, args, kwargs, self.leave_one_out)

