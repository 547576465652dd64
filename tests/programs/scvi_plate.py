"""A count model written the way scvi-tools writes its Pyro modules: an ``nn.Module`` (like
``PyroBaseModuleClass``) with ``model`` and ``guide`` methods, the cells plate sized by the
number of cells the module was built for and subsampled to the mini-batch it is handed:
``pyro.plate("cells", size=n_obs, subsample_size=x.shape[0])``. Pyro then scales the cells'
terms by n_obs / batch itself; the indices it draws are not used (the batch is the subsample).
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

DATA_PLATE = "cells"
ESTIMATORS = ("mc", "analytic")
ELBO_OPTIONS = {}
N_GENES, N_LATENT, HIDDEN = 6, 2, 8
N_CELLS = 30


def local_scale(num_data, batch_size):
    # Pyro's n_obs / B; ppl-vae adds N / n_obs = 1.
    return num_data / batch_size


class CountModule(nn.Module):
    """Poisson counts with a log-normal library size, decoded from a cell's latent state."""

    def __init__(self, n_obs: int):
        super().__init__()
        self.n_obs = n_obs
        self.decoder = nn.Sequential(nn.Linear(N_LATENT, HIDDEN), nn.Softplus(),
                                     nn.Linear(HIDDEN, N_GENES), nn.Softmax(-1))
        self.encoder = nn.Sequential(nn.Linear(N_GENES, HIDDEN), nn.Softplus(),
                                     nn.Linear(HIDDEN, 2 * N_LATENT))

    def model(self, x):
        pyro.module("scvi", self)
        with pyro.plate("cells", size=self.n_obs, subsample_size=x.shape[0]):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(N_LATENT), 1.0).to_event(1))
            library = x.sum(-1, keepdim=True)
            rate = self.decoder(z) * library
            pyro.sample("obs", dist.Poisson(rate).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("scvi", self)
        with pyro.plate("cells", size=self.n_obs, subsample_size=x.shape[0]):
            out = self.encoder(torch.log1p(x))
            loc, log_scale = out[..., :N_LATENT], out[..., N_LATENT:]
            pyro.sample("latent", dist.Normal(loc, log_scale.exp()).to_event(1))


def make(dtype=torch.float32):
    module = CountModule(N_CELLS).to(dtype)
    return module.model, module.guide


def data(dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    rates = torch.rand(N_CELLS, N_GENES, generator=g, dtype=torch.float64) * 5 + 0.5
    return (torch.poisson(rates, generator=g).to(dtype),)
