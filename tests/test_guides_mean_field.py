"""Mean-field guides for the zoo's global-latent models."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints

from ppl_vae.data.datasets import load_eight_schools
from ppl_vae.guides import EightSchoolsGuide, RegressionGuide
from ppl_vae.guides.mean_field import mean_field_site


def test_positive_site_is_lognormal(dtype):
    loc = torch.tensor(0.3, dtype=dtype)
    raw = torch.tensor(0.5, dtype=dtype)
    pyro.set_rng_seed(0)
    trace = poutine.trace(lambda: [mean_field_site("t", loc, raw, constraints.positive)
                                   for _ in range(1)]).get_trace()
    site = trace.nodes["t"]
    value = site["value"]
    scale = torch.nn.functional.softplus(raw)
    expected = torch.distributions.LogNormal(loc, scale).log_prob(value)
    torch.testing.assert_close(site["fn"].log_prob(value), expected)
    assert value > 0 and value.dtype == dtype


def test_eight_schools_guide_follows_rows():
    ds = load_eight_schools()
    guide = EightSchoolsGuide(ds.train, ds.train_targets)
    with torch.no_grad():
        guide.theta_loc.copy_(torch.arange(8.0))
        guide.theta_raw_scale.fill_(-30.0)  # scale ~ 1e-13: the draw is the loc
    order = torch.tensor([5, 2, 7])
    trace = poutine.trace(guide).get_trace(ds.train[order], ds.train_targets[order])
    torch.testing.assert_close(trace.nodes["theta_tilde"]["value"], order.float())
    with pytest.raises(ValueError, match="rows \\[0\\]"):
        guide(torch.tensor([[99.0]]), torch.tensor([0.0]))


def test_regression_guide_sites(dtype):
    guide = RegressionGuide(3).to(dtype)
    trace = poutine.trace(guide).get_trace(torch.zeros(4, 3, dtype=dtype), None)
    assert trace.nodes["w"]["value"].shape == (3,)
    assert trace.nodes["b"]["value"].shape == ()
    assert trace.nodes["w"]["value"].dtype == dtype
