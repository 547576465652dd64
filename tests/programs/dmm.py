"""A deep Markov model in the style of Pyro's DMM example: a latent chain over time steps
(``pyro.markov``), gated transitions and emissions, a GRU over the reversed sequence in the guide.
Its plate over sequences is called ``"sequences"``, not ``"data"``."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

DATA_PLATE = "sequences"
ESTIMATORS = ("mc", "analytic", "score", "iwae", "stl")
ELBO_OPTIONS = {}
X_DIM, Z_DIM, HIDDEN, T = 3, 2, 6, 4


def local_scale(num_data, batch_size):
    return num_data / batch_size


class DMM(nn.Module):
    def __init__(self):
        super().__init__()
        self.trans = nn.Sequential(nn.Linear(Z_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2 * Z_DIM))
        self.emit = nn.Sequential(nn.Linear(Z_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, X_DIM))
        self.rnn = nn.GRU(X_DIM, HIDDEN, batch_first=True)
        self.combiner = nn.Linear(HIDDEN + Z_DIM, 2 * Z_DIM)
        self.z_0 = nn.Parameter(torch.zeros(Z_DIM))
        self.z_q_0 = nn.Parameter(torch.zeros(Z_DIM))

    def model(self, sequences):
        pyro.module("dmm", self)
        z_prev = self.z_0.expand(sequences.size(0), Z_DIM)
        with pyro.plate("sequences", sequences.size(0)):
            for t in pyro.markov(range(sequences.size(1))):
                loc, log_scale = self.trans(z_prev).split(Z_DIM, -1)
                z_t = pyro.sample(f"z_{t + 1}", dist.Normal(loc, log_scale.exp()).to_event(1))
                x_loc = self.emit(z_t)
                pyro.sample(f"obs_x_{t + 1}", dist.Normal(x_loc, 0.5).to_event(1),
                            obs=sequences[:, t])
                z_prev = z_t

    def guide(self, sequences):
        pyro.module("dmm", self)
        rnn_output, _ = self.rnn(torch.flip(sequences, [1]))
        rnn_output = torch.flip(rnn_output, [1])
        z_prev = self.z_q_0.expand(sequences.size(0), Z_DIM)
        with pyro.plate("sequences", sequences.size(0)):
            for t in pyro.markov(range(sequences.size(1))):
                h = torch.cat([rnn_output[:, t], z_prev], -1)
                loc, log_scale = self.combiner(h).split(Z_DIM, -1)
                z_prev = pyro.sample(f"z_{t + 1}", dist.Normal(loc, log_scale.exp()).to_event(1))


def make(dtype=torch.float32):
    dmm = DMM().to(dtype)
    return dmm.model, dmm.guide


def data(dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    steps = torch.randn(24, T, X_DIM, generator=g, dtype=dtype)
    return (steps.cumsum(1) * 0.5,)
