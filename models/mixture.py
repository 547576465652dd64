"""A VAE with a Gaussian-mixture prior whose component is summed out by enumeration (the
GMVAE of Dilokthanakul et al. 2016; mixture priors as in Johnson et al. 2016)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.nn.functional import softplus

from ppl_vae.programs.nn import check_width, hidden_sizes, keeps_arguments, mlp, unique_name

from ._common import LIKELIHOODS, likelihood


class MixturePriorVAE(PyroModule):
    """VAE with a Gaussian-mixture prior (GMVAE); the component is enumerated (use "enum").

    c ~ Categorical(pi), z | c ~ N(m_c, diag s_c^2), x | z from an MLP decoder.

    The component ``"c"`` is marked for parallel enumeration, so the ``"enum"`` estimator
    (Pyro's ``TraceEnum_ELBO``) sums it out exactly and the guide only needs q(z | x) (for
    example ``MLPEncoder``). :meth:`prior` gives the same marginal p(z) as a
    ``MixtureSameFamily``; with ``enumerate=False`` the model samples z from it directly (the same
    model, no discrete site), which every estimator and ``evaluate`` handle exactly (``evaluate``
    scores an enumerated site at a draw from its prior: a valid but looser bound).

    Sites: enumerated ``"c"`` ``(batch,)`` (only with ``enumerate=True``), latent ``"z"``
    ``(batch, latent_dim)``, observed ``"x"`` ``(batch, obs_dim)``, plate ``"data"``.

    Parameters
    ----------
    obs_dim : int
    latent_dim : int
    num_components : int
    hidden : int or sequence of int
        Decoder hidden widths.
    likelihood : {"bernoulli", "normal", "continuous_bernoulli"}
    enumerate : bool
        Sample the component ``"c"`` as an enumerated site (default) or use the marginal prior.
    """

    @keeps_arguments
    def __init__(self, obs_dim: int, latent_dim: int = 8, num_components: int = 10, hidden=256,
                 likelihood: str = "bernoulli", enumerate: bool = True):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")
        if int(num_components) < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}")
        super().__init__(name=unique_name("mixture_vae"))
        self.obs_dim, self.latent_dim, self.likelihood = int(obs_dim), int(latent_dim), likelihood
        self.num_components, self.enumerate = int(num_components), bool(enumerate)
        self.decoder = mlp((self.latent_dim, *hidden_sizes(hidden), self.obs_dim))
        self.logits = nn.Parameter(torch.zeros(self.num_components))
        # Spread the component means so that they start distinguishable (symmetric init would
        # keep every component identical under gradient descent).
        self.means = nn.Parameter(2.0 * torch.randn(self.num_components, self.latent_dim))
        self.raw_scales = nn.Parameter(torch.zeros(self.num_components, self.latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(self.obs_dim)) if likelihood == "normal" else None

    @classmethod
    def from_dataset(cls, dataset, **options):
        return cls(dataset.obs_dim, **options)

    def component_scales(self) -> torch.Tensor:
        """Standard deviations s_c, shape ``(num_components, latent_dim)``."""
        return softplus(self.raw_scales) + 1e-3

    def prior(self) -> dist.MixtureSameFamily:
        """The marginal p(z) = sum_c pi_c N(z; m_c, s_c^2), event shape ``(latent_dim,)``."""
        comp = dist.Normal(self.means, self.component_scales()).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), comp)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def observation_dist(self, z: torch.Tensor):
        return likelihood(self.likelihood, self.decode(z), self.log_scale)

    def forward(self, x: torch.Tensor):
        check_width(x, self.obs_dim, "MixturePriorVAE")
        with pyro.plate("data", x.shape[0]):
            if self.enumerate:
                c = pyro.sample("c", dist.Categorical(logits=self.logits),
                                infer={"enumerate": "parallel"})
                # Under enumeration c has shape (num_components, 1): indexing broadcasts over it.
                z_given_c = dist.Normal(self.means[c], self.component_scales()[c]).to_event(1)
                z = pyro.sample("z", z_given_c)
            else:
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.observation_dist(z), obs=x)
        return z


__all__ = ["MixturePriorVAE"]
