"""The per-point passes' fast path (ppl_vae.evaluation.fastpath) against the plain Pyro path:
the same numbers (to rounding for the Bernoulli log-density, exactly for a fixed seed for the
guide's draws), and the plain path kept where the fast one does not apply."""

import importlib

import numpy as np
import pandas as pd
import pyro.distributions as dist
import pytest
import torch
from _diagnostics_cases import make_guide, model, simulate
from programs import prodlda

import ppl_vae.evaluation.fastpath as fastpath
from ppl_vae.diagnostics.sbc import sbc
from ppl_vae.diagnostics.summary import pointwise_pass
from ppl_vae.evaluation.pointwise import draw
from ppl_vae.guides import MLPEncoder
from ppl_vae.models import VAE
from ppl_vae.programs.distributions import SoftBernoulli
from ppl_vae.programs.random import seeded

# The package exports a function named like the module: the module itself, for monkeypatch.
sbc_module = importlib.import_module("ppl_vae.diagnostics.sbc")
RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def _vae(dtype, obs_dim=30):
    torch.manual_seed(0)
    return VAE(obs_dim, latent_dim=3, hidden=16).to(dtype), MLPEncoder(obs_dim, 3, 16).to(dtype)


def _binary(n, d, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) < 0.3).to(dtype)


@pytest.mark.parametrize("event", [1, 2])
@pytest.mark.parametrize("cls", [dist.Bernoulli, SoftBernoulli])
def test_bernoulli_logits_equals_the_closed_form(dtype, event, cls):
    g = torch.Generator().manual_seed(0)
    # Logits up to +-60: beyond softplus's linear cut-off in both precisions.
    logits = (torch.randn(7, 5, 3, 4, generator=g) * 20).to(dtype)
    x = (torch.rand(5, 3, 4, generator=g) < 0.5).to(dtype)
    fn = cls(logits=logits, validate_args=False).to_event(event)
    fast = fastpath._bernoulli_logits(fn, x)
    assert fast is not None and fast.shape == fn.log_prob(x).shape
    # log p(x | l) = -log(1 + exp(-(2x - 1) l)), in float64; the error allowed is the rounding
    # of x l and softplus(l) in the logits' precision (relative to |l|).
    zero = torch.zeros((), dtype=torch.float64)
    terms = -torch.logaddexp(zero, -(2 * x - 1).double() * logits.double())
    dims = list(range(-event, 0))
    exact, size = terms.sum(dims), (1 + logits.double().abs()).sum(dims)
    bound = 4 * torch.finfo(dtype).eps * size
    assert ((fast.double() - exact).abs() <= bound).all()
    assert ((fast.double() - fn.log_prob(x).double()).abs() <= 2 * bound).all()  # torch's BCE


class _OwnLogProb(dist.Bernoulli):
    def log_prob(self, value):
        return super().log_prob(value) + 1.0


@pytest.mark.parametrize("make", [
    lambda l: dist.Bernoulli(probs=torch.sigmoid(l), validate_args=False).to_event(1),
    lambda l: dist.Bernoulli(logits=l, validate_args=True).to_event(1),
    lambda l: _OwnLogProb(logits=l, validate_args=False).to_event(1),
    lambda l: dist.ContinuousBernoulli(logits=l, validate_args=False).to_event(1),
    lambda l: dist.Bernoulli(logits=l, validate_args=False),
], ids=["probs", "validated", "own log_prob", "continuous", "no event"])
def test_other_distributions_keep_torch_log_prob(make):
    logits = torch.randn(4, 6, 5)
    fn, x = make(logits), _binary(6, 5, torch.float32)
    assert fastpath._bernoulli_logits(fn, x) is None
    assert torch.equal(fastpath.log_prob(fn, x), fn.log_prob(x))


def _slow(monkeypatch):
    monkeypatch.setattr(fastpath, "_bernoulli_logits", lambda fn, value: None)


def test_draws_equal_the_plain_path(dtype, monkeypatch):
    m, g = _vae(dtype)
    x = _binary(50, 30, dtype)
    with seeded(3):
        fast = draw(m, g, (x,), num_samples=64)
    _slow(monkeypatch)
    with seeded(3):
        slow = draw(m, g, (x,), num_samples=64)
    assert torch.equal(fast.latents["z"], slow.latents["z"])
    assert fast.log_lik.dtype == dtype
    torch.testing.assert_close(fast.log_lik, slow.log_lik, rtol=RTOL[dtype], atol=0)
    torch.testing.assert_close(fast.log_weights, slow.log_weights, rtol=RTOL[dtype], atol=0)


def test_pointwise_psis_equals_the_plain_path(dtype, monkeypatch):
    m, g = _vae(dtype)
    x = _binary(60, 30, dtype)

    def table():
        return pointwise_pass([(m, g, {})], x, num_draws=100, points=10, num_worst=2,
                              settings={}, data_plate=None, seed=0, chunk_size=25)[1]

    fast = table()
    _slow(monkeypatch)
    slow = table()
    assert (fast["point"] == slow["point"]).all()
    # Rounding of the log ratios moves k-hat by far less than its own standard error (~0.1).
    np.testing.assert_allclose(fast["log_px"], slow["log_px"], rtol=RTOL[dtype] * 10)
    np.testing.assert_allclose(fast["k_hat"], slow["k_hat"], atol=1e-3)


def _sbc_frames(result):
    return [result.ranks, result.truth, result.posterior_mean, result.posterior_sd]


def test_sbc_guide_draws_are_the_full_pass_draws(dtype, monkeypatch):
    m, g = _vae(dtype, obs_dim=12)
    x = _binary(40, 12, dtype)
    fast = sbc(m, g, x, num_draws=19, bins=5, seed=4, chunk_size=16)
    monkeypatch.setattr(sbc_module, "guide_latents", lambda *a: None)
    full = sbc(m, g, x, num_draws=19, bins=5, seed=4, chunk_size=16)
    for a, b in zip(_sbc_frames(fast), _sbc_frames(full), strict=True):
        pd.testing.assert_frame_equal(a, b)


def test_sbc_fast_path_is_calibrated_on_the_exact_posterior(dtype):
    # The conjugate case: the guide is the exact posterior, so the ranks must be uniform.
    x = simulate(500, seed=2, dtype=dtype)
    assert sbc(model, make_guide(), x, num_draws=99, seed=5).passed
    assert not sbc(model, make_guide(width=0.5), x, num_draws=99, seed=5).passed


def test_programs_that_do_not_vectorize_keep_the_full_pass(monkeypatch):
    def refuse(*args):
        raise AssertionError("guide_latents called on a program drawn one draw at a time")

    monkeypatch.setattr(sbc_module, "guide_latents", refuse)
    m, g = prodlda.make(torch.float64)  # drawn one by one (ProdLDA's batch norm)
    result = sbc(m, g, prodlda.data(torch.float64), num_draws=9, bins=5, seed=0,
                 data_plate=prodlda.DATA_PLATE)
    assert len(result.ranks) == 30


def test_benchmark_measures_both_paths(tmp_path):
    from benchmarks.diagnostics import worker

    rows = {path: worker(["--stage", "evaluate", "--n", "60", "--folder", str(tmp_path / path),
                          "--path", path]) for path in ("plain", "fast")}
    assert rows["plain"]["path"] == "plain" and rows["fast"]["path"] == "fast"
    plain, fast = rows["plain"]["evaluation"], rows["fast"]["evaluation"]
    assert plain.keys() == fast.keys()
    np.testing.assert_allclose([fast[k] for k in fast], [plain[k] for k in plain], rtol=1e-5)
