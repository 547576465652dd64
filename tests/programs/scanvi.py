"""A semi-supervised single-cell model written the way scvi-tools writes its Pyro modules
(scANVI): counts x of G genes per cell, a cell-type label y known for some cells, a latent
state z2 per cell generated from a label y and a residual z1.

What makes it hard for a library, as in scANVI:

- every site of model and guide is scaled by ``poutine.scale(1 / (batch x genes))``, so the
  ELBO is in nats per count, not per cell;
- the guide's classifier q(y | z2) is trained on the labelled cells by a ``pyro.factor`` in
  the guide (masked to those cells, ``has_rsample=False`` as the label is discrete);
- the encoder drops units out (``nn.Dropout``), so training and evaluation modes differ.
"""

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

DATA_PLATE = "cells"
# The guide's factor has no rsample: Trace_ELBO trains it by the score function; the
# estimators whose math has no place for a guide factor refuse it by name.
ESTIMATORS = ("mc",)
ELBO_OPTIONS = {}
GENES, CLASSES, Z1, Z2, HIDDEN = 12, 3, 2, 3, 16
ALPHA = 5.0  # weight of the classifier term, as scANVI's alpha


def local_scale(num_data, batch_size):
    # The program's own 1 / (B x G), times the library's N / B.
    return num_data / batch_size / (batch_size * GENES)


class SCANVI(nn.Module):
    def __init__(self):
        super().__init__()
        self.z2_decoder = nn.Linear(Z1 + CLASSES, 2 * Z2)
        self.x_decoder = nn.Linear(Z2, GENES)
        self.inverse_dispersion = nn.Parameter(torch.full((GENES,), 2.0))
        self.z2_encoder = nn.Sequential(nn.Linear(GENES, HIDDEN), nn.Softplus(), nn.Dropout(0.1),
                                        nn.Linear(HIDDEN, 2 * Z2))
        self.classifier = nn.Linear(Z2, CLASSES)
        self.z1_encoder = nn.Linear(Z2 + CLASSES, 2 * Z1)

    def model(self, x, label):
        pyro.module("scanvi", self)
        scale = 1.0 / (x.shape[0] * x.shape[1])
        with pyro.plate("cells", x.shape[0]), poutine.scale(scale=scale):
            z1 = pyro.sample("z1", dist.Normal(x.new_zeros(Z1), 1.0).to_event(1))
            y = pyro.sample("y", dist.OneHotCategorical(logits=x.new_zeros(CLASSES)))
            loc, log_scale = self.z2_decoder(torch.cat([z1, y], -1)).chunk(2, -1)
            z2 = pyro.sample("z2", dist.Normal(loc, log_scale.exp()).to_event(1))
            library = x.sum(-1, keepdim=True)
            mu = library * F.softmax(self.x_decoder(z2), -1)
            theta = F.softplus(self.inverse_dispersion)
            pyro.sample("x", dist.NegativeBinomial(theta, logits=mu.log() - theta.log())
                        .to_event(1), obs=x)

    def guide(self, x, label):
        pyro.module("scanvi", self)
        scale = 1.0 / (x.shape[0] * x.shape[1])
        with pyro.plate("cells", x.shape[0]), poutine.scale(scale=scale):
            loc, log_scale = self.z2_encoder(x.log1p()).chunk(2, -1)
            z2 = pyro.sample("z2", dist.Normal(loc, log_scale.exp()).to_event(1))
            y_dist = dist.OneHotCategorical(logits=self.classifier(z2))
            y = pyro.sample("y", y_dist)
            labelled = label >= 0
            with poutine.mask(mask=labelled):
                observed = F.one_hot(label.clamp(min=0), CLASSES).to(x.dtype)
                pyro.factor("classification_loss", -ALPHA * y_dist.log_prob(observed),
                            has_rsample=False)
            loc, log_scale = self.z1_encoder(torch.cat([z2, y], -1)).chunk(2, -1)
            pyro.sample("z1", dist.Normal(loc, log_scale.exp()).to_event(1))


def make(dtype=torch.float32):
    scanvi = SCANVI().to(dtype)
    return scanvi.model, scanvi.guide


def data(dtype=torch.float32):
    g = torch.Generator().manual_seed(20)
    n = 40
    label = torch.randint(0, CLASSES, (n,), generator=g)
    profiles = torch.softmax(2 * torch.randn(CLASSES, GENES, generator=g, dtype=dtype), -1)
    library = torch.randint(20, 60, (n,), generator=g).to(dtype)
    rate = library[:, None] * profiles[label]
    x = torch.poisson(rate, generator=g)
    label = torch.where(torch.arange(n) % 2 == 0, label, torch.full_like(label, -1))
    return x, label
