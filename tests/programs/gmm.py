"""A Gaussian mixture as Pyro's GMM tutorial writes it: global weights and component locations
(MAP by ``AutoDelta`` over the blocked model), the assignment of each point enumerated in the
model and summed out by ``TraceEnum_ELBO``."""

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.infer.autoguide import AutoDelta

DATA_PLATE = "data"
ESTIMATORS = ("enum",)
ELBO_OPTIONS = {"max_plate_nesting": 1}
K = 2


def local_scale(num_data, batch_size):
    return num_data / batch_size


@config_enumerate
def model(x):
    weights = pyro.sample("weights", dist.Dirichlet(x.new_full((K,), 0.5)))
    scale = pyro.sample("scale", dist.LogNormal(x.new_zeros(()), 2.0))
    with pyro.plate("components", K):
        locs = pyro.sample("locs", dist.Normal(x.new_zeros(()), 10.0))
    with pyro.plate("data", len(x)):
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=x)


def make(dtype=torch.float32):
    guide = AutoDelta(poutine.block(model, expose=["weights", "locs", "scale"]))
    return model, guide


def data(dtype=torch.float32):
    g = torch.Generator().manual_seed(7)
    x = torch.cat([torch.randn(15, generator=g, dtype=dtype) - 3,
                   torch.randn(15, generator=g, dtype=dtype) + 3])
    return (x,)
