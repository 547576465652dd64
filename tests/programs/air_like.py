"""Guide-side subsampling as Pyro's AIR example writes it: the guide subsamples the data plate
(``pyro.plate("data", N, subsample_size=b)``) and indexes its batch, the model declares the
plate over all rows and is replayed on the guide's indices (``with pyro.plate("data",
len(x)) as ix: batch = x[ix]``). Here with a Gaussian latent per image and a global
observation noise (MAP)."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

DATA_PLATE = "data"
ESTIMATORS = ("mc",)
ELBO_OPTIONS = {}
X_DIM, Z_DIM, HIDDEN, SUBSAMPLE = 5, 2, 8, 4


def local_scale(num_data, batch_size):
    # Pyro's B / SUBSAMPLE (the guide's subsample, replayed by the model) times ppl-vae's N / B.
    return num_data / SUBSAMPLE


class AIRLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.decode = nn.Sequential(nn.Linear(Z_DIM, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, X_DIM))
        self.encode = nn.Sequential(nn.Linear(X_DIM, HIDDEN), nn.Tanh(),
                                    nn.Linear(HIDDEN, 2 * Z_DIM))

    def model(self, x):
        pyro.module("decode", self.decode)
        noise = pyro.param("noise", x.new_tensor(1.0), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]) as ix:
            batch = x[ix]
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(batch), Z_DIM), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(self.decode(z), noise).to_event(1), obs=batch)

    def guide(self, x):
        pyro.module("encode", self.encode)
        with pyro.plate("data", x.shape[0], subsample_size=SUBSAMPLE) as ix:
            out = self.encode(x[ix])
            pyro.sample("z", dist.Normal(out[..., :Z_DIM], out[..., Z_DIM:].exp()).to_event(1))


def make(dtype=torch.float32):
    module = AIRLike().to(dtype)
    return module.model, module.guide


def data(dtype=torch.float32):
    g = torch.Generator().manual_seed(4)
    return (torch.randn(24, X_DIM, generator=g, dtype=dtype),)
