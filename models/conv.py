"""A convolutional VAE for images (Kingma & Welling 2014, with the transposed-convolution decoder
of Radford et al. 2016's DCGAN)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from ppl_vae.programs.nn import check_width, keeps_arguments, unique_name

from ._common import LIKELIHOODS, likelihood


def check_image_shape(image_shape, who: str) -> tuple[int, int]:
    """``(height, width)``, both divisible by 4 (two stride-2 stages), or ``ValueError``."""
    if image_shape is None or len(image_shape) != 2:
        raise ValueError(f"{who} needs image_shape=(height, width); got {image_shape!r} "
                         "(the data set has no image shape)")
    h, w = (int(s) for s in image_shape)
    if h % 4 or w % 4 or h < 4 or w < 4:
        raise ValueError(f"{who}: image_shape {image_shape} must have height and width "
                         "divisible by 4 (e.g. 8x8 digits, 28x28 MNIST)")
    return h, w


class ConvVAE(PyroModule):
    """Convolutional VAE: p(z) = N(0, I), p(x | z) from a transposed-convolution decoder.

    Rows of ``x`` are flattened ``(height, width)`` images (height and width divisible by 4:
    8x8 digits and 28x28 MNIST both work). The decoder maps z through a linear layer to a
    ``(channels, h/4, w/4)`` feature map and two stride-2 transposed convolutions to one logit
    (or mean) per pixel.

    Sites: latent ``"z"`` ``(batch, latent_dim)``, observed ``"x"`` ``(batch, h * w)``, plate
    ``"data"``.

    Parameters
    ----------
    image_shape : (int, int)
    latent_dim : int
    channels : int
        Feature maps of the first decoder stage (halved in the second).
    likelihood : {"bernoulli", "normal", "continuous_bernoulli"}
    """

    @keeps_arguments
    def __init__(self, image_shape, latent_dim: int = 16, channels: int = 32,
                 likelihood: str = "bernoulli"):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")
        h, w = check_image_shape(image_shape, "ConvVAE")
        super().__init__(name=unique_name("conv_vae"))
        self.image_shape, self.latent_dim, self.likelihood = (h, w), int(latent_dim), likelihood
        self.obs_dim, self.channels = h * w, int(channels)
        c = self.channels
        self.project = nn.Linear(self.latent_dim, c * (h // 4) * (w // 4))
        self.deconv = nn.Sequential(
            nn.ReLU(),
            nn.ConvTranspose2d(c, c // 2, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(c // 2, 1, kernel_size=4, stride=2, padding=1),
        )
        self.log_scale = nn.Parameter(torch.zeros(self.obs_dim)) if likelihood == "normal" else None

    @classmethod
    def from_dataset(cls, dataset, **options):
        return cls(dataset.image_shape, **options)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output per pixel, shape ``(..., h * w)`` for z of shape ``(..., latent_dim)``."""
        h, w = self.image_shape
        batch = z.shape[:-1]
        maps = self.project(z.reshape(-1, self.latent_dim))
        out = self.deconv(maps.reshape(-1, self.channels, h // 4, w // 4))
        return out.reshape(*batch, h * w)

    def observation_dist(self, z: torch.Tensor):
        return likelihood(self.likelihood, self.decode(z), self.log_scale)

    def forward(self, x: torch.Tensor):
        check_width(x, self.obs_dim, "ConvVAE")
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(()), x.new_ones(())).expand([self.latent_dim])
            z = pyro.sample("z", prior.to_event(1))
            pyro.sample("x", self.observation_dist(z), obs=x)
        return z


__all__ = ["ConvVAE", "check_image_shape"]
