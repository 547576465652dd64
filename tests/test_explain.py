"""The per-site plan, and the warning when the 'analytic' estimator falls back to Monte Carlo."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_vae import explain, fit, monte_carlo_kl_sites
from ppl_vae.estimators.explain import PLAN_COLUMNS


def _vae(latent=4):
    from ppl_vae.guides import MLPEncoder
    from ppl_vae.models import VAE

    return VAE(64, latent, hidden=16), MLPEncoder(64, latent, hidden=16)


def _gamma_scale_model():
    """A global scale with a Gamma prior and a LogNormal guide: torch registers no KL for
    (LogNormal, Gamma), so TraceMeanField_ELBO estimates that KL by Monte Carlo."""

    def model(x):
        s = pyro.sample("s", dist.Gamma(x.new_tensor(2.0), x.new_tensor(2.0)))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z, s), obs=x)

    def guide(x):
        loc = pyro.param("s_loc", x.new_tensor(0.0))
        pyro.sample("s", dist.LogNormal(loc, x.new_tensor(0.3)))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(pyro.param("z_loc", torch.zeros_like(x)), 0.5))

    return model, guide


def test_plan_of_the_digits_vae(digits, dtype):
    model, guide = _vae()
    batch = digits.train[:3].to(dtype)
    model.to(dtype), guide.to(dtype)
    plan = explain(model, guide, batch, estimator="analytic")
    assert list(plan.columns) == PLAN_COLUMNS
    row = plan.iloc[0].to_dict()
    assert len(plan) == 1 and row["site"] == "z" and row["plates"] == "data"
    assert row["event_shape"] == (4,) and row["device"] == "cpu"
    assert row["dtype"] == str(dtype).replace("torch.", "")
    assert row["reparameterized"] and row["term"] == "closed-form KL"


@pytest.mark.parametrize("estimator, term, gradient", [
    ("mc", "Monte Carlo KL", "reparameterized"),
    ("score", "score function", "score function (Rao-Blackwellised)"),
    ("stl", "Monte Carlo KL", "path derivative (score term dropped)"),
    ("iwae", "Monte Carlo KL", "reparameterized, through log-mean-exp over K"),
])
def test_plan_names_the_term_each_estimator_uses(digits, estimator, term, gradient):
    model, guide = _vae()
    row = explain(model, guide, (digits.train[:2],), estimator=estimator).iloc[0]
    assert (row["term"], row["gradient"]) == (term, gradient)


def test_monte_carlo_fallback_is_listed_and_explained():
    model, guide = _gamma_scale_model()
    x = torch.randn(5)
    assert monte_carlo_kl_sites(model, guide, x) == ["s"]
    plan = explain(model, guide, x, estimator="analytic").set_index("site")
    assert plan.loc["s", "term"] == "Monte Carlo KL" and plan.loc["s", "plates"] == ""
    assert plan.loc["z", "term"] == "closed-form KL"


def test_fit_warns_about_the_monte_carlo_fallback_naming_the_site():
    model, guide = _gamma_scale_model()
    x = torch.randn(8)
    with pytest.warns(UserWarning, match=r"\['s'\]"):
        fit(model, guide, x, estimator="analytic", epochs=1, batch_size=8, progress=False)


def test_fit_is_silent_when_every_kl_is_closed_form(digits):
    model, guide = _vae()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*Monte Carlo KL.*")
        fit(model, guide, digits.train[:64], estimator="analytic", epochs=1, batch_size=64,
            progress=False)


def test_bad_input_is_a_clear_value_error(digits):
    model, guide = _vae()
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        explain(model, guide, digits.train[:2], estimator="nope")
    with pytest.raises(ValueError, match="batch must be a tensor"):
        explain(model, guide, "rows", estimator="mc")


def test_train_prints_the_plan_before_training(tmp_path, capsys):
    from ppl_vae.cli import main

    rc = main(["train", "--epochs", "1", "--latent-dim", "3", "--hidden", "8",
               "--out", str(tmp_path / "run"), "--no-progress", "--eval-samples", "5"])
    out = capsys.readouterr().out
    assert rc == 0
    plan_at = out.index("plan for the 'analytic' estimator")
    assert "closed-form KL" in out[plan_at:]
    assert "data plate (scaled by N / batch size): 'data'" in out[plan_at:]
    assert plan_at < out.index("test-set evaluation")


def test_plan_names_the_data_plate_or_why_there_is_none(digits):
    model, guide = _vae()
    x = torch.as_tensor(digits.train[:16])
    plan = explain(model, guide, x)
    assert plan.attrs["data_plate"] == "data"

    def no_plate(x):
        pyro.sample("x", dist.Normal(x.new_zeros(x.shape), 1.0).to_event(2), obs=x)

    plan = explain(no_plate, lambda x: None, x, estimator="mc")
    assert plan.attrs["data_plate"] is None
    assert "no plate" in plan.attrs["data_plate_error"]
