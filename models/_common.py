"""Likelihood heads shared by the model zoo."""

from __future__ import annotations

import pyro.distributions as dist
import torch

from ppl_vae.programs.distributions import SoftBernoulli

LIKELIHOODS = ("bernoulli", "normal", "continuous_bernoulli")


def likelihood(kind: str, out: torch.Tensor, log_scale: torch.Tensor | None):
    """Observation distribution from the decoder's output (logits or means), event dim 1."""
    if kind == "bernoulli":
        return SoftBernoulli(logits=out).to_event(1)
    if kind == "continuous_bernoulli":
        return dist.ContinuousBernoulli(logits=out).to_event(1)
    if kind == "normal":
        return dist.Normal(out, log_scale.exp()).to_event(1)
    raise ValueError(f"unknown likelihood {kind!r}; choose one of {LIKELIHOODS}")
