"""KL warm-up (Bowman et al. 2016): the latent terms weighted 0 -> 1 during training only."""

import pyro
import pytest
import torch
from _diagnostics_cases import make_guide, model, simulate
from pyro.infer import Trace_ELBO

from ppl_vae import Compute, Objective, evaluate, fit
from ppl_vae.guides import MLPEncoder
from ppl_vae.models import VAE
from ppl_vae.train.objective import FreeBits, KLWarmup, TermContext


class _Step:
    """A clock the test sets by hand (the loop's is set before each step)."""

    def __init__(self, step=None):
        self.step = step

    def __call__(self):
        return self.step


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_warmup_weights_only_the_latent_terms(dtype):
    # Under weight beta the Monte Carlo ELBO of the same draws is E[log p(x|z)] + beta (log p(z)
    # - log q(z)): recon and KL parts recovered from beta = 1 and beta = 0.5 (steps 3 and 1 of
    # a 4-step warm-up: one epoch of 4 steps), and beta = 1 outside training (step None).
    x = simulate(5, seed=0, dtype=dtype)
    guide = make_guide(width=0.8)
    clock = _Step()
    m, g = KLWarmup(1).programs(model, guide, TermContext("data", 4, clock))

    def loss(step):
        clock.step = step
        pyro.set_rng_seed(3)
        return Trace_ELBO().loss(m, g, x)

    full, half, outside = loss(3), loss(1), loss(None)
    quarter = loss(0)
    # loss = -recon + beta * kl: linear in beta with the same draws.
    assert (full - quarter) == pytest.approx(3 * (half - quarter), rel=1e-4 if dtype == torch.float32 else 1e-9)
    assert outside == full and half != pytest.approx(full)
    assert [KLWarmup.weight(s, 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert KLWarmup.weight(None, 4) == 1.0
    assert KLWarmup(2).columns(TermContext("data", 4, _Step(3))) == {"kl_weight": 0.5}


def _digits_vae(digits, warmup, seed):
    x = torch.as_tensor(digits.train[:512], dtype=torch.float32)
    pyro.set_rng_seed(seed)
    vae, enc = VAE(64, 8, hidden=64), MLPEncoder(64, 8, hidden=64)
    result = fit(vae, enc, x, epochs=8, batch_size=32, lr=3e-3, progress=False, seed=seed,
                 objective=Objective(terms=[KLWarmup(warmup)] if warmup else []))
    ev = evaluate(vae, enc, torch.as_tensor(digits.test, dtype=torch.float32), num_samples=10)
    return result, ev


@pytest.mark.slow
def test_warmup_raises_the_kl_of_a_nearly_collapsed_vae(digits):
    # Without warm-up this small VAE keeps 0.09 nats of KL after 8 epochs (nearly collapsed);
    # with 5 warm-up epochs 0.28 (seeds 0 and 2: 0.09 -> 0.28, 0.24 -> 0.70).
    plain, ev_plain = _digits_vae(digits, 0, seed=0)
    warm, ev_warm = _digits_vae(digits, 5, seed=0)
    assert ev_warm["kl"] > 2 * ev_plain["kl"]
    # The history says when train_elbo was not the ELBO; validation-free evaluation is the ELBO.
    assert warm.history["kl_weight"].iloc[:4].lt(1).all() and warm.history["kl_weight"].iloc[-1] == 1
    assert "kl_weight" not in plain.history
    assert warm.settings["kl_warmup_epochs"] == 5


def test_warmup_refuses_jit():
    with pytest.raises(ValueError, match="kl_warmup_epochs with jit=True"):
        fit(model, make_guide(), simulate(8), epochs=1, progress=False,
            objective=Objective(terms=[KLWarmup(1)]), compute=Compute(jit=True))
    with pytest.raises(ValueError, match="free_bits with jit='compile'"):
        fit(model, make_guide(), simulate(8), epochs=1, progress=False,
            objective=Objective(terms=[FreeBits(0.1)]), compute=Compute(jit="compile"))


def test_free_bits_adds_the_shortfall_below_lambda_per_dimension():
    # The loss gains N * sum_d relu(lambda - mean_i KL_d(x_i)) (Kingma et al. 2016), with the
    # closed-form KL of each dimension: here dimension 1 is collapsed (KL 0), dimension 0 not.
    x = simulate(6, seed=0)
    guide = make_guide(width=0.8)
    context = TermContext("data", 1, _Step(0))  # active from the first step on
    bits = FreeBits(0.5, per="dim")

    def loss(m, g):
        pyro.set_rng_seed(3)
        return Trace_ELBO().loss(m, g, x)

    plain, with_bits = loss(model, guide), loss(*bits.programs(model, guide, context))
    from _diagnostics_cases import posterior

    mu, sd = posterior(x)
    q = torch.distributions.Normal(mu, 0.8 * sd)
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).mean(0)
    expected = 6 * torch.relu(0.5 - kl).sum()
    assert with_bits - plain == pytest.approx(float(expected), rel=1e-9)
    site = loss(*FreeBits(0.5, per="site").programs(model, guide, context)) - plain
    assert site == pytest.approx(float(6 * torch.relu(0.5 - kl.sum())), rel=1e-9, abs=1e-12)
    # Outside training (the pre-flight's runs) the programs are the ELBO's.
    outside = TermContext("data", 1, _Step(None))
    assert loss(*bits.programs(model, guide, outside)) == plain


@pytest.mark.slow
def test_free_bits_raise_the_kl_of_a_nearly_collapsed_vae(digits):
    # 0.09 nats of KL without (seed 0), 1.6 with 0.25 free nats per dimension (seed 2: 0.24
    # -> 1.8): no dimension is pushed onto the prior while its KL is below lambda.
    x = torch.as_tensor(digits.train[:512], dtype=torch.float32)
    test = torch.as_tensor(digits.test, dtype=torch.float32)
    kls = []
    for bits in (None, 0.25):
        pyro.set_rng_seed(0)
        vae, enc = VAE(64, 8, hidden=64), MLPEncoder(64, 8, hidden=64)
        r = fit(vae, enc, x, epochs=8, batch_size=32, lr=3e-3, progress=False,
                objective=Objective(terms=[FreeBits(bits)] if bits else []))
        kls.append(evaluate(vae, enc, test, num_samples=10)["kl"])
    assert kls[1] > 5 * kls[0]
    assert r.history["free_bits"].eq(0.25).all() and r.settings["free_bits"] == 0.25
