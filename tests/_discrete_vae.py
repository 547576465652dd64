"""A VAE with a binary code, written the way Pyro users write one (test helper): plain
``nn.Module``s registered with ``pyro.module``, a Bernoulli prior and guide on a 0/1 code (no
relaxation), and a Bernoulli likelihood on binarized images."""

import pyro
import pyro.distributions as dist
from torch import nn


class BinaryCodeVAE:
    def __init__(self, obs_dim=64, code=8, hidden=64):
        self.code = code
        self.decoder = nn.Sequential(nn.Linear(code, hidden), nn.Softplus(),
                                     nn.Linear(hidden, obs_dim))
        self.encoder = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Softplus(),
                                     nn.Linear(hidden, code))

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(x.new_full((self.code,), 0.5)).to_event(1))
            logits = self.decoder(z)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=self.encoder(x)).to_event(1))
