"""Impure Pyro programs, written as users write them: a VAE whose KL term is scaled by a weight
read from Python (as scvi-tools anneals it: ``poutine.scale(scale=self.kl_weight)`` with the
weight set by a callback), through an attribute, a global, an object's attribute and a closure;
programs that keep a call counter, raise or turn NaN at their k-th call, or draw from Python's
``random``.

Each ``make_*(dtype)`` returns ``(model, guide, set_weight)``: ``set_weight(w)`` changes the
Python value the programs read (``None`` where nothing outside the programs changes them).
``data(dtype)`` is the tiny data set they are trained on.
"""

import random
import types

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

X_DIM, Z_DIM = 4, 2

KL_WEIGHT = 1.0  # a global schedule
SCHEDULE = types.SimpleNamespace(kl_weight=1.0)  # a schedule object's attribute


class AnnealedVAE(torch.nn.Module):
    """The KL weight as an attribute (``self.kl_weight``) a callback changes."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.encoder = torch.nn.Linear(X_DIM, 2 * Z_DIM).to(dtype)
        self.decoder = torch.nn.Linear(Z_DIM, X_DIM).to(dtype)
        self.kl_weight = 1.0

    def weight(self):
        return self.kl_weight

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=self.weight()):
                z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            h = self.encoder(x)
            with poutine.scale(scale=self.weight()):
                pyro.sample("z", dist.Normal(h[:, :Z_DIM], h[:, Z_DIM:].exp()).to_event(1))


def make_attribute(dtype=torch.float32):
    vae = AnnealedVAE(dtype)
    return vae.model, vae.guide, lambda w: setattr(vae, "kl_weight", w)


class GlobalVAE(AnnealedVAE):
    def weight(self):
        return KL_WEIGHT


def _set_global(w):
    global KL_WEIGHT
    KL_WEIGHT = w


def make_global(dtype=torch.float32):
    _set_global(1.0)
    vae = GlobalVAE(dtype)
    return vae.model, vae.guide, _set_global


class ObjectVAE(AnnealedVAE):
    def weight(self):
        return SCHEDULE.kl_weight


def make_object(dtype=torch.float32):
    SCHEDULE.kl_weight = 1.0
    vae = ObjectVAE(dtype)
    return vae.model, vae.guide, lambda w: setattr(SCHEDULE, "kl_weight", w)


def make_closure(dtype=torch.float32):
    """Plain functions sharing a weight in their closure, changed through ``nonlocal``."""
    vae = AnnealedVAE(dtype)
    weight = 1.0

    def set_weight(w):
        nonlocal weight
        weight = w

    def model(x):
        vae.kl_weight = weight
        vae.model(x)

    def guide(x):
        vae.kl_weight = weight
        vae.guide(x)

    return model, guide, set_weight


class CountingVAE(AnnealedVAE):
    """Anneals itself: the weight rises with the number of calls of its guide (a counter)."""

    def __init__(self, dtype=torch.float32):
        super().__init__(dtype)
        self.calls = 0

    def weight(self):
        return min(1.0, 0.1 + self.calls / 20)

    def guide(self, x):
        self.calls += 1
        super().guide(x)


def make_counter(dtype=torch.float32):
    vae = CountingVAE(dtype)
    return vae.model, vae.guide, None


class RaisingVAE(CountingVAE):
    """Raises at its guide's ``fail_at``-th call."""

    fail_at = 15

    def guide(self, x):
        if self.calls + 1 == self.fail_at:
            raise RuntimeError(f"the guide failed at its call {self.fail_at}")
        super().guide(x)


def make_raising(dtype=torch.float32):
    vae = RaisingVAE(dtype)
    return vae.model, vae.guide, None


def make_nan(dtype=torch.float32, at=14):
    """A closure counter; from its ``at``-th call the model's likelihood scale is NaN."""
    vae = AnnealedVAE(dtype)
    calls = 0

    def model(x):
        nonlocal calls
        calls += 1
        pyro.module("decoder", vae.decoder)
        scale = float("nan") if calls >= at else 1.0
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(vae.decoder(z), scale).to_event(1), obs=x)

    return model, vae.guide, None


class RandomVAE(AnnealedVAE):
    """Draws its KL weight from Python's ``random`` on every call."""

    def weight(self):
        return 0.5 + random.random()


def make_random(dtype=torch.float32):
    vae = RandomVAE(dtype)
    return vae.model, vae.guide, None


def data(dtype=torch.float32, rows=64):
    g = torch.Generator().manual_seed(5)
    z = torch.randn(rows, Z_DIM, generator=g, dtype=dtype)
    mix = torch.randn(Z_DIM, X_DIM, generator=g, dtype=dtype)
    return z @ mix + 0.3 * torch.randn(rows, X_DIM, generator=g, dtype=dtype)
