"""Tracing shared by the estimators that need every guide site reparameterized."""

from __future__ import annotations

import torch
from pyro.distributions.util import is_identically_zero
from pyro.infer.enum import get_importance_trace


def reparameterized_traces(estimator: str, max_plate_nesting, model, guide, args, kwargs):
    """Model and guide traces of one particle, refusing guide sites without ``rsample``.

    Pathwise estimators (``iwae``, ``stl``) would silently drop the score term of such a site,
    which is exactly the bias the reparameterization trick exists to avoid.
    """
    model_trace, guide_trace = get_importance_trace(
        "flat", max_plate_nesting, model, guide, args, kwargs
    )
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and not is_identically_zero(site["score_parts"].score_function):
            raise ValueError(
                f"the {estimator!r} estimator needs reparameterizable guide sites; site {name!r} "
                f"({type(site['fn']).__name__}) has no rsample: use 'score' or 'mc'"
            )
    return model_trace, guide_trace


def loss_value(differentiable_loss, *args, **kwargs) -> float:
    """``ELBO.loss`` from ``differentiable_loss``: the estimate as a float, no graph kept."""
    with torch.no_grad():
        return float(differentiable_loss(*args, **kwargs))


def loss_and_grads(differentiable_loss, retain_graph, *args, **kwargs) -> float:
    """``ELBO.loss_and_grads`` from ``differentiable_loss``: accumulate ``.grad``, return the
    estimate."""
    loss = differentiable_loss(*args, **kwargs)
    if loss.requires_grad:
        loss.backward(retain_graph=retain_graph)
    return float(loss.detach())
