"""Where torch's KL registry has a closed form: the fact behind the ``analytic`` estimator.

Pyro's ``TraceMeanField_ELBO`` uses the closed-form KL(q || p) only where torch's KL registry
(with Pyro's additions) has an entry for the (guide, prior) pair of a latent site, and otherwise
falls back to the Monte Carlo estimate log q(z) - log p(z) without saying so.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch
from torch.distributions import kl_divergence

from ppl_vae.programs.checks import latent_sites, trace_pair

__all__ = ["as_batch", "has_closed_form_kl", "monte_carlo_kl_sites", "program_traces"]


def as_batch(batch) -> tuple:
    """``batch`` as a tuple of tensors (the programs' arguments), with a clear error otherwise."""
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch and all(
        isinstance(t, torch.Tensor) for t in batch
    ):
        return tuple(batch)
    raise ValueError(
        "batch must be a tensor or a tuple of tensors (the programs' arguments), got "
        f"{type(batch).__name__}"
    )


def program_traces(model, guide, batch):
    """Model and guide traces on ``batch``, without gradients or Pyro's validation."""
    with torch.no_grad(), pyro.validation_enabled(False):
        return trace_pair(model, guide, as_batch(batch))


def has_closed_form_kl(guide_site, model_site) -> bool:
    try:
        kl_divergence(guide_site["fn"], model_site["fn"])
    except NotImplementedError:
        return False
    return True


def monte_carlo_kl_sites(model: Callable, guide: Callable, batch) -> list[str]:
    """Latent sites for which ``TraceMeanField_ELBO`` falls back to a Monte Carlo KL.

    These are the sites whose (guide distribution, model distribution) pair has no entry in
    torch's KL registry, with Pyro's additions (``torch.distributions.kl_divergence`` raises ``NotImplementedError``), for
    example a ``LogNormal`` guide on a ``Gamma`` prior, or a ``Normal`` guide on a
    ``StudentT`` prior.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``model(*batch)``.
    batch : tensor or tuple of tensors
        A few rows of data (the programs are run once).

    Returns
    -------
    list of str
        Site names in the model's order; empty when every KL is in closed form.
    """
    model_trace, guide_trace = program_traces(model, guide, batch)
    return [
        name for name in latent_sites(model_trace)
        if name in guide_trace.nodes
        and not has_closed_form_kl(guide_trace.nodes[name], model_trace.nodes[name])
    ]
