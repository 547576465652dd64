"""Logistic regression that subsamples its own plate, as Pyro's SVI tutorials on big data write
it (``pyro.plate("data", len(x), subsample_size=...)``), with ``AutoNormal``: Pyro scales the
likelihood by len(x) / subsample_size itself."""

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoNormal

DATA_PLATE = "data"
ESTIMATORS = ("mc", "analytic", "score", "iwae", "stl")
ELBO_OPTIONS = {}
SUBSAMPLE = 8


def local_scale(num_data, batch_size):
    # ppl-vae's N / B on top of Pyro's B / SUBSAMPLE.
    return num_data / SUBSAMPLE


def model(x, y):
    coef = pyro.sample("coef", dist.Normal(x.new_zeros(x.shape[1]), 1.0).to_event(1))
    bias = pyro.sample("bias", dist.Normal(x.new_zeros(()), 5.0))
    with pyro.plate("data", x.shape[0], subsample_size=SUBSAMPLE) as idx:
        logits = x[idx] @ coef + bias
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y[idx])


def make(dtype=torch.float32):
    return model, AutoNormal(model)


def data(dtype=torch.float32):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(48, 2, generator=g, dtype=dtype)
    y = torch.bernoulli(torch.sigmoid(x @ torch.tensor([2.0, -1.0], dtype=dtype)), generator=g)
    return x, y
