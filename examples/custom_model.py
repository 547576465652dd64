"""A latent model written from scratch as a plain Pyro program, trained with ``ppl_vae.fit``.

A "noisy sensor" model: each reading x_i (a 5-vector) comes from a 2-d latent state z_i through a
linear map W that is shared by all readings (a global parameter), with a global noise level
sigma that is itself a latent variable (a global latent, outside the data plate). The guide is
amortized for z_i (a small network reading x_i) and mean-field for log sigma.

    python examples/custom_model.py --epochs 200
"""

from __future__ import annotations

import argparse

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import ppl_vae

OBS, LATENT = 5, 2


def model(x):
    w = pyro.param("W", lambda: 0.1 * torch.randn(OBS, LATENT, dtype=x.dtype, device=x.device))
    log_sigma = pyro.sample("log_sigma", dist.Normal(x.new_tensor(0.0), x.new_tensor(1.0)))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(LATENT), 1.0).to_event(1))
        # unsqueeze: sigma is shared by the 5 features (the event dimension), also when
        # evaluate() draws a batch of log_sigma values in parallel.
        pyro.sample("x", dist.Normal(z @ w.T, log_sigma.exp().unsqueeze(-1)).to_event(1), obs=x)


encoder = nn.Sequential(nn.Linear(OBS, 32), nn.Tanh(), nn.Linear(32, 2 * LATENT))


def guide(x):
    pyro.module("encoder", encoder)
    loc = pyro.param("log_sigma_loc", lambda: x.new_tensor(0.0))
    scale = pyro.param("log_sigma_scale", lambda: x.new_tensor(0.1),
                       constraint=dist.constraints.positive)
    pyro.sample("log_sigma", dist.Normal(loc, scale))
    with pyro.plate("data", x.shape[0]):
        z_loc, z_log_scale = encoder(x).split(LATENT, dim=-1)
        pyro.sample("z", dist.Normal(z_loc, z_log_scale.exp()).to_event(1))


def simulate(n: int, sigma: float = 0.3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(OBS, LATENT, generator=g)
    z = torch.randn(n, LATENT, generator=g)
    return z @ w.T + sigma * torch.randn(n, OBS, generator=g)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--estimator", default="analytic")
    args = parser.parse_args(argv)

    x = simulate(args.n)
    result = ppl_vae.fit(model, guide, x, epochs=args.epochs, batch_size=256, lr=1e-2,
                         estimator=args.estimator, seed=0)
    print(result.history.tail(3).to_string(index=False))
    sigma = pyro.param("log_sigma_loc").exp().item()
    print(f"posterior median of the noise level sigma: {sigma:.3f} (simulated with 0.3)")
    print(ppl_vae.evaluate(model, guide, x, num_samples=50))
    return sigma


if __name__ == "__main__":
    main()
