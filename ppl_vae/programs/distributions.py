"""Likelihoods for data in [0, 1] that Pyro's own validation would reject."""

from __future__ import annotations

import pyro.distributions as dist
from torch.distributions import constraints

__all__ = ["SoftBernoulli"]


class SoftBernoulli(dist.Bernoulli):
    """Bernoulli likelihood for intensities in [0, 1] (the soft-target cross-entropy).

    ``log_prob(x) = x log p + (1 - x) log(1 - p)``, which is what torch's Bernoulli computes for
    any ``x`` in [0, 1]; only its support check insists on {0, 1}. It is not a normalised density
    on [0, 1] (see :class:`torch.distributions.ContinuousBernoulli` for that, Loaiza-Ganem &
    Cunningham 2019), but it is the usual VAE objective for grey-level images.
    """

    support = constraints.unit_interval
    has_enumerate_support = False
