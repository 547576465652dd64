"""The variational autoencoder's generative model (Kingma & Welling 2014; Rezende et al. 2014)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from ppl_vae.programs.nn import check_width, hidden_sizes, keeps_arguments, mlp, unique_name

from ._common import LIKELIHOODS, likelihood


class VAE(PyroModule):
    """Variational autoencoder (Kingma & Welling 2014): p(z) = N(0, I), p(x | z) from an MLP.

    Sites: latent ``"z"`` of shape ``(batch, latent_dim)``, observed ``"x"`` of shape
    ``(batch, obs_dim)``, inside the plate ``"data"``.

    Parameters
    ----------
    obs_dim : int
        Features per data point.
    latent_dim : int
        Dimension of z.
    hidden : int or sequence of int
        Hidden layer widths of the decoder (softplus activations).
    likelihood : {"bernoulli", "normal", "continuous_bernoulli"}
        ``"bernoulli"`` accepts intensities in [0, 1] (soft-target cross-entropy);
        ``"continuous_bernoulli"`` is its normalised version (Loaiza-Ganem & Cunningham 2019);
        ``"normal"`` learns one log-scale per feature.
    """

    @keeps_arguments
    def __init__(self, obs_dim: int, latent_dim: int = 20, hidden=400, likelihood="bernoulli"):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")
        super().__init__(name=unique_name("vae"))
        self.obs_dim, self.latent_dim, self.likelihood = int(obs_dim), int(latent_dim), likelihood
        self.decoder = mlp((self.latent_dim, *hidden_sizes(hidden), self.obs_dim))
        self.log_scale = nn.Parameter(torch.zeros(self.obs_dim)) if likelihood == "normal" else None

    @classmethod
    def from_dataset(cls, dataset, **options):
        return cls(dataset.obs_dim, **options)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output (logits, or means for ``"normal"``), shape ``(..., obs_dim)``."""
        return self.decoder(z)

    def observation_dist(self, z: torch.Tensor):
        return likelihood(self.likelihood, self.decode(z), self.log_scale)

    def forward(self, x: torch.Tensor):
        check_width(x, self.obs_dim, "VAE")
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(()), x.new_ones(())).expand([self.latent_dim])
            z = pyro.sample("z", prior.to_event(1))
            pyro.sample("x", self.observation_dist(z), obs=x)
        return z
