"""Pyro's ``TraceGraph_ELBO`` surrogate as a differentiable loss, and the leave-one-out baseline
across vectorized particles; shared by ``score``, ``tracegraph`` and ``stl``."""

from __future__ import annotations

import torch
from pyro.distributions.util import is_identically_zero
from pyro.infer.util import MultiFrameTensor

from ppl_vae.estimators._bound import zero_like

__all__ = ["PARTICLE_PLATE", "set_leave_one_out_baselines", "value_with_gradient"]

PARTICLE_PLATE = "num_particles_vectorized"  # the name Pyro's ELBO gives its particle plate


def set_leave_one_out_baselines(model_trace, guide_trace, num_particles: int) -> None:
    """Give every non-reparameterized guide sample site ``baseline_value`` = the mean, over the
    other particles, of the total cost log p(x, z) - log q(z) summed to the site's plates
    (Mnih & Rezende 2016; Kool, van Hoof & Welling 2019).

    The cost used here contains every term, not only the site's downstream ones; a baseline may
    be any function of the other particles, so the estimator stays unbiased either way. Sites
    with a baseline of their own (``infer={"baseline": ...}``) keep it.
    """
    costs = MultiFrameTensor()
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] == "sample" and "log_prob" in site:
                costs.add((site["cond_indep_stack"], sign * site["log_prob"].detach()))
    for site in guide_trace.nodes.values():
        if site["type"] != "sample" or site["is_observed"] or "log_prob" not in site:
            continue
        if site["infer"].get("baseline") or is_identically_zero(
            site["score_parts"].score_function
        ):
            continue  # the site's own baseline, or a site with rsample (no score term)
        frame = next((f for f in site["cond_indep_stack"] if f.name == PARTICLE_PLATE), None)
        if frame is None:
            continue
        cost = costs.sum_to(site["cond_indep_stack"])
        if not isinstance(cost, torch.Tensor) or cost.dim() < -frame.dim:
            continue
        total = cost.sum(frame.dim, keepdim=True)
        baseline = (total - cost) / (num_particles - 1)
        site["infer"] = {**site["infer"], "baseline": {"baseline_value": baseline}}


def value_with_gradient(elbo, surrogate_loss, args) -> torch.Tensor:
    """``-elbo`` as a 0-dim tensor whose gradient is that of ``surrogate_loss``.

    ``args`` (the programs' arguments) give the device and dtype when both are plain numbers
    (programs without a sample site).
    """
    value = -(elbo.detach() if isinstance(elbo, torch.Tensor) else zero_like(args) + elbo)
    if not isinstance(surrogate_loss, torch.Tensor) or not surrogate_loss.requires_grad:
        return value
    return value + (surrogate_loss - surrogate_loss.detach())
