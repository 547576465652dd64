"""Amortized guide q(z | x, y) for label-conditioned models (Sohn, Lee & Yan 2015)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ppl_vae.models.conditional import label_one_hot
from ppl_vae.programs.nn import check_width, hidden_sizes, keeps_arguments, mlp, unique_name


class ConditionalEncoder(PyroModule):
    """Conditional encoder q(z | x, y): diagonal Normal from an MLP fed x and the one-hot label.

    Called as ``guide(x, y)``; site ``"z"`` ``(batch, latent_dim)`` in plate ``"data"``.

    Parameters
    ----------
    obs_dim, num_classes, latent_dim : int
    hidden : int or sequence of int
    min_scale : float
        Floor added to sigma.
    """

    @keeps_arguments
    def __init__(self, obs_dim: int, num_classes: int, latent_dim: int = 8, hidden=256,
                 min_scale: float = 1e-4):
        super().__init__(name=unique_name("conditional_encoder"))
        self.obs_dim, self.num_classes = int(obs_dim), int(num_classes)
        self.latent_dim, self.min_scale = int(latent_dim), min_scale
        sizes = (self.obs_dim + self.num_classes, *hidden_sizes(hidden), 2 * self.latent_dim)
        self.net = mlp(sizes)

    @classmethod
    def from_dataset(cls, dataset, **options):
        if dataset.num_classes is None:
            raise ValueError(f"ConditionalEncoder needs labelled data; {dataset.name!r} has none")
        return cls(dataset.obs_dim, dataset.num_classes, **options)

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(z | x, y), each ``(batch, latent_dim)``."""
        onehot = label_one_hot(y, self.num_classes, x, "ConditionalEncoder")
        loc, log_scale = self.net(torch.cat([x, onehot], -1)).split(self.latent_dim, dim=-1)
        return loc, log_scale.exp() + self.min_scale

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        check_width(x, self.obs_dim, "ConditionalEncoder")
        loc, scale = self.encode(x, y)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))


__all__ = ["ConditionalEncoder"]
