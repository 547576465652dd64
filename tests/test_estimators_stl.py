"""The sticking-the-landing estimator, tested against closed-form ELBO gradients."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from _linear_gaussian import (
    GUIDE_PARAMS,
    NaiveELBO,
    exact_gradient,
    gradient_draws,
    make_programs,
    param_slices,
    setup,
)
from pyro.infer import Trace_ELBO

from ppl_vae.estimators.registry import make_elbo
from ppl_vae.estimators.stl import StickingTheLandingELBO


def _z_scores(draws, exact):
    # Each row averages 100 particles; rows are independent, so the standard error of the
    # mean over R rows is their sample std / sqrt(R).
    se = draws.std(0) / draws.shape[0] ** 0.5
    return (draws.mean(0) - exact) / se


def test_stl_is_unbiased_for_the_elbo_gradient():
    x, init = setup()
    draws = gradient_draws("stl", x, init, calls=40, particles=100)
    z = _z_scores(draws, exact_gradient(x, init))
    # 19 elements: |z| < 4.5 for all of them fails with probability < 1e-3 under unbiasedness.
    assert z.abs().max() < 4.5
    # and the aggregate: sum z^2 ~ chi2(19), whose 0.9999 quantile is about 51.
    assert float((z**2).sum()) < 51


def test_stl_guide_gradient_vanishes_at_the_exact_posterior():
    x, init = setup(exact_posterior=True)
    guide = torch.cat([torch.arange(param_slices(init)[k].start, param_slices(init)[k].stop)
                       for k in GUIDE_PARAMS])
    stl = gradient_draws("stl", x, init, calls=20, particles=1)
    mc = gradient_draws("mc", x, init, calls=20, particles=1)
    assert float(stl[:, guide].var(0).sum()) < 1e-20  # zero up to float64 rounding
    assert float(mc[:, guide].var(0).sum()) > 1.0  # the score term is what mc keeps
    # The model's parameters still get an ordinary Monte Carlo gradient.
    assert float(stl[:, :9].var(0).sum()) > 0.1


def test_naive_detached_path_gradient_is_biased():
    x, init = setup()
    pyro.clear_param_store()
    model, guide = make_programs(init)
    naive = NaiveELBO(num_particles=10)(model, guide)
    draws = gradient_draws(None, x, init, calls=30, particles=10, loss_fn=naive)
    z = _z_scores(draws, exact_gradient(x, init))
    # The guide's gradient loses the path term: dozens of standard errors off.
    assert z.abs().max() > 20


def test_stl_value_equals_trace_elbo_on_the_same_draws(dtype):
    x, init = setup(dtype)
    model, guide = make_programs(init)
    pyro.set_rng_seed(3)
    ours = StickingTheLandingELBO(num_particles=3).differentiable_loss(model, guide, x)
    pyro.set_rng_seed(3)
    theirs = Trace_ELBO(num_particles=3).differentiable_loss(model, guide, x)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, theirs)
    pyro.set_rng_seed(3)
    assert StickingTheLandingELBO(num_particles=3).loss(model, guide, x) == pytest.approx(
        float(theirs.detach()), rel=1e-5)


def test_stl_keeps_the_path_through_earlier_draws():
    # A guide in which z2's distribution depends on the draw z1 can be the exact posterior of
    # the chain z1 -> z2 -> x; STL's guide gradient is then zero for every draw only if the
    # path through z1 into q(z2 | z1) is kept (detaching q's parameters would drop it).
    sig = 0.5
    x = torch.tensor(1.3, dtype=torch.float64)
    prec = torch.tensor([[2.0, -1.0], [-1.0, 1 + 1 / sig**2]], dtype=torch.float64)
    cov = torch.linalg.inv(prec)
    mu = cov @ torch.stack([x.new_zeros(()), x / sig**2])
    a = cov[1, 0] / cov[0, 0]
    init = {"m1": mu[0], "ls1": 0.5 * cov[0, 0].log(), "a": a, "m2": mu[1] - a * mu[0],
            "ls2": 0.5 * (cov[1, 1] - cov[1, 0] ** 2 / cov[0, 0]).log()}

    def model(x):
        z1 = pyro.sample("z1", dist.Normal(x.new_zeros(()), 1.0))
        z2 = pyro.sample("z2", dist.Normal(z1, 1.0))
        pyro.sample("x", dist.Normal(z2, sig), obs=x)

    def guide(x):
        p = {k: pyro.param(k, v.clone()) for k, v in init.items()}
        z1 = pyro.sample("z1", dist.Normal(p["m1"], p["ls1"].exp()))
        pyro.sample("z2", dist.Normal(p["a"] * z1 + p["m2"], p["ls2"].exp()))

    loss_fn = make_elbo("stl")(model, guide)
    loss_fn(x)
    params = [pyro.param(k) for k in init]
    grads = torch.stack([torch.stack(torch.autograd.grad(loss_fn(x), params)) for _ in range(20)])
    assert float(grads.abs().max()) < 1e-10


def test_stl_vectorized_particles_and_module(dtype):
    x, init = setup(dtype)
    model, guide = make_programs(init)
    loss_fn = make_elbo("stl", num_particles=4, vectorize_particles=True)(model, guide)
    assert isinstance(loss_fn, torch.nn.Module)
    loss = loss_fn(x)
    assert loss.dtype == dtype and loss.requires_grad
    loss.backward()
    assert pyro.param("A").unconstrained().grad is not None


@pytest.mark.parametrize("estimator", ["stl", "tracegraph"])
@pytest.mark.parametrize("particles", [1, 4])
def test_mixed_guide_is_unbiased_for_the_exact_elbo_gradient(estimator, particles):
    # A Bernoulli site (score function) beside a Gaussian one (path derivative / pathwise);
    # the ELBO is the K = 1 bound, enumerated and integrated exactly.
    from _mixed_latent import data, exact_bound_and_gradient, gradient_draws

    _, exact = exact_bound_and_gradient(data(), 1, nodes=40)
    draws = gradient_draws(estimator, data(), particles, calls=30, repeat=300)
    z = (draws.mean(0) + exact) / (draws.std(0) / draws.shape[0] ** 0.5)
    # z is t-distributed (29 degrees of freedom): 8 elements, each |t| < 4.5 and sum t^2 < 31
    # fail with probability < 1e-3 when unbiased.
    assert z.abs().max() < 4.5, z
    assert float((z**2).sum()) < 31, z


@pytest.mark.parametrize("estimator", ["stl", "tracegraph"])
def test_trains_a_binary_code_vae(estimator, digits):
    from _discrete_vae import BinaryCodeVAE

    from ppl_vae import fit

    torch.manual_seed(0)
    vae = BinaryCodeVAE(64, code=8, hidden=32)
    result = fit(vae.model, vae.guide, (digits.train > 0.5).float(), estimator=estimator,
                 num_particles=4, vectorize_particles=True, epochs=4, lr=3e-3, progress=False)
    elbo = result.history["train_elbo"]
    assert elbo.iloc[-1] > elbo.iloc[0] + 2.0, elbo.tolist()


def test_stl_has_no_jit_variant():
    with pytest.raises(ValueError, match="jit"):
        make_elbo("stl", jit=True)


def test_stl_trains_the_digits_vae(digits, dtype):
    from ppl_vae import fit
    from ppl_vae.guides import MLPEncoder
    from ppl_vae.models import VAE

    model, guide = VAE(64, 4, hidden=16), MLPEncoder(64, 4, hidden=16)
    result = fit(model, guide, digits.train, estimator="stl", epochs=2, dtype=dtype,
                 progress=False)
    elbo = result.history["train_elbo"]
    # Measured: about -43.3 nats per image in epoch 1, -40.7 in epoch 2 (both dtypes); an epoch's
    # mean over 1437 images moves by well under 0.5 nats from noise alone.
    assert elbo.iloc[1] > elbo.iloc[0] + 1.0, elbo.tolist()
    assert next(guide.parameters()).dtype == dtype
