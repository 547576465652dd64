"""The estimator registry: capabilities are data, and a new estimator joins every entry point."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from _runs import assert_trained_run

import ppl_vae
from ppl_vae.cli import main
from ppl_vae.estimators.registry import (
    ESTIMATORS,
    EstimatorSpec,
    SiteFacts,
    get_spec,
    make_elbo,
    preflight_warnings,
    register_estimator,
    unregister_estimator,
)

TOY_WARNING = "toy estimator: for testing only"


def _toy_build(*, num_particles, vectorize_particles, jit, **options):
    # A plain Monte Carlo ELBO under a new name: what matters here is the plumbing.
    return pyro.infer.Trace_ELBO(num_particles=num_particles,
                                 vectorize_particles=vectorize_particles, **options)


TOY = EstimatorSpec(
    _toy_build, "a toy Monte Carlo ELBO registered by a test",
    objective=lambda k: "toy objective",
    plan=lambda site: ("toy term", "toy gradient" if site.reparameterized else "none"),
    preflight=lambda model, guide, batch: [TOY_WARNING],
)


@pytest.fixture
def toy():
    register_estimator("toy", TOY)
    yield "toy"
    unregister_estimator("toy")


def _programs(dim=4, latent=2):
    decoder, encoder = torch.nn.Linear(latent, dim), torch.nn.Linear(dim, 2 * latent)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(latent), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 0.5).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        loc, log_scale = encoder(x).chunk(2, dim=-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    return model, guide


def test_estimators_is_read_only():
    with pytest.raises(TypeError):
        ESTIMATORS["x"] = TOY  # type: ignore[index]


def test_register_refuses_a_taken_name_and_a_wrong_spec(toy):
    with pytest.raises(ValueError, match="already registered"):
        register_estimator("toy", TOY)
    with pytest.raises(TypeError, match="EstimatorSpec"):
        register_estimator("other", object())
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        get_spec("nope")


def test_a_registered_estimator_is_known_everywhere(toy):
    model, guide = _programs()
    x = torch.randn(8, 4)
    assert isinstance(make_elbo(toy), pyro.infer.Trace_ELBO)
    assert preflight_warnings(toy, model, guide, x[:2]) == [TOY_WARNING]
    plan = ppl_vae.explain(model, guide, x[:2], estimator=toy)
    assert plan.loc[0, "term"] == "toy term" and plan.loc[0, "gradient"] == "toy gradient"
    table = ppl_vae.gradient_variance(model, guide, x, estimators=[toy, "mc"], num_draws=3)
    assert set(table[table["estimator"] == toy]["objective"]) == {"toy objective"}


def test_fit_trains_with_a_registered_estimator_and_shows_its_warning(toy):
    torch.manual_seed(0)
    x = torch.randn(64, 4) * 2.0 + 1.0
    model, guide = _programs()
    with pytest.warns(UserWarning, match=TOY_WARNING):
        result = ppl_vae.fit(model, guide, x, estimator=toy, epochs=30, batch_size=32,
                             lr=0.05, progress=False)
    elbo = result.history["train_elbo"]
    assert result.settings["estimator"] == toy
    assert elbo.iloc[-5:].mean() > elbo.iloc[:5].mean() + 0.5  # it trains


def test_the_cli_trains_with_a_registered_estimator(toy, tmp_path, capsys):
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["train", "--data", "digits", "--estimator", toy, "--out", str(out),
                     "--epochs", "2", "--latent-dim", "2", "--hidden", "8", "--no-progress",
                     "--eval-samples", "3"])
    printed = capsys.readouterr().out
    assert code == 0
    assert_trained_run(out, printed, model="vae", guide="mlp", epochs=2)
    assert "'toy' estimator" in printed and "toy term" in printed
    capsys.readouterr()
    assert main(["estimators"]) == 0
    assert "a toy Monte Carlo ELBO registered by a test" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_spec_answers_its_capabilities(name):
    spec = get_spec(name)
    assert isinstance(spec.objective(1), str) and isinstance(spec.objective(5), str)
    for facts in (SiteFacts(True, True), SiteFacts(True, False), SiteFacts(False, False)):
        term, gradient = spec.plan(facts)
        assert isinstance(term, str) and isinstance(gradient, str)
