"""A conditional VAE as Pyro's CVAE example writes it: the input is an image with a quadrant
hidden (-1), the output the whole image; the likelihood scores only the hidden pixels, picked
with a boolean mask, ``loc[(xs == -1)].view(batch_size, -1)``. Boolean indexing flattens every
dimension the mask covers, so the program cannot broadcast over an extra draw dimension: its
draws are taken one by one."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

DATA_PLATE = "data"
ESTIMATORS = ("mc", "analytic")
ELBO_OPTIONS = {}
SIDE, Z_DIM, HIDDEN = 4, 2, 8
PIXELS = SIDE * SIDE


def local_scale(num_data, batch_size):
    return num_data / batch_size


class CVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.prior_net = nn.Sequential(nn.Linear(PIXELS, HIDDEN), nn.ReLU(),
                                       nn.Linear(HIDDEN, 2 * Z_DIM))
        self.generation_net = nn.Sequential(nn.Linear(Z_DIM, HIDDEN), nn.ReLU(),
                                            nn.Linear(HIDDEN, PIXELS), nn.Sigmoid())
        self.recognition_net = nn.Sequential(nn.Linear(2 * PIXELS, HIDDEN), nn.ReLU(),
                                             nn.Linear(HIDDEN, 2 * Z_DIM))

    def model(self, xs, ys):
        pyro.module("generation_net", self)
        batch_size = xs.shape[0]
        with pyro.plate("data"):
            out = self.prior_net(xs)
            z = pyro.sample("z", dist.Normal(out[..., :Z_DIM], out[..., Z_DIM:].exp())
                            .to_event(1))
            loc = self.generation_net(z)
            hidden = xs == -1
            mask_loc = loc[hidden].view(batch_size, -1)
            mask_ys = ys[hidden].view(batch_size, -1)
            pyro.sample("y", dist.Bernoulli(mask_loc, validate_args=False).to_event(1),
                        obs=mask_ys)

    def guide(self, xs, ys):
        with pyro.plate("data"):
            out = self.recognition_net(torch.cat([xs, ys], -1))
            pyro.sample("z", dist.Normal(out[..., :Z_DIM], out[..., Z_DIM:].exp()).to_event(1))


def make(dtype=torch.float32):
    module = CVAE().to(dtype)
    return module.model, module.guide


def data(dtype=torch.float32):
    g = torch.Generator().manual_seed(6)
    ys = (torch.rand(20, SIDE, SIDE, generator=g, dtype=dtype) > 0.5).to(dtype)
    xs = ys.clone()
    xs[:, SIDE // 2:, SIDE // 2:] = -1  # the lower-right quadrant is hidden
    return xs.reshape(20, PIXELS), ys.reshape(20, PIXELS)
