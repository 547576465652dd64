"""A VAE with global latent variables beside the amortized local ones: a Bayesian offset and noise
scale shared by the whole data set (the global/local split of Hoffman, Blei, Wang & Paisley 2013's
stochastic variational inference, with amortized local posteriors as in Kingma & Welling 2014)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from ppl_vae.programs.nn import check_width, hidden_sizes, keeps_arguments, mlp, unique_name


class GlobalLocalVAE(PyroModule):
    """VAE with global latents: offset b and noise sigma shared by all points, local z_i.

    b ~ N(0, s_b^2 I), sigma ~ LogNormal(0, 1) (global); z_i ~ N(0, I),
    x_i ~ N(f(z_i) + b, sigma^2 I) (local).

    The global latents live outside the data plate, so mini-batch training scales only the
    local terms (N / batch size) and leaves the global KL at full weight. Pair it with
    ``GlobalLocalGuide`` (CLI) or ``guides.combined.LocalGlobalGuide(model, MLPEncoder(...))``
    (an amortized q(z | x) plus an AutoNormal over ``"b"`` and ``"sigma"``).

    Sites: global ``"b"`` ``(obs_dim,)`` and ``"sigma"`` ``()``; latent ``"z"``
    ``(batch, latent_dim)`` and observed ``"x"`` ``(batch, obs_dim)`` in plate ``"data"``.

    Parameters
    ----------
    obs_dim, latent_dim : int
    hidden : int or sequence of int
        Decoder f hidden widths; ``()`` makes f linear (Bayesian-offset PPCA).
    offset_scale : float
        s_b, the prior scale of the offset.
    """

    @keeps_arguments
    def __init__(self, obs_dim: int, latent_dim: int = 2, hidden=64, offset_scale: float = 10.0):
        if float(offset_scale) <= 0:
            raise ValueError(f"offset_scale must be positive, got {offset_scale}")
        super().__init__(name=unique_name("global_local_vae"))
        self.obs_dim, self.latent_dim = int(obs_dim), int(latent_dim)
        self.offset_scale = float(offset_scale)
        sizes = (self.latent_dim, *hidden_sizes(hidden), self.obs_dim)
        self.decoder = mlp(sizes)
        # The global offset b is the output bias: a second, deterministic one would make b
        # unidentifiable (only their sum matters).
        self.decoder[-1] = nn.Linear(sizes[-2], sizes[-1], bias=False)

    @classmethod
    def from_dataset(cls, dataset, **options):
        return cls(dataset.obs_dim, **options)

    def forward(self, x: torch.Tensor):
        check_width(x, self.obs_dim, "GlobalLocalVAE")
        zero, one = x.new_zeros(()), x.new_ones(())
        b = pyro.sample("b", dist.Normal(zero, x.new_tensor(self.offset_scale))
                        .expand([self.obs_dim]).to_event(1))
        sigma = pyro.sample("sigma", dist.LogNormal(zero, one))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(zero, one).expand([self.latent_dim]).to_event(1))
            # sigma has batch shape (K, 1) under K vectorized draws: add the event dim for x.
            scale = sigma[..., None].expand(*sigma.shape, self.obs_dim)
            pyro.sample("x", dist.Normal(self.decoder(z) + b, scale).to_event(1), obs=x)
        return z


__all__ = ["GlobalLocalVAE"]
