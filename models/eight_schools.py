"""The eight-schools hierarchical model, non-centred (Rubin 1981; Gelman et al., Bayesian Data
Analysis, section 5.5; the non-centred form of Papaspiliopoulos, Roberts & Skold 2007)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ppl_vae.programs.nn import keeps_arguments, unique_name


class EightSchools(PyroModule):
    """Eight schools, non-centred (Rubin 1981): hierarchical Normal model of coaching effects.

    mu ~ N(0, 5), tau ~ HalfCauchy(5), theta~_j ~ N(0, 1), y_j ~ N(mu + tau theta~_j, sigma_j).

    Non-centred: the school effects are theta_j = mu + tau theta~_j, which removes the funnel
    between tau and theta that defeats samplers and variational families alike. Called as
    ``model(sigma, y)`` with the known standard errors ``sigma`` ``(J, 1)`` or ``(J,)`` and
    estimated effects ``y`` ``(J,)`` (``ppl_vae.datasets.load_eight_schools``).

    Sites: global ``"mu"`` and ``"tau"`` (scalars), ``"theta_tilde"`` ``(J,)`` and observed
    ``"y"`` ``(J,)`` in plate ``"data"`` over schools. Published MCMC posterior mean of mu:
    about 4.4 (ArviZ's ``load_arviz_data("non_centered_eight")``).

    Parameters
    ----------
    mu_scale, tau_scale : float
        Prior scales of mu and tau (5 and 5 in the classic version).
    """

    @keeps_arguments
    def __init__(self, mu_scale: float = 5.0, tau_scale: float = 5.0):
        if float(mu_scale) <= 0 or float(tau_scale) <= 0:
            raise ValueError(f"prior scales must be positive, got {mu_scale}, {tau_scale}")
        super().__init__(name=unique_name("eight_schools"))
        self.mu_scale, self.tau_scale = float(mu_scale), float(tau_scale)

    @classmethod
    def from_dataset(cls, dataset, **options):
        if dataset.train_targets is None:
            raise ValueError(f"EightSchools needs (sigma, y) data; {dataset.name!r} has no "
                             "targets (use --data eight_schools)")
        return cls(**options)

    def forward(self, sigma: torch.Tensor, y: torch.Tensor | None = None):
        sigma = school_vector(sigma, "sigma")
        if y is not None and tuple(y.shape) != tuple(sigma.shape):
            raise ValueError(f"EightSchools: y must have shape {tuple(sigma.shape)} (one effect "
                             f"per school), got {tuple(y.shape)}")
        mu = pyro.sample("mu", dist.Normal(sigma.new_zeros(()), sigma.new_tensor(self.mu_scale)))
        tau = pyro.sample("tau", dist.HalfCauchy(sigma.new_tensor(self.tau_scale)))
        with pyro.plate("data", sigma.shape[0]):
            theta_tilde = pyro.sample("theta_tilde",
                                      dist.Normal(sigma.new_zeros(()), sigma.new_ones(())))
            return pyro.sample("y", dist.Normal(mu + tau * theta_tilde, sigma), obs=y)


def school_vector(sigma: torch.Tensor, name: str) -> torch.Tensor:
    """``sigma`` of shape ``(J,)`` or ``(J, 1)`` as ``(J,)``; ``ValueError`` otherwise."""
    if sigma.dim() == 2 and sigma.shape[1] == 1:
        sigma = sigma[:, 0]
    if sigma.dim() != 1:
        raise ValueError(f"EightSchools: {name} must have shape (J,) or (J, 1), got "
                         f"{tuple(sigma.shape)}")
    return sigma


__all__ = ["EightSchools", "school_vector"]
