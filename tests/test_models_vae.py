import pyro
import pytest
import torch
from _runs import assert_elbo_rises
from pyro import poutine

import ppl_vae
from ppl_vae.guides import MLPEncoder
from ppl_vae.models import VAE


@pytest.mark.parametrize("likelihood", ["bernoulli", "normal", "continuous_bernoulli"])
def test_each_likelihood_trains_in_the_data_dtype(digits, dtype, likelihood):
    x = digits.train[:96].to(dtype)
    model, guide = VAE(64, 3, hidden=16, likelihood=likelihood), MLPEncoder(64, 3, hidden=16)
    result = ppl_vae.fit(model, guide, x, epochs=6, batch_size=48, lr=1e-2, progress=False)
    assert_elbo_rises(result.history)
    trace = poutine.trace(poutine.replay(model, trace=poutine.trace(guide).get_trace(x))).get_trace(x)
    assert trace.nodes["x"]["fn"].log_prob(x).dtype == dtype
    assert trace.nodes["z"]["value"].shape == (96, 3)


def test_continuous_bernoulli_is_normalised_on_the_unit_interval():
    # The continuous Bernoulli integrates to one over [0, 1]; the soft-target Bernoulli does not
    # (its "density" integrates to (p - (1 - p)) / log(p / (1 - p)) < 1 for p != 1/2).
    model = VAE(1, 1, hidden=4, likelihood="continuous_bernoulli").double()
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)[:, None]
    z = torch.full((1, 1), 0.7, dtype=torch.float64)
    density = model.observation_dist(z).log_prob(grid).exp()
    assert torch.trapezoid(density, grid[:, 0]).item() == pytest.approx(1.0, abs=1e-6)


def test_unknown_likelihood_and_wrong_width():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        VAE(4, 2, likelihood="poisson")
    with pytest.raises(ValueError, match="built for 4 features"):
        VAE(4, 2)(torch.zeros(3, 5))


def test_two_instances_do_not_share_parameters(digits):
    x = digits.train[:32]
    a, b = VAE(64, 2, hidden=8), VAE(64, 2, hidden=8)
    names = set()
    for m in (a, b):
        trace = poutine.trace(m, param_only=True).get_trace(x)
        names |= set(trace.nodes)
    assert len(names) == 8  # 4 tensors each, none shared in pyro's param store
    assert len(pyro.get_param_store()) == 8
