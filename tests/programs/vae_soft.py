"""A VAE on grey levels in [0, 1], as Pyro's VAE example writes it for MNIST: a Bernoulli
likelihood built with ``validate_args=False`` scores the soft targets (a cross-entropy)."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

DATA_PLATE = "data"
ESTIMATORS = ("mc", "analytic", "score", "iwae", "stl")
ELBO_OPTIONS = {}
X_DIM, Z_DIM, HIDDEN = 12, 2, 8


def local_scale(num_data, batch_size):
    return num_data / batch_size


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(Z_DIM, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, X_DIM)

    def forward(self, z):
        return torch.sigmoid(self.fc2(torch.tanh(self.fc1(z))))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(X_DIM, HIDDEN)
        self.loc = nn.Linear(HIDDEN, Z_DIM)
        self.log_scale = nn.Linear(HIDDEN, Z_DIM)

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        return self.loc(h), torch.exp(self.log_scale(h))


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder()

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(x.shape[0], Z_DIM)
            z_scale = x.new_ones(x.shape[0], Z_DIM)
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            img = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(img, validate_args=False).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def make(dtype=torch.float32):
    vae = VAE().to(dtype)
    return vae.model, vae.guide


def data(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return (torch.rand(40, X_DIM, generator=g, dtype=dtype),)
