"""Sparse gamma deep exponential family (Ranganath, Tang, Charlin and Blei 2015), in the style of
Pyro's ``examples/sparse_gamma_def.py``: three layers of gamma-distributed latent units per data
point, gamma-distributed global weights between layers, Poisson counts.

The guide is mean field and not amortized: one pair of gamma parameters per data point and unit
(``pyro.param`` of shape ``(N, width)``, sized by ``x.shape[0]``) and one pair per weight. It is
trained on the whole data set at every step (``batch_size=N``), in the data's own row order, as
Pyro's example trains it; a mini-batch would meet parameters made for other rows, and ppl-vae
refuses it.

The sizes are a reduced Olivetti-faces setting (6 x 6 "images" of counts drawn from the model's
own prior), so that a test trains it in seconds: 8 x 5 + 5 x 4 + 4 x 36 = 204 global weights.
"""

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

DATA_PLATE = "data"
ESTIMATORS = ("mc",)
ELBO_OPTIONS = {}

TOP, MID, BOTTOM = 8, 5, 4
SIDE = 6
PIXELS = SIDE * SIDE
NUM_DATA = 32
# Prior hyperparameters: sparse units (shape 0.1) and sparse weights, as in the paper.
ALPHA_Z, BETA_Z, ALPHA_W, BETA_W = 0.1, 0.1, 0.1, 0.3
# Variational gamma shapes and means live above a floor: a gamma of tiny mean has exploding
# reparameterized gradients (Pyro's example clips its parameters after each step instead).
FLOOR = 1e-3


def local_scale(num_data, batch_size):
    return num_data / batch_size


def _weights(w, rows, cols):
    # (..., rows * cols) -> (..., rows, cols): a leading particle dimension, if any, stays put.
    return w.reshape(w.shape[:-1] + (rows, cols))


def model(x):
    a_w, b_w = x.new_tensor(ALPHA_W), x.new_tensor(BETA_W)
    a_z, b_z = x.new_tensor(ALPHA_Z), x.new_tensor(BETA_Z)
    with pyro.plate("w_top_plate", TOP * MID):
        w_top = pyro.sample("w_top", dist.Gamma(a_w, b_w))
    with pyro.plate("w_mid_plate", MID * BOTTOM):
        w_mid = pyro.sample("w_mid", dist.Gamma(a_w, b_w))
    with pyro.plate("w_bottom_plate", BOTTOM * PIXELS):
        w_bottom = pyro.sample("w_bottom", dist.Gamma(a_w, b_w))

    with pyro.plate("data", x.shape[0]):
        z_top = pyro.sample("z_top", dist.Gamma(a_z, b_z).expand([TOP]).to_event(1))
        mean_mid = z_top @ _weights(w_top, TOP, MID)
        z_mid = pyro.sample("z_mid", dist.Gamma(a_z, b_z / mean_mid).to_event(1))
        mean_bottom = z_mid @ _weights(w_mid, MID, BOTTOM)
        z_bottom = pyro.sample("z_bottom", dist.Gamma(a_z, b_z / mean_bottom).to_event(1))
        rate = z_bottom @ _weights(w_bottom, BOTTOM, PIXELS)
        pyro.sample("obs", dist.Poisson(rate).to_event(1), obs=x)


def _gamma_params(name, shape, like):
    """A variational gamma's shape and mean, initialised near 0.5 and softplus(0) as Pyro's
    example does, kept above FLOOR by their constraint."""
    init = lambda centre: (centre + 0.1 * torch.randn(shape, dtype=like.dtype)).to(like.device)  # noqa: E731
    positive = constraints.greater_than(FLOOR)
    alpha = pyro.param(f"alpha_{name}", lambda: torch.nn.functional.softplus(init(0.5)),
                       constraint=positive)
    mean = pyro.param(f"mean_{name}", lambda: torch.nn.functional.softplus(init(0.0)),
                      constraint=positive)
    return alpha, mean


def guide(x):
    for name, size, plate in (("w_top", TOP * MID, "w_top_plate"),
                              ("w_mid", MID * BOTTOM, "w_mid_plate"),
                              ("w_bottom", BOTTOM * PIXELS, "w_bottom_plate")):
        alpha, mean = _gamma_params(name, (size,), x)
        with pyro.plate(plate, size):
            pyro.sample(name, dist.Gamma(alpha, alpha / mean))
    # One set of parameters per data point: row i of each parameter is data point i's posterior.
    with pyro.plate("data", x.shape[0]):
        for name, width in (("z_top", TOP), ("z_mid", MID), ("z_bottom", BOTTOM)):
            alpha, mean = _gamma_params(name, (x.shape[0], width), x)
            pyro.sample(name, dist.Gamma(alpha, alpha / mean).to_event(1))


def make(dtype=torch.float32):
    return model, guide


def data(dtype=torch.float32):
    """Counts drawn from the model with its global weights fixed: ``(NUM_DATA, PIXELS)``.

    The weights are drawn from a denser gamma than the prior (shape 1): with the sparse prior's
    own draws almost every count is 0.
    """
    g = torch.Generator().manual_seed(3)
    gamma = lambda a, b, shape: torch._standard_gamma(torch.full(shape, a), generator=g) / b  # noqa: E731
    w_top, w_mid, w_bottom = gamma(1.0, 1.0, (TOP, MID)), gamma(1.0, 1.0, (MID, BOTTOM)), \
        gamma(1.0, 0.5, (BOTTOM, PIXELS))
    z_top = gamma(1.0, 1.0, (NUM_DATA, TOP))
    z_mid = gamma(1.0, 1.0 / (z_top @ w_top), (NUM_DATA, MID))
    z_bottom = gamma(1.0, 1.0 / (z_mid @ w_mid), (NUM_DATA, BOTTOM))
    x = torch.poisson(z_bottom @ w_bottom, generator=g)
    return (x.to(dtype),)


def load_data():
    """The data as the CLI's ``--data sparse_gamma_def.py:load_data`` reads it."""
    return data()[0]
