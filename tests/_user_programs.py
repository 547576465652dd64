"""Programs written the way Pyro's tutorials write them, for the evaluation stage: a Bayesian
regression whose weights are sampled into an ``nn.Linear`` (it cannot broadcast over an extra
draw dimension), and a hierarchical model that subsamples its own data plate."""

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroSample

N_POINTS, SUBSAMPLE = 30, 8


class BayesianRegression(PyroModule):
    """y ~ Normal(w . x + b, sigma) with Normal priors on w, b and a Uniform one on sigma."""

    def __init__(self, in_features=3):
        super().__init__()
        self.linear = PyroModule[torch.nn.Linear](in_features, 1)
        self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, in_features]).to_event(2))
        self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([1]).to_event(1))

    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
        return mean


def regression_data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 + 0.5 * torch.randn(n, generator=g)
    return x, y


def subsampled_model(x):
    """A global location, one local effect per point, and a plate that picks its own
    mini-batch of SUBSAMPLE of the N_POINTS rows of ``x`` (Pyro's SVI tutorial, part II)."""
    loc = pyro.sample("loc", dist.Normal(0.0, 3.0))
    with pyro.plate("data", N_POINTS, subsample_size=SUBSAMPLE) as ind:
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        pyro.sample("obs", dist.Normal(z, 0.5), obs=x[ind])


def subsampled_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return 1.5 + 1.1 * torch.randn(N_POINTS, generator=g)
