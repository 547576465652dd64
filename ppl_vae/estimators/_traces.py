"""Tracing and loss plumbing shared by ppl-vae's own estimators."""

from __future__ import annotations

from abc import abstractmethod

import torch
from pyro import poutine
from pyro.distributions.util import is_identically_zero
from pyro.infer import ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match, check_site_shape

__all__ = [
    "DifferentiableELBO", "importance_trace", "detached_replay", "refuse_non_reparameterized",
    "refuse_guide_factors", "guide_factor_sites", "loss_value", "loss_and_grads",
]


def importance_trace(max_plate_nesting, model, guide, args, kwargs, around_replay=None):
    """Pyro's ``get_importance_trace("flat", ...)``, with an optional handler
    ``around_replay`` that sits inside the tracing and outside the replay of the guide's
    values, so it acts on the value the model receives and the model's trace records."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    replayed = poutine.replay(model, trace=guide_trace)
    if around_replay is not None:
        replayed = around_replay(replayed)
    model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
    if is_validation_enabled():
        check_model_guide_match(model_trace, guide_trace, max_plate_nesting)
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace = prune_subsample_sites(model_trace)
    model_trace.compute_log_prob()
    guide_trace.compute_score_parts()
    if is_validation_enabled():
        for trace in (model_trace, guide_trace):
            for site in trace.nodes.values():
                if site["type"] == "sample":
                    check_site_shape(site, max_plate_nesting)
    return model_trace, guide_trace


def detached_replay(guide, guide_trace, args, kwargs) -> Trace:
    """The guide replayed on its own draws, detached: each site's log q then has a gradient
    only through the guide's parameters at fixed z (the score term), as STL and DReG need."""
    fixed = Trace()
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"]:
            fixed.add_node(name, **{**site, "value": site["value"].detach()})
    trace = poutine.trace(poutine.replay(guide, trace=fixed)).get_trace(*args, **kwargs)
    trace = prune_subsample_sites(trace)
    trace.compute_log_prob()
    return trace


def refuse_non_reparameterized(estimator: str, guide_trace, accepting) -> None:
    """``ValueError`` naming the first latent guide site without ``rsample`` and the estimators
    that accept it (``accepting()``: names, read from the registry when the error is raised).

    A pathwise estimator would silently drop the score term of such a site, which is exactly
    the bias the reparameterization trick exists to avoid.
    """
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        parts = site.get("score_parts")
        if site["fn"].has_rsample and (parts is None
                                       or is_identically_zero(parts.score_function)):
            continue
        raise ValueError(
            f"estimator {estimator!r} needs reparameterizable guide sites, but guide site "
            f"{name!r} ({type(site['fn']).__name__}) has no rsample; estimators that accept "
            f"it: {', '.join(accepting())}"
        )


def guide_factor_sites(guide_trace) -> dict[str, bool]:
    """The guide's ``pyro.factor`` sites (observed auxiliary sites), each with its
    ``has_rsample``."""
    return {name: bool(site["fn"].has_rsample) for name, site in guide_trace.nodes.items()
            if site["type"] == "sample" and site["is_observed"]
            and site["infer"].get("is_auxiliary")}


def refuse_guide_factors(estimator: str, allowed: str, guide_trace, accepting) -> None:
    """``ValueError`` naming the first guide factor an estimator whose spec says
    ``guide_factors=allowed`` cannot train, and the estimators that train it as Pyro does
    (``accepting(has_rsample)``: names, read from the registry when the error is raised)."""
    for name, has_rsample in guide_factor_sites(guide_trace).items():
        if allowed == "any" or (allowed == "reparameterized" and has_rsample):
            continue
        raise ValueError(
            f"estimator {estimator!r} cannot train the guide's factor site {name!r} "
            f"(pyro.factor(..., has_rsample={has_rsample})); estimators that train it as Pyro "
            f"does: {', '.join(accepting(has_rsample))}")


def loss_value(differentiable_loss, *args, **kwargs) -> float:
    """``ELBO.loss`` from ``differentiable_loss``: the estimate as a float, no graph kept."""
    with torch.no_grad():
        return float(differentiable_loss(*args, **kwargs))


def loss_and_grads(differentiable_loss, retain_graph, *args, **kwargs) -> float:
    """``ELBO.loss_and_grads`` from ``differentiable_loss``: accumulate ``.grad``, return the
    estimate. Both entry points therefore give the same gradient."""
    loss = differentiable_loss(*args, **kwargs)
    if loss.requires_grad:
        loss.backward(retain_graph=retain_graph)
    return float(loss.detach())


class DifferentiableELBO(ELBO):
    """Abstract: an estimator defined by its ``differentiable_loss`` alone.

    ``loss`` and ``loss_and_grads`` (what ``pyro.infer.SVI`` calls) are derived from it, so the
    three entry points of Pyro's ELBO interface always give one and the same estimator.
    """

    @abstractmethod
    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """0-dim tensor: value = the loss estimate, gradient = the estimator's gradient."""

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The loss estimate (a float; no graph is kept)."""
        return loss_value(self.differentiable_loss, model, guide, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The loss estimate; accumulates the estimator's gradient into each parameter's
        ``.grad``."""
        return loss_and_grads(
            self.differentiable_loss, self.retain_graph, model, guide, *args, **kwargs
        )
