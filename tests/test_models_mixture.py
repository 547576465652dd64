"""MixturePriorVAE: enumeration sums the component out exactly."""

import pyro
import pytest
import torch
from _runs import assert_trained_run
from pyro import poutine

from ppl_vae import evaluate, fit, make_elbo
from ppl_vae.cli import main
from ppl_vae.guides import MLPEncoder
from ppl_vae.models import MixturePriorVAE
from ppl_vae.programs.analysis import clear_cache


def test_enumerated_elbo_equals_the_marginal_prior_elbo(digits, dtype):
    model = MixturePriorVAE(64, latent_dim=3, num_components=4, hidden=16).to(dtype)
    guide = MLPEncoder(64, 3, hidden=16).to(dtype)
    x = digits.train[:32].to(dtype)
    elbo = make_elbo("enum", max_plate_nesting=1)
    pyro.set_rng_seed(1)
    loss = elbo.differentiable_loss(model, guide, x)
    # Same seed, same guide draw: the ELBO with the component summed out by hand,
    # log p(z) = logsumexp_c [log pi_c + log N(z; m_c, s_c)] (MixtureSameFamily).
    pyro.set_rng_seed(1)
    z = poutine.trace(guide).get_trace(x).nodes["z"]["value"]
    loc, scale = guide.encode(x)
    log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    expected = -(model.observation_dist(z).log_prob(x) + model.prior().log_prob(z) - log_q).sum()
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(loss, expected, rtol=tol, atol=tol)


def test_trains_through_fit_with_enum(digits):
    model = MixturePriorVAE(64, latent_dim=3, num_components=4, hidden=32)
    guide = MLPEncoder(64, 3, hidden=32)
    result = fit(model, guide, digits.train.double(), validation_data=digits.test.double(),
                 estimator="enum", epochs=4, batch_size=128, lr=3e-3, progress=False)
    h = result.history
    assert model.logits.dtype == torch.float64
    # Training raises the ELBO: 4 epochs take it from about -47 to about -36 nats per image,
    # far beyond the epoch-to-epoch noise (< 1 nat).
    assert h["val_elbo"].iloc[-1] > h["val_elbo"].iloc[0] + 3
    # enumerate=False is the same model with z drawn from the marginal MixtureSameFamily prior:
    # evaluate's ELBO on it must equal the enumerated ELBO (both Monte Carlo over 50 draws per
    # image on 360 images: standard errors ~0.05 nats, so 0.3 is a safe margin) ...
    x = digits.test.double()
    enum_elbo = -make_elbo("enum", num_particles=50, vectorize_particles=True,
                           max_plate_nesting=1).loss(model, guide, x) / len(x)
    ev_summed_c = evaluate(model, guide, x, num_samples=50)
    model.enumerate = False
    clear_cache()  # the program changed in place: its analysis must be redone
    ev_marginal = evaluate(model, guide, x, num_samples=50)
    assert abs(ev_marginal["elbo"] - enum_elbo) < 0.3, (ev_marginal["elbo"], enum_elbo)
    # ... and evaluate sums the enumerated component out, as TraceEnum_ELBO does.
    assert abs(ev_summed_c["elbo"] - enum_elbo) < 0.3, (ev_summed_c["elbo"], enum_elbo)


def test_bad_options():
    with pytest.raises(ValueError, match="num_components"):
        MixturePriorVAE(4, num_components=0)
    with pytest.raises(ValueError, match="likelihood"):
        MixturePriorVAE(4, likelihood="poisson")


def test_cli_trains_mixture_vae(tmp_path, capsys):
    code = main(["train", "--model", "mixture_vae", "--guide", "mlp", "--estimator", "enum",
                 "--latent-dim", "3", "--hidden", "16", "--epochs", "2", "--eval-samples", "5",
                 "--no-progress", "--out", str(tmp_path / "run")])
    assert code == 0
    assert_trained_run(tmp_path / "run", capsys.readouterr().out, model="mixture_vae",
                       guide="mlp", epochs=2)
