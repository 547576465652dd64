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


def _grad_both_ways(elbo, model, guide, x, params, seed):
    pyro.set_rng_seed(seed)
    via_loss = torch.autograd.grad(elbo.differentiable_loss(model, guide, x), params,
                                   allow_unused=True)
    for p in params:
        p.grad = None
    pyro.set_rng_seed(seed)
    elbo.loss_and_grads(model, guide, x)
    return via_loss, [p.grad for p in params]


@pytest.mark.parametrize("particles,vectorize", [(2, False), (3, True)])
@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_loss_and_grads_and_differentiable_loss_give_the_same_gradient(name, particles,
                                                                       vectorize):
    # What pyro.infer.SVI calls and what a torch training loop calls must be one estimator.
    from _linear_gaussian import PARAMS, make_programs, setup
    from _mixed_latent import PARAMS as MIXED_PARAMS
    from _mixed_latent import data
    from _mixed_latent import make_programs as mixed_programs

    x, init = setup()
    cases = [(make_programs(init), x, PARAMS)]
    if not get_spec(name).needs_rsample and name != "enum":
        cases.append((mixed_programs(), data(), MIXED_PARAMS))
    for (model, guide), batch, names in cases:
        pyro.clear_param_store()
        elbo = make_elbo(name, num_particles=particles, vectorize_particles=vectorize,
                         max_plate_nesting=1)
        elbo.loss(model, guide, batch)
        params = [pyro.param(n).unconstrained() for n in names]
        via_loss, via_grads = _grad_both_ways(elbo, model, guide, batch, params, seed=7)
        for a, b, n in zip(via_loss, via_grads, names, strict=True):
            assert a is not None and b is not None, n
            torch.testing.assert_close(a, b, msg=f"{name}: parameter {n}")


def _bernoulli_guide_programs():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            k = pyro.sample("k", dist.Bernoulli(x.new_tensor(0.3)))
            pyro.sample("x", dist.Normal(k, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("k", dist.Bernoulli(pyro.param("p", x.new_tensor(0.5))))

    return model, guide


def test_a_guide_site_without_rsample_is_refused_before_training_naming_who_accepts_it():
    model, guide = _bernoulli_guide_programs()
    accepting = sorted(n for n, s in ESTIMATORS.items() if not s.needs_rsample)
    assert {"mc", "score", "tracegraph", "stl", "iwae", "vimco", "enum"} <= set(accepting)
    refusing = [n for n, s in ESTIMATORS.items() if s.needs_rsample]
    assert set(refusing) == {"analytic", "dreg"}
    for name in refusing:
        with pytest.raises(ValueError) as info:
            preflight_warnings(name, model, guide, torch.randn(2))
        message = str(info.value)
        assert f"estimator {name!r}" in message and "site 'k' (Bernoulli)" in message
        assert message.endswith(", ".join(accepting))
    for name in accepting:
        if name != "enum":
            assert isinstance(preflight_warnings(name, model, guide, torch.randn(2)), list)
    # fit says the same before its first step, instead of Pyro's bare "All distributions in the
    # guide must be fully reparameterized" (analytic), also with jit=True.
    for name, jit in (("analytic", False), ("analytic", True), ("dreg", False)):
        pyro.clear_param_store()
        with pytest.raises(ValueError, match=r"guide site 'k' \(Bernoulli\) has no rsample; "
                                             r"estimators that accept it: enum, iwae"):
            ppl_vae.fit(model, guide, torch.randn(8), estimator=name, jit=jit, epochs=1,
                        batch_size=8, num_particles=2, progress=False)


def test_explain_enum_labels_an_enumerated_guide_site_as_summed_out():
    model, guide = _bernoulli_guide_programs()
    guide = pyro.infer.config_enumerate(guide, "parallel")
    x = torch.randn(3)
    assert explain_row(model, guide, x, "enum") == ("enumerated (exact sum)", "exact")
    # mc ignores the mark and samples the site: a score-function term.
    assert explain_row(model, guide, x, "mc") == ("score function", "score function")


def explain_row(model, guide, x, estimator):
    row = ppl_vae.explain(model, guide, x, estimator=estimator).iloc[0]
    return row["term"], row["gradient"]


def test_iwae_with_one_particle_is_trace_elbo_with_factors_in_model_and_guide(dtype):
    # pyro.factor in the guide counts as part of log q, as in Trace_ELBO; in the model, of log p.
    def model(x):
        loc = pyro.param("loc", x.new_tensor(0.2))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(loc, 1.0))
            pyro.factor("penalty", -0.5 * z**2)
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x):
        m = pyro.param("m", x.new_zeros(x.shape))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(m, 0.7))
            pyro.factor("guide_factor", 0.3 * m * z, has_rsample=True)

    x = torch.tensor([0.5, -1.0, 2.0], dtype=dtype)
    grads = {}
    for name, elbo in (("iwae", make_elbo("iwae")), ("mc", pyro.infer.Trace_ELBO())):
        pyro.clear_param_store()
        pyro.set_rng_seed(5)
        loss = elbo.differentiable_loss(model, guide, x)
        grads[name] = (loss, *torch.autograd.grad(loss, [pyro.param("loc"), pyro.param("m")]))
    for a, b in zip(grads["iwae"], grads["mc"], strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("vectorize", [False, True])
@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_the_minibatch_scale_multiplies_every_gradient(name, vectorize):
    # The same draws on a mini-batch of a 10 times larger data set: N / B = 10 times the
    # gradient, score-function terms included (Pyro keeps score_function unscaled).
    from _mixed_latent import PARAMS, data, make_programs

    from ppl_vae.programs.handlers import ScaledProgram

    if get_spec(name).needs_rsample or name == "enum":
        pytest.skip("the mixed programs have a Bernoulli guide site")
    x, grads = data().repeat(2), []
    for num_data in (6, 60):
        pyro.clear_param_store()
        model, guide = make_programs()
        elbo = make_elbo(name, num_particles=3, vectorize_particles=vectorize,
                         max_plate_nesting=1)
        loss_fn = elbo(ScaledProgram(model, num_data, "data"), ScaledProgram(guide, num_data, "data"))
        loss_fn(x)
        pyro.set_rng_seed(0)
        params = [pyro.param(n).unconstrained() for n in PARAMS]
        grads.append(torch.stack(torch.autograd.grad(loss_fn(x), params)))
    torch.testing.assert_close(grads[1], 10 * grads[0])


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_trains_the_digits_vae(name, digits):
    from ppl_vae.guides import MLPEncoder
    from ppl_vae.models import VAE

    torch.manual_seed(0)
    model, guide = VAE(64, 4, hidden=32), MLPEncoder(64, 4, hidden=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # enum: no site marked for enumeration
        result = ppl_vae.fit(model, guide, digits.train[:512], estimator=name, num_particles=4,
                             vectorize_particles=True, epochs=4, batch_size=64, lr=3e-3,
                             progress=False)
    elbo = result.history["train_elbo"]
    assert elbo.iloc[-1] > elbo.iloc[0] + 2.0, (name, elbo.round(2).tolist())


# --- pyro.factor in the guide (scANVI's classifier term) ---------------------------------------

def _factor_programs(has_rsample, dtype=torch.float64):
    import pyro.distributions as dist
    from pyro import poutine

    net = torch.nn.Linear(3, 4).to(dtype)

    def model(x):
        pyro.module("net", net)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("net", net)
        loc, log_scale = net(x.expand(-1, 3)).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))
            with poutine.mask(mask=x[:, 0] > 0):  # on some points only, as labelled cells
                pyro.factor("aux", -(z - 1).pow(2).sum(-1), has_rsample=has_rsample)

    return model, guide, net


@pytest.mark.parametrize("estimator, has_rsample, jit", [
    ("mc", False, False), ("mc", False, "auto"), ("mc", True, "auto"),
    ("analytic", True, False), ("analytic", True, "auto")])
def test_guide_factor_loss_and_gradients_equal_pyros(estimator, has_rsample, jit):
    """The loss and every gradient at the same parameters and seed equal Pyro's ELBO, which
    counts a guide factor as a log q term (its score term when has_rsample=False)."""
    from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

    model, guide, net = _factor_programs(has_rsample)
    x = torch.linspace(-1, 1, 6, dtype=torch.float64)[:, None]
    ref_elbo = {"mc": Trace_ELBO, "analytic": TraceMeanField_ELBO}[estimator]()

    def loss_and_grads(loss_fn):
        pyro.set_rng_seed(4)
        net.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        return float(loss), [p.grad.clone() for p in net.parameters()]

    ours = loss_and_grads(make_elbo(estimator, jit=jit)(model, guide))
    want = loss_and_grads(ref_elbo(model, guide))
    pyro.set_rng_seed(4)
    assert ours[0] == pytest.approx(ref_elbo.loss(model, guide, x), rel=1e-10)
    assert ours[0] == pytest.approx(want[0], rel=1e-10)
    for got, expected in zip(ours[1], want[1], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)
    # The factor is in the loss: without it the value differs.
    assert any(g.abs().sum() > 0 for g in ours[1])


@pytest.mark.parametrize("estimator, has_rsample", [
    ("iwae", True), ("stl", True), ("score", False), ("analytic", False), ("enum", True)])
def test_estimators_without_a_place_for_guide_factors_refuse_them_by_name(estimator,
                                                                          has_rsample):
    import ppl_vae

    model, guide, _ = _factor_programs(has_rsample)
    x = torch.linspace(-1, 1, 6, dtype=torch.float64)[:, None]
    with pytest.raises(ValueError, match=rf"estimator '{estimator}' cannot train the guide's "
                       r"factor site 'aux'.*as Pyro does: .*mc"):
        ppl_vae.fit(model, guide, x, estimator=estimator, epochs=1, batch_size=6,
                    progress=False)
    assert get_spec("mc").guide_factors == "any"
