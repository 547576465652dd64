"""Known-answer cases for the diagnostics tests: a conjugate linear-Gaussian model whose
posterior is known in closed form, and a small custom model with a global latent.

Model: z_i ~ N(0, I_2), x_i | z_i ~ N(W z_i, sigma^2 I_3) with W = [[2, 0], [0, 0], [0, 0]].
W's columns are orthogonal, so the posterior is diagonal: dimension 0 has variance
1 / (1 + 4 / sigma^2) and mean 2 x_i0 / (sigma^2 + 4); dimension 1 is not in the likelihood
(its column is zero), so its posterior is the prior: a collapsed unit by construction.
"""

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam

from ppl_vae.programs.nn import unique_name

SIGMA = 1.0


def weights(dtype=torch.float64):
    w = torch.zeros(3, 2, dtype=dtype)
    w[0, 0] = 2.0
    return w


def model(x):
    w = weights(x.dtype)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(2), x.new_ones(2)).to_event(1))
        pyro.sample("x", dist.Normal(z @ w.T, SIGMA).to_event(1), obs=x)


def posterior(x):
    """Exact posterior mean (N, 2) and standard deviation (2,)."""
    w = weights(x.dtype)
    prec = 1.0 + (w**2).sum(0) / SIGMA**2
    return (x @ w) / SIGMA**2 / prec, prec.rsqrt()


def make_guide(width=1.0, shift=0.0):
    """q(z | x) = N(mu(x) + shift, (width * sd)^2): the exact posterior at width 1, shift 0."""

    def guide(x):
        loc, sd = posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc + shift, width * sd).to_event(1))

    return guide


def simulate(n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g, dtype=dtype)
    return z @ weights(dtype).T + SIGMA * torch.randn(n, 3, generator=g, dtype=dtype)


def exact_mutual_information():
    """I(x; z) of the Gaussian channel: 0.5 log(1 + 4 / sigma^2) nats (only dimension 0)."""
    return 0.5 * math.log(1 + 4 / SIGMA**2)


# A user's custom model with a global latent: x_ij = mu + z_i + noise, mu shared by all rows.
def global_model(x):
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), x.new_ones(()) * 3.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(()), x.new_ones(())))
        loc = (mu + z).unsqueeze(-1)
        loc = loc.expand(loc.shape[:-1] + x.shape[-1:])
        pyro.sample("x", dist.Normal(loc, 0.5).to_event(1), obs=x)


class GlobalGuide(PyroModule):
    """q(mu) = N(loc, scale) (global), q(z_i | x_i) = N(a (mean(x_i) - mu), s) (amortized)."""

    def __init__(self, loc=0.0):
        super().__init__(name=unique_name("global_guide"))
        self.loc = PyroParam(torch.tensor(float(loc)))
        self.scale = PyroParam(torch.tensor(0.5), constraint=dist.constraints.positive)
        self.a = PyroParam(torch.tensor(0.5))
        self.s = PyroParam(torch.tensor(0.5), constraint=dist.constraints.positive)

    def forward(self, x):
        mu = pyro.sample("mu", dist.Normal(self.loc, self.scale))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.a * (x.mean(-1) - mu), self.s))


def global_data(n=40, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, generator=g, dtype=dtype)
    return 1.5 + z + 0.5 * torch.randn(n, 4, generator=g, dtype=dtype)
