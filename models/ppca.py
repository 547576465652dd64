"""Probabilistic PCA and factor analysis: the linear-Gaussian latent model whose evidence is known
in closed form (Tipping & Bishop 1999; factor analysis: Bartholomew 1987)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.nn.functional import softplus

from ppl_vae.programs.nn import check_width, keeps_arguments, unique_name

NOISE_MODELS = ("isotropic", "diagonal")


class PPCA(PyroModule):
    """Probabilistic PCA: z ~ N(0, I), x | z ~ N(W z + b, sigma^2 I) (Tipping & Bishop 1999).

    With ``noise="diagonal"`` the noise has one scale per feature (factor analysis). Because
    p(x) = N(b, W W^T + Psi) is Gaussian, :meth:`exact_log_evidence` gives log p(x_i) exactly:
    the yardstick for the ELBO (which never exceeds it) and the importance-weighted bound (which
    rises toward it as K grows).

    Sites: latent ``"z"`` of shape ``(batch, latent_dim)``, observed ``"x"`` of shape
    ``(batch, obs_dim)``, plate ``"data"``.

    Parameters
    ----------
    obs_dim : int
        Features per data point.
    latent_dim : int
        Dimension of z.
    noise : {"isotropic", "diagonal"}
        PPCA (one noise scale) or factor analysis (one per feature).
    init_noise : float
        Initial noise standard deviation.
    """

    @keeps_arguments
    def __init__(self, obs_dim: int, latent_dim: int = 2, noise: str = "isotropic",
                 init_noise: float = 1.0):
        if noise not in NOISE_MODELS:
            raise ValueError(f"unknown noise {noise!r}; choose one of {NOISE_MODELS}")
        if float(init_noise) <= 0:
            raise ValueError(f"init_noise must be positive, got {init_noise}")
        super().__init__(name=unique_name("ppca"))
        self.obs_dim, self.latent_dim, self.noise = int(obs_dim), int(latent_dim), noise
        init_w = torch.randn(self.obs_dim, self.latent_dim) / self.latent_dim**0.5
        self.weight = nn.Parameter(init_w)
        self.bias = nn.Parameter(torch.zeros(self.obs_dim))
        # softplus^-1(init_noise): the noise scale is softplus(raw) so it stays positive.
        raw = torch.log(torch.expm1(torch.tensor(float(init_noise))))
        width = self.obs_dim if noise == "diagonal" else 1
        self.raw_noise = nn.Parameter(raw.expand(width).clone())

    @classmethod
    def from_dataset(cls, dataset, **options):
        return cls(dataset.obs_dim, **options)

    def noise_scale(self) -> torch.Tensor:
        """Noise standard deviation per feature, shape ``(obs_dim,)``."""
        return softplus(self.raw_noise).expand(self.obs_dim)

    def marginal(self) -> dist.MultivariateNormal:
        """p(x) = N(b, W W^T + diag(noise^2)), event shape ``(obs_dim,)``."""
        w = self.weight
        cov = w @ w.T + torch.diag_embed(self.noise_scale() ** 2)
        return dist.MultivariateNormal(self.bias, covariance_matrix=cov)

    def exact_log_evidence(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x_i) for every row, shape ``(n,)``, in the parameters' dtype."""
        check_width(x, self.obs_dim, "PPCA")
        with torch.no_grad():
            return self.marginal().log_prob(x.to(self.weight.dtype))

    def forward(self, x: torch.Tensor):
        check_width(x, self.obs_dim, "PPCA")
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(()), x.new_ones(())).expand([self.latent_dim])
            z = pyro.sample("z", prior.to_event(1))
            loc = z @ self.weight.T + self.bias
            pyro.sample("x", dist.Normal(loc, self.noise_scale()).to_event(1), obs=x)
        return z


__all__ = ["PPCA"]
