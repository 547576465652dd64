"""A semi-supervised VAE in the style of Pyro's SS-VAE example: a size-less ``pyro.plate("data")``
(its size comes from the tensors), a digit label ``y`` observed when it is given and otherwise
drawn by a classifier in the guide, marked for enumeration."""

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

DATA_PLATE = "data"
# enum sums the unobserved label out; mc and score draw it (a score-function term).
ESTIMATORS = ("enum", "mc", "score")
ELBO_OPTIONS = {"max_plate_nesting": 1}
X_DIM, Y_DIM, Z_DIM, HIDDEN = 10, 3, 2, 8


def local_scale(num_data, batch_size):
    return num_data / batch_size


def _cat(a, b):
    """Concatenate features, broadcasting the batch dimensions (the enumerated label has an
    extra dimension on the left)."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(shape + a.shape[-1:]), b.expand(shape + b.shape[-1:])], -1)


class SSVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.decoder = nn.Sequential(nn.Linear(Z_DIM + Y_DIM, HIDDEN), nn.Softplus(),
                                     nn.Linear(HIDDEN, X_DIM), nn.Sigmoid())
        self.encoder_y = nn.Sequential(nn.Linear(X_DIM, HIDDEN), nn.Softplus(),
                                       nn.Linear(HIDDEN, Y_DIM))
        self.encoder_z = nn.Sequential(nn.Linear(X_DIM + Y_DIM, HIDDEN), nn.Softplus(),
                                       nn.Linear(HIDDEN, 2 * Z_DIM))

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        batch_size = xs.size(0)
        with pyro.plate("data"):
            prior_loc = xs.new_zeros(batch_size, Z_DIM)
            prior_scale = xs.new_ones(batch_size, Z_DIM)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            alpha_prior = xs.new_ones(batch_size, Y_DIM) / Y_DIM
            ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior), obs=ys)
            loc = self.decoder(_cat(zs, ys))
            pyro.sample("x", dist.Bernoulli(loc, validate_args=False).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                alpha = F.softmax(self.encoder_y(xs), dim=-1)
                ys = pyro.sample("y", dist.OneHotCategorical(alpha),
                                 infer={"enumerate": "parallel"})
            out = self.encoder_z(_cat(xs, ys))
            loc, log_scale = out.split(Z_DIM, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def make(dtype=torch.float32):
    vae = SSVAE().to(dtype)
    return vae.model, vae.guide


def data(dtype=torch.float32):
    g = torch.Generator().manual_seed(2)
    return (torch.rand(30, X_DIM, generator=g, dtype=dtype),)
