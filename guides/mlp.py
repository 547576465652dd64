"""Amortized diagonal-Normal guide (the VAE's encoder; Kingma & Welling 2014)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ppl_vae.programs.nn import check_width, hidden_sizes, keeps_arguments, mlp, unique_name


class MLPEncoder(PyroModule):
    """MLP encoder (Kingma & Welling 2014): q(z | x) = N(mu(x), diag sigma(x)^2).

    Parameters
    ----------
    obs_dim : int
        Features per data point.
    latent_dim : int
        Dimension of z (site ``"z"``, shape ``(batch, latent_dim)``, plate ``"data"``).
    hidden : int or sequence of int
        Hidden layer widths (softplus activations).
    min_scale : float
        Floor added to sigma(x) so that the log-density stays finite.
    """

    @keeps_arguments
    def __init__(self, obs_dim: int, latent_dim: int = 20, hidden=400, min_scale: float = 1e-4):
        super().__init__(name=unique_name("mlp_encoder"))
        self.obs_dim, self.latent_dim, self.min_scale = int(obs_dim), int(latent_dim), min_scale
        self.net = mlp((self.obs_dim, *hidden_sizes(hidden), 2 * self.latent_dim))

    @classmethod
    def from_dataset(cls, dataset, **options):
        return cls(dataset.obs_dim, **options)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(z | x), each of shape ``(..., latent_dim)``."""
        loc, raw_scale = self.net(x).split(self.latent_dim, dim=-1)
        # The network outputs log sigma (as in Kingma & Welling); exp keeps sigma positive.
        return loc, raw_scale.exp() + self.min_scale

    def forward(self, x: torch.Tensor):
        check_width(x, self.obs_dim, "MLPEncoder")
        loc, scale = self.encode(x)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))


__all__ = ["MLPEncoder"]
