"""A topic model in the style of Pyro's ProdLDA tutorial: per document a logistic-normal topic
mixture, a product of experts over words, and word counts with a Multinomial likelihood. As in
the tutorial, the encoder drops units out and the decoder batch-normalizes its logits (so draws
do not vectorize over an extra plate: ``BatchNorm1d`` reads dimension 1 as channels)."""

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

DATA_PLATE = "documents"
ESTIMATORS = ("mc", "analytic", "score", "iwae", "stl")
ELBO_OPTIONS = {}
VOCAB, TOPICS, HIDDEN = 15, 3, 8


def local_scale(num_data, batch_size):
    return num_data / batch_size


class ProdLDA(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(VOCAB, HIDDEN), nn.Softplus(), nn.Dropout(0.2))
        self.fc_mu = nn.Linear(HIDDEN, TOPICS)
        self.fc_lv = nn.Linear(HIDDEN, TOPICS)
        self.beta = nn.Linear(TOPICS, VOCAB, bias=False)
        self.bn = nn.BatchNorm1d(VOCAB, affine=False)

    def model(self, docs):
        pyro.module("decoder", nn.ModuleList([self.beta, self.bn]))
        with pyro.plate("documents", docs.shape[0]):
            logtheta_loc = docs.new_zeros((docs.shape[0], TOPICS))
            logtheta_scale = docs.new_ones((docs.shape[0], TOPICS))
            logtheta = pyro.sample("logtheta",
                                   dist.Normal(logtheta_loc, logtheta_scale).to_event(1))
            theta = F.softmax(logtheta, -1)
            count_param = F.softmax(self.bn(self.beta(theta)), -1)
            total_count = int(docs.sum(-1).max())
            pyro.sample("obs", dist.Multinomial(total_count, count_param), obs=docs)

    def guide(self, docs):
        pyro.module("encoder", self)
        with pyro.plate("documents", docs.shape[0]):
            h = self.encoder(docs)
            logtheta_loc = self.fc_mu(h)
            logtheta_scale = (0.5 * self.fc_lv(h)).exp()
            pyro.sample("logtheta", dist.Normal(logtheta_loc, logtheta_scale).to_event(1))


def make(dtype=torch.float32):
    lda = ProdLDA().to(dtype)
    return lda.model, lda.guide


def data(dtype=torch.float32):
    g = torch.Generator().manual_seed(6)
    topics = torch.softmax(3 * torch.randn(TOPICS, VOCAB, generator=g, dtype=dtype), -1)
    mix = torch.softmax(torch.randn(30, TOPICS, generator=g, dtype=dtype), -1)
    lengths = torch.randint(8, 20, (30,), generator=g)
    docs = torch.stack([torch.multinomial(m @ topics, int(n), replacement=True, generator=g)
                        .bincount(minlength=VOCAB) for m, n in zip(mix, lengths, strict=True)])
    return (docs.to(dtype),)
