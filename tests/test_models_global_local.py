"""GlobalLocalVAE: global latents learned beside amortized local ones through the same fit."""

import pytest
import torch
from _runs import assert_trained_run

from ppl_vae import evaluate, fit, make_elbo
from ppl_vae.cli import main
from ppl_vae.data.datasets import make_linear_gaussian
from ppl_vae.guides import GlobalLocalGuide
from ppl_vae.models import GlobalLocalVAE
from ppl_vae.programs.handlers import ScaledProgram


def check_globals(b_mean, sigma, x, noise):
    """The offset's posterior is centred at the sample mean (the prior N(0, 10^2) pulls by ~1e-4
    standard errors) with sd about std(x) / sqrt(N); the noise posterior concentrates at the
    generating value (standard error ~ noise / sqrt(2 N (d - k)) = 0.01 here)."""
    se = x.std(0) / len(x) ** 0.5
    err = ((b_mean - x.mean(0)) / se).abs()
    # Mean-field on b is exact given the rest (b's posterior is Gaussian); what is left is
    # optimiser noise, measured < 0.6 standard errors: 1.5 allows for it.
    assert bool((err < 1.5).all()), err
    # A diagonal q(z) and few steps bias sigma a little upward (measured 0.52 for 0.5).
    assert abs(float(sigma) - noise) < 0.1, float(sigma)


def train(model, guide, x):
    fit(model, guide, x, epochs=100, batch_size=200, lr=0.03, estimator="mc", progress=False,
        seed=0)


def test_global_offset_and_noise_are_recovered():
    ds = make_linear_gaussian(n=500, obs_dim=5, latent_dim=2, noise=0.5).to(torch.float64)
    model, guide = GlobalLocalVAE(5, 2, hidden=()), GlobalLocalGuide(5, 2, hidden=32)
    train(model, guide, ds.train)
    assert guide.b_loc.dtype == torch.float64
    # q(sigma) is LogNormal(loc, scale): its median is exp(loc).
    check_globals(guide.b_loc.detach(), guide.sigma_loc.detach().exp(), ds.train, 0.5)
    ev = evaluate(model, guide, ds.test, num_samples=20)
    assert ev["iwae"] >= ev["elbo"] - 1e-6


def test_minibatch_loss_estimates_the_full_loss(dtype):
    # With global latents the mini-batch loss must estimate the full-data loss: N / B on local
    # terms, 1 on the global ones. Over a partition of the data into 4 batches the average is
    # exactly the full loss in expectation. The global KL at initialisation is ~18 nats (q(b) has
    # scale 0.1, the prior 10, in 4 dims; q(sigma) scale 0.1 against 1), so scaling it by
    # N / B = 4 would be off by ~55 nats; the Monte Carlo noise of 1000-particle estimates (each
    # batch's multiplied by 4) measured a few nats, so 15 separates the two.
    ds = make_linear_gaussian(n=100, obs_dim=4, latent_dim=2).to(dtype)
    x = ds.train  # 80 rows: 4 batches of 20
    n = len(x)
    model, guide = GlobalLocalVAE(4, 2, hidden=8).to(dtype), GlobalLocalGuide(4, 2, hidden=8)
    guide.to(dtype)
    elbo = make_elbo("mc", num_particles=1000, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        full = float(elbo.loss(ScaledProgram(model, n, "data"), ScaledProgram(guide, n, "data"), x))
        parts = [float(elbo.loss(ScaledProgram(model, n, "data"), ScaledProgram(guide, n, "data"),
                                 x[i : i + 20])) for i in range(0, n, 20)]
    assert abs(sum(parts) / len(parts) - full) < 15.0, (parts, full)
    with pytest.raises(ValueError, match="offset_scale"):
        GlobalLocalVAE(4, offset_scale=-1)


def test_cli_trains_global_local(tmp_path, capsys):
    code = main(["train", "--model", "global_local_vae", "--guide", "global_local",
                 "--data", "linear_gaussian", "--estimator", "mc", "--latent-dim", "2",
                 "--hidden", "8", "--epochs", "2", "--eval-samples", "5", "--no-progress",
                 "--out", str(tmp_path / "run")])
    assert code == 0
    assert_trained_run(tmp_path / "run", capsys.readouterr().out, model="global_local_vae",
                       guide="global_local", epochs=2)
