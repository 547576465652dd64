"""Amortized diagonal-Normal guide with a convolutional encoder for images (Kingma & Welling
2014; strided convolutions as in Radford et al. 2016)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from ppl_vae.models.conv import check_image_shape
from ppl_vae.programs.nn import check_width, keeps_arguments, unique_name


class ConvEncoder(PyroModule):
    """Convolutional encoder: q(z | x) diagonal Normal from two stride-2 convolutions.

    Rows of ``x`` are flattened ``(height, width)`` images, height and width divisible by 4.
    Site ``"z"`` of shape ``(batch, latent_dim)`` in plate ``"data"``.

    Parameters
    ----------
    image_shape : (int, int)
    latent_dim : int
    channels : int
        Feature maps of the last convolution (half as many in the first).
    min_scale : float
        Floor added to sigma(x).
    """

    @keeps_arguments
    def __init__(self, image_shape, latent_dim: int = 16, channels: int = 32,
                 min_scale: float = 1e-4):
        h, w = check_image_shape(image_shape, "ConvEncoder")
        super().__init__(name=unique_name("conv_encoder"))
        self.image_shape, self.latent_dim, self.min_scale = (h, w), int(latent_dim), min_scale
        self.obs_dim, c = h * w, int(channels)
        self.conv = nn.Sequential(
            nn.Conv2d(1, c // 2, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c // 2, c, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(c * (h // 4) * (w // 4), 2 * self.latent_dim),
        )

    @classmethod
    def from_dataset(cls, dataset, **options):
        return cls(dataset.image_shape, **options)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(z | x), each ``(batch, latent_dim)``."""
        h, w = self.image_shape
        out = self.conv(x.reshape(-1, 1, h, w)).reshape(*x.shape[:-1], 2 * self.latent_dim)
        loc, log_scale = out.split(self.latent_dim, dim=-1)
        return loc, log_scale.exp() + self.min_scale

    def forward(self, x: torch.Tensor):
        check_width(x, self.obs_dim, "ConvEncoder")
        loc, scale = self.encode(x)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))


__all__ = ["ConvEncoder"]
