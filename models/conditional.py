"""The conditional VAE: a label-conditioned generative model (Sohn, Lee & Yan 2015; Kingma,
Rezende, Mohamed & Welling 2014, the "M2" model with observed labels)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.nn.functional import one_hot

from ppl_vae.programs.nn import check_width, hidden_sizes, keeps_arguments, mlp, unique_name

from ._common import LIKELIHOODS, likelihood


def label_one_hot(y: torch.Tensor, num_classes: int, like: torch.Tensor, who: str) -> torch.Tensor:
    """One-hot labels in ``like``'s dtype and device, shape ``(n, num_classes)``; ``ValueError``
    when ``y`` is not a vector of integers in ``[0, num_classes)`` with one entry per row."""
    if y.dim() != 1 or y.shape[0] != like.shape[0]:
        raise ValueError(f"{who}: labels y must have shape ({like.shape[0]},) (one per row of x), "
                         f"got {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{who}: labels y must be integers, got dtype {y.dtype}")
    bad = (y < 0) | (y >= num_classes)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()[:10].tolist()
        raise ValueError(f"{who}: labels must lie in [0, {num_classes}); rows {rows} do not")
    return one_hot(y, num_classes).to(dtype=like.dtype, device=like.device)


class ConditionalVAE(PyroModule):
    """Conditional VAE (Sohn et al. 2015): p(x | z, y) from an MLP fed z and the one-hot label.

    p(z) = N(0, I); the decoder sees z and the one-hot label y.

    Called as ``model(x, y)`` with integer labels ``y`` of shape ``(batch,)`` (on the CLI:
    ``--with-labels``). :meth:`sample` draws images of chosen labels.

    Sites: latent ``"z"`` ``(batch, latent_dim)``, observed ``"x"`` ``(batch, obs_dim)``, plate
    ``"data"``.

    Parameters
    ----------
    obs_dim : int
    num_classes : int
    latent_dim : int
    hidden : int or sequence of int
        Decoder hidden widths.
    likelihood : {"bernoulli", "normal", "continuous_bernoulli"}
    """

    @keeps_arguments
    def __init__(self, obs_dim: int, num_classes: int, latent_dim: int = 8, hidden=256,
                 likelihood: str = "bernoulli"):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        super().__init__(name=unique_name("conditional_vae"))
        self.obs_dim, self.num_classes = int(obs_dim), int(num_classes)
        self.latent_dim, self.likelihood = int(latent_dim), likelihood
        sizes = (self.latent_dim + self.num_classes, *hidden_sizes(hidden), self.obs_dim)
        self.decoder = mlp(sizes)
        self.log_scale = nn.Parameter(torch.zeros(self.obs_dim)) if likelihood == "normal" else None

    @classmethod
    def from_dataset(cls, dataset, **options):
        if dataset.num_classes is None:
            raise ValueError(f"ConditionalVAE needs labelled data; {dataset.name!r} has no labels")
        return cls(dataset.obs_dim, dataset.num_classes, **options)

    def decode(self, z: torch.Tensor, y_onehot: torch.Tensor) -> torch.Tensor:
        """Decoder output, shape ``(..., obs_dim)``; ``y_onehot`` broadcasts against z."""
        y_onehot = y_onehot.expand(*z.shape[:-1], self.num_classes)
        return self.decoder(torch.cat([z, y_onehot], dim=-1))

    def observation_dist(self, z, y_onehot):
        return likelihood(self.likelihood, self.decode(z, y_onehot), self.log_scale)

    @torch.no_grad()
    def sample(self, y: torch.Tensor) -> torch.Tensor:
        """Mean image of p(x | z, y) at z ~ p(z), one per label in ``y``; shape ``(n, obs_dim)``."""
        ref = next(self.decoder.parameters())
        onehot = label_one_hot(y, self.num_classes, ref.new_empty(y.shape[0], 0), "sample")
        z = torch.randn(y.shape[0], self.latent_dim, dtype=ref.dtype, device=ref.device)
        return self.observation_dist(z, onehot).mean

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        check_width(x, self.obs_dim, "ConditionalVAE")
        onehot = label_one_hot(y, self.num_classes, x, "ConditionalVAE")
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(()), x.new_ones(())).expand([self.latent_dim])
            z = pyro.sample("z", prior.to_event(1))
            pyro.sample("x", self.observation_dist(z, onehot), obs=x)
        return z


__all__ = ["ConditionalVAE", "label_one_hot"]
