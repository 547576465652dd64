"""Bayesian linear regression as Pyro's introductory tutorial writes it: a ``PyroModule`` with
``PyroSample`` priors on its weights, a noise scale, and an autoguide over all the globals."""

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoDiagonalNormal, AutoLowRankMultivariateNormal
from pyro.nn import PyroModule, PyroSample

DATA_PLATE = "data"
ESTIMATORS = ("mc", "analytic", "score", "iwae", "stl")
ELBO_OPTIONS = {}
GUIDES = {"diagonal": AutoDiagonalNormal, "low_rank": AutoLowRankMultivariateNormal}


def local_scale(num_data, batch_size):
    return num_data / batch_size


class BayesianRegression(PyroModule):
    def __init__(self, in_features, out_features=1, dtype=torch.float32):
        super().__init__()
        zero = torch.zeros((), dtype=dtype)  # the priors' dtype is the data's
        self.linear = PyroModule[torch.nn.Linear](in_features, out_features)
        self.linear.weight = PyroSample(
            dist.Normal(zero, 1.0).expand([out_features, in_features]).to_event(2))
        self.linear.bias = PyroSample(dist.Normal(zero, 10.0).expand([out_features]).to_event(1))

    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.Uniform(x.new_zeros(()), 10.0))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
        return mean


def make(dtype=torch.float32, guide="diagonal"):
    model = BayesianRegression(3, dtype=dtype)
    return model, GUIDES[guide](model)


def data(dtype=torch.float32):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 3, generator=g, dtype=dtype)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=dtype) + 0.3 + 0.5 * torch.randn(
        40, generator=g, dtype=dtype)
    return x, y
