"""Amortized low-rank-plus-diagonal Gaussian guide (the covariance structure of Rezende, Mohamed &
Wierstra 2014, section 4.1; Ong, Nott & Smith 2018 for factor covariances in VI)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ppl_vae.programs.nn import check_width, hidden_sizes, keeps_arguments, mlp, unique_name


class LowRankEncoder(PyroModule):
    """Low-rank encoder: q(z | x) = N(mu(x), U(x) U(x)^T + diag d(x)), correlated latents.

    U has shape ``(latent_dim, rank)``.

    Captures correlations between latent dimensions that a diagonal encoder cannot, at a cost
    linear in ``latent_dim`` (``LowRankMultivariateNormal``). Site ``"z"`` ``(batch,
    latent_dim)`` in plate ``"data"``.

    Parameters
    ----------
    obs_dim, latent_dim : int
    hidden : int or sequence of int
    rank : int
        Columns of U.
    min_scale : float
        Floor added to the diagonal standard deviations.
    """

    @keeps_arguments
    def __init__(self, obs_dim: int, latent_dim: int = 20, hidden=400, rank: int = 2,
                 min_scale: float = 1e-4):
        if int(rank) < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        super().__init__(name=unique_name("low_rank_encoder"))
        self.obs_dim, self.latent_dim, self.rank = int(obs_dim), int(latent_dim), int(rank)
        self.min_scale = min_scale
        out = self.latent_dim * (2 + self.rank)
        self.net = mlp((self.obs_dim, *hidden_sizes(hidden), out))

    @classmethod
    def from_dataset(cls, dataset, **options):
        return cls(dataset.obs_dim, **options)

    def encode(self, x: torch.Tensor):
        """``(loc, cov_factor, cov_diag)`` of shapes ``(batch, latent_dim)``,
        ``(batch, latent_dim, rank)``, ``(batch, latent_dim)``."""
        d = self.latent_dim
        loc, log_scale, factor = self.net(x).split([d, d, d * self.rank], dim=-1)
        cov_diag = (log_scale.exp() + self.min_scale) ** 2
        return loc, factor.reshape(*x.shape[:-1], d, self.rank), cov_diag

    def forward(self, x: torch.Tensor):
        check_width(x, self.obs_dim, "LowRankEncoder")
        loc, factor, cov_diag = self.encode(x)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", dist.LowRankMultivariateNormal(loc, factor, cov_diag))


__all__ = ["LowRankEncoder"]
