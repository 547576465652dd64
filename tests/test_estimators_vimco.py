"""VIMCO and the mixed IWAE estimator, tested against the exact gradient of the IWAE bound on a
model with a Bernoulli and a Gaussian latent (enumeration over all K-tuples of discrete draws,
Gauss-Hermite quadrature over the Gaussian ones)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from _mixed_latent import GUIDE_PARAMS, data, exact_bound_and_gradient, gradient_draws
from _mixed_latent import make_programs as mixed_programs

from ppl_vae import explain
from ppl_vae.estimators._bound import leave_one_out_bound
from ppl_vae.estimators.registry import make_elbo

K = 3


def _assert_unbiased(draws, exact):
    # Rows are independent estimates: standard error = row std / sqrt(rows).
    z = (draws.mean(0) - exact) / (draws.std(0) / draws.shape[0] ** 0.5)
    # z is t-distributed (29 degrees of freedom): 8 elements, each |t| < 4.5 and sum t^2 < 31
    # fail with probability < 1e-3 when unbiased.
    assert z.abs().max() < 4.5, z
    assert float((z**2).sum()) < 31, z


@pytest.fixture(scope="module")
def exact():
    bound, grad = exact_bound_and_gradient(data(), K, nodes=12)
    return bound, -grad  # sum over the three points: the bound, and the gradient of -L_K


@pytest.mark.parametrize("estimator,vectorize,scale", [
    ("vimco", True, 1), ("iwae", True, 1), ("vimco", False, 1),
    # a mini-batch of a data set 10 times larger: N / B outside the log-mean-exp, and the
    # score terms' learning signals scaled with it (Pyro keeps score_function unscaled)
    ("vimco", True, 10), ("iwae", False, 10),
])
def test_unbiased_for_the_exact_iwae_gradient(estimator, vectorize, scale, exact):
    draws = gradient_draws(estimator, data(), K, calls=30, repeat=300, vectorize=vectorize,
                           minibatch_scale=scale)
    _assert_unbiased(draws, exact[1])


def test_mixed_iwae_with_a_non_reparameterized_gaussian_is_unbiased_too(exact):
    # With u's rsample hidden, iwae gives u a score-function term as well: same gradient.
    draws = gradient_draws("iwae", data(), K, calls=30, repeat=300, reparameterized_u=False)
    _assert_unbiased(draws, exact[1])


def test_a_wrong_baseline_is_detected(exact, monkeypatch):
    # The test has power: a baseline that uses particle k's own weight biases the gradient.
    import ppl_vae.estimators.iwae as iwae

    monkeypatch.setattr(iwae, "leave_one_out_bound", lambda log_w: log_w)
    draws = gradient_draws("vimco", data(), K, calls=30, repeat=300)
    z = (draws.mean(0) - exact[1]) / (draws.std(0) / draws.shape[0] ** 0.5)
    assert z.abs().max() > 6


def test_value_is_the_iwae_bound_and_the_same_as_iwae(exact):
    x = data().repeat(400)
    model, guide = mixed_programs()
    values = {}
    for name in ("vimco", "iwae"):
        pyro.set_rng_seed(3)
        elbo = make_elbo(name, num_particles=K, vectorize_particles=True, max_plate_nesting=1)
        values[name] = torch.stack([elbo.differentiable_loss(model, guide, x).detach()
                                    for _ in range(5)])
    torch.testing.assert_close(values["vimco"], values["iwae"])
    per_point = -values["vimco"].double() / 400  # per copy of the three points
    se = float(per_point.std()) / 5**0.5
    assert abs(float(per_point.mean()) - exact[0]) < 4 * se + 1e-3


def test_leave_one_out_bound_by_hand():
    log_w = torch.tensor([[0.3, -1.0], [2.0, 0.5], [-0.4, 0.1]], dtype=torch.float64)  # (K, N)
    got = leave_one_out_bound(log_w)
    for k in range(3):
        others = torch.cat([log_w[:k], log_w[k + 1:]])
        replaced = torch.cat([others, others.mean(0, keepdim=True)])
        torch.testing.assert_close(got[k], torch.logsumexp(replaced, 0) - math.log(3))


def test_vimco_with_one_particle_warns_that_it_has_no_baseline():
    with pytest.warns(UserWarning, match="no baseline.*num_particles >= 2"):
        make_elbo("vimco", num_particles=1)


def test_vimco_float32_and_float64(dtype):
    x = data(dtype).repeat(4)
    model, guide = mixed_programs()
    loss = make_elbo("vimco", num_particles=4, vectorize_particles=True)(model, guide)(x)
    assert loss.dtype == dtype and torch.isfinite(loss)
    loss.backward()
    assert all(pyro.param(n).grad.dtype == dtype for n in GUIDE_PARAMS)


def test_explain_shows_the_score_function_at_every_site():
    model, guide = mixed_programs()
    plan = explain(model, guide, data(), estimator="vimco").set_index("site")
    assert set(plan["term"]) == {"score function"}
    assert "VIMCO" in plan.loc["u", "gradient"]
    mixed = explain(model, guide, data(), estimator="iwae").set_index("site")
    assert mixed.loc["z", "term"] == "score function" and "VIMCO" in mixed.loc["z", "gradient"]
    assert mixed.loc["u", "gradient"].startswith("reparameterized")


def test_vimco_and_iwae_train_a_binary_code_vae(digits):
    from _discrete_vae import BinaryCodeVAE

    from ppl_vae import fit

    for name in ("vimco", "iwae"):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = BinaryCodeVAE(64, code=8, hidden=32)
        result = fit(vae.model, vae.guide, (digits.train > 0.5).float(), estimator=name, num_particles=4,
                     vectorize_particles=True, epochs=4, batch_size=128, lr=3e-3,
                     progress=False)
        elbo = result.history["train_elbo"]
        assert elbo.iloc[-1] > elbo.iloc[0] + 2.0, (name, elbo.tolist())


def test_a_discrete_site_outside_a_plate():
    # A global Categorical latent: the joint bound over the batch, no plate shared.
    x = torch.tensor([0.3, -1.2, 2.0])

    def model(x):
        c = pyro.sample("c", dist.Categorical(logits=x.new_zeros(3)))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(x.new_tensor([-1.0, 0.0, 1.0])[c], 1.0), obs=x)

    def guide(x):
        pyro.sample("c", dist.Categorical(logits=pyro.param("l", x.new_zeros(3))))

    loss = make_elbo("vimco", num_particles=5, vectorize_particles=True)(model, guide)(x)
    loss.backward()
    assert torch.isfinite(pyro.param("l").grad).all()
