"""The programs being compared: one VAE written several ways, on the same networks and weights.

All of them train the VAE of ``ppl_vae.models.VAE`` + ``ppl_vae.guides.MLPEncoder``: encoder
``x -> 400 -> (mu, log sigma)`` with sigma = exp(log sigma) + ``min_scale``, ``z`` of 20,
decoder ``z -> 400 -> logits of x``, softplus activations, Bernoulli likelihood, loss summed over
the batch and scaled by N / batch size (the whole data set's negative ELBO), Adam.

- ``torch``: hand-written PyTorch with ``torch.optim.Adam(params, lr, fused=True)``, what a
  performance-minded user writes: **the reference of every ratio**.
- ``torch_unfused``: the same with torch's default Adam (the reference of earlier tables).
- ``torch_compile``: the hand-written loss under ``torch.compile`` (Inductor; forward and
  backward), fused Adam: the second reference.
- ``pyro``: plain Pyro ``SVI`` with ``pyro.module`` / ``pyro.plate`` / ``poutine.scale``,
  ``pyro.optim.Adam`` and ``Trace_ELBO`` / ``TraceMeanField_ELBO`` (``pyro_jit``:
  ``JitTrace_ELBO``, Pyro's own traced variant, for ``mc`` only).
- ``ppl_vae``: the step ``fit`` runs by default (``init_state`` + ``update``, ``jit="auto"``);
  ``ppl_vae_eager``: ``jit=False``; ``ppl_vae_jit``: ``jit=True``; ``ppl_vae_compile``:
  ``jit="compile"``.
- NumPyro (``benchmarks/numpyro_vae.py``) runs in its own process.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from ppl_vae.estimators.registry import make_elbo
from ppl_vae.train.state import init_state, update

CONTENDERS = ("torch", "torch_unfused", "torch_compile", "pyro", "pyro_jit", "ppl_vae_eager",
              "ppl_vae", "ppl_vae_jit", "ppl_vae_compile")
#: ``jit=`` of each ppl_vae contender.
PPL_VAE_JIT = {"ppl_vae_eager": False, "ppl_vae": "auto", "ppl_vae_jit": True,
               "ppl_vae_compile": "compile"}
LATENT, HIDDEN, MIN_SCALE = 20, 400, 1e-4


@dataclass(frozen=True)
class Setting:
    """One benchmark case: estimator, particles, batch, data set."""

    estimator: str  # "mc" or "analytic"
    num_particles: int
    vectorize: bool
    batch_size: int
    data: str  # "784" (synthetic binary images) or "digits"

    @property
    def label(self) -> str:
        how = "vec" if self.vectorize else "loop"
        return f"{self.data} b{self.batch_size} {self.estimator} K{self.num_particles} {how}"


def networks(obs_dim: int) -> tuple[nn.Sequential, nn.Sequential]:
    """Encoder and decoder with the zoo's layout (``ppl_vae.programs.nn.mlp``)."""
    encoder = nn.Sequential(nn.Linear(obs_dim, HIDDEN), nn.Softplus(), nn.Linear(HIDDEN, 2 * LATENT))
    decoder = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.Softplus(), nn.Linear(HIDDEN, obs_dim))
    return encoder, decoder


class TorchVAE(nn.Module):
    """Hand-written VAE: the reference every ratio is taken against."""

    def __init__(self, obs_dim: int):
        super().__init__()
        self.encoder, self.decoder = networks(obs_dim)

    def loss(self, x: torch.Tensor, num_data: int, estimator: str = "analytic",
             num_particles: int = 1, vectorize: bool = False) -> torch.Tensor:
        """Negative ELBO of all ``num_data`` points estimated from the batch ``x`` (0-dim)."""
        loc, log_scale = self.encoder(x).split(LATENT, dim=-1)
        scale = log_scale.exp() + MIN_SCALE
        factor = num_data / x.shape[0]
        if vectorize:
            # One pass over all particles: (K, batch, latent) draws, the batch broadcast.
            eps = torch.empty((num_particles, *loc.shape), dtype=x.dtype, device=x.device).normal_()
            return self._particle(x, loc, scale, eps, estimator, num_particles) * factor
        total = 0.0
        for _ in range(num_particles):
            eps = torch.empty_like(loc).normal_()
            total = total + self._particle(x, loc, scale, eps, estimator, 1)
        return total * (factor / num_particles)

    def _particle(self, x, loc, scale, eps, estimator, num_draws):
        z = loc + eps * scale  # the order Pyro's Normal.rsample uses
        logits = self.decoder(z)
        nll = F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="sum")
        if estimator == "analytic":
            # KL(N(mu, sigma) || N(0, 1)) in closed form, once for all particles.
            kl = 0.5 * (scale.pow(2) + loc.pow(2) - 1.0 - 2.0 * scale.log()).sum() * num_draws
        else:
            log_q = (-0.5 * eps.pow(2) - scale.log()).sum()
            log_p = (-0.5 * z.pow(2)).sum()
            kl = log_q - log_p  # the 0.5 log(2 pi) terms cancel
        return (nll + kl) / num_draws


def make_torch(setting: Setting, weights, num_data: int, lr: float, *, fused: bool = True,
               compiled: bool = False) -> Callable:
    """Hand-written training step; ``fused``: torch's fused Adam kernel; ``compiled``: the loss
    (forward and backward) through ``torch.compile`` with Inductor."""
    model = TorchVAE(weights["obs_dim"]).to(weights["device"], weights["dtype"])
    model.encoder.load_state_dict(weights["encoder"])
    model.decoder.load_state_dict(weights["decoder"])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, **({"fused": True} if fused else {}))

    def loss_fn(x):
        return model.loss(x, num_data, setting.estimator, setting.num_particles, setting.vectorize)

    if compiled:
        # Each setting is a new function to compile: without a reset, dynamo counts every
        # setting's graph as a recompilation of the same code and stops after its limit (8).
        torch._dynamo.reset()
        loss_fn = torch.compile(loss_fn, fullgraph=True, dynamic=False)

    def step(x):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(x)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def make_pyro(setting: Setting, weights, num_data: int, lr: float, *, jit: bool = False,
              prefix: str = "bench") -> Callable:
    """Plain Pyro SVI written the way its tutorials write a VAE."""
    encoder, decoder = networks(weights["obs_dim"])
    encoder.to(weights["device"], weights["dtype"]).load_state_dict(weights["encoder"])
    decoder.to(weights["device"], weights["dtype"]).load_state_dict(weights["decoder"])

    def model(x):
        pyro.module(f"{prefix}_decoder", decoder)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=num_data / x.shape[0]):
            prior = dist.Normal(x.new_zeros(LATENT), x.new_ones(LATENT)).to_event(1)
            z = pyro.sample("z", prior)
            likelihood = dist.Bernoulli(logits=decoder(z), validate_args=False).to_event(1)
            pyro.sample("x", likelihood, obs=x)

    def guide(x):
        pyro.module(f"{prefix}_encoder", encoder)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=num_data / x.shape[0]):
            loc, log_scale = encoder(x).split(LATENT, dim=-1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp() + MIN_SCALE).to_event(1))

    options = dict(num_particles=setting.num_particles, vectorize_particles=setting.vectorize,
                   max_plate_nesting=1)
    if jit:
        loss = pyro.infer.JitTrace_ELBO(ignore_jit_warnings=True, **options)
    elif setting.estimator == "analytic":
        loss = pyro.infer.TraceMeanField_ELBO(**options)
    else:
        loss = pyro.infer.Trace_ELBO(**options)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": lr}), loss=loss)

    def step(x):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.trace's deprecation warning
            return svi.step(x)

    return step


def make_ppl_vae(setting: Setting, weights, num_data: int, lr: float, *, jit=False,
                 models=None) -> Callable:
    """The step ``fit`` runs, on the zoo's VAE and encoder."""
    vae_cls, encoder_cls = models
    model = vae_cls(weights["obs_dim"]).to(weights["device"], weights["dtype"])
    guide = encoder_cls(weights["obs_dim"]).to(weights["device"], weights["dtype"])
    model.decoder.load_state_dict(weights["decoder"])
    guide.net.load_state_dict(weights["encoder"])
    elbo = make_elbo(setting.estimator, num_particles=setting.num_particles,
                     vectorize_particles=setting.vectorize, jit=jit, max_plate_nesting=1)
    x0 = weights["first_batch"]
    state = init_state(model, guide, elbo, (x0,), num_data=num_data, data_plate="data", lr=lr)

    def step(x):
        nonlocal state
        state, loss = update(state, (x,))
        return loss

    if jit == "auto":
        _switched(step, lambda: state, x0)
    return step


def _switched(step: Callable, state: Callable, x0) -> None:
    """Run the default step until its background compile has started, wait for it, and take the
    steps that switch to it: the timings are the default's steady state (the compile itself
    runs beside training; ``benchmarks.compile_path`` times it)."""
    from ppl_vae.recording.compile import background_after

    if math.isinf(background_after()):
        return
    current = state()
    waiter = current.recorder if current.fused is None else current.fused
    if waiter is None:
        return
    for _ in range(int(background_after()) + 100):
        if waiter.background_started:
            break
        step(x0)
    if not waiter.wait_for_compiles(900):
        raise RuntimeError("the default's background compile took over 15 minutes")
    for _ in range(3):
        step(x0)


def initial_weights(obs_dim: int, device, dtype, seed: int, first_batch) -> dict:
    """One set of initial weights (torch's default init under ``seed``) for every contender."""
    torch.manual_seed(seed)
    encoder, decoder = networks(obs_dim)
    return {
        "obs_dim": obs_dim, "device": device, "dtype": dtype, "first_batch": first_batch,
        "encoder": {k: v.to(device, dtype) for k, v in encoder.state_dict().items()},
        "decoder": {k: v.to(device, dtype) for k, v in decoder.state_dict().items()},
    }


def make_contender(name: str, setting: Setting, weights, num_data: int, lr: float,
                   models) -> Callable:
    if name in ("torch", "torch_unfused", "torch_compile"):
        return make_torch(setting, weights, num_data, lr, fused=name != "torch_unfused",
                          compiled=name == "torch_compile")
    if name in ("pyro", "pyro_jit"):
        return make_pyro(setting, weights, num_data, lr, jit=name == "pyro_jit",
                         prefix=f"{name}_{id(weights)}")
    if name in PPL_VAE_JIT:
        return make_ppl_vae(setting, weights, num_data, lr, jit=PPL_VAE_JIT[name], models=models)
    raise ValueError(f"unknown contender {name!r}; choose from {CONTENDERS}")
