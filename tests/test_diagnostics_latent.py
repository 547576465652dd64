"""KL per dimension, active units and mutual information against closed-form answers."""

import numpy as np
import pytest
import torch
from _diagnostics_cases import exact_mutual_information, make_guide, model, posterior, simulate

from ppl_vae.diagnostics.latent import (
    active_units,
    kl_summary,
    latent_table,
    mutual_information,
)


def test_kl_per_dimension_and_active_units_are_exact(dtype):
    x = simulate(500, seed=1, dtype=dtype)
    table = latent_table(model, make_guide(), x)
    loc, sd = posterior(x)
    # KL(N(m, s^2) || N(0, 1)) = 0.5 (s^2 + m^2 - 1 - ln s^2), averaged over points.
    expected = (0.5 * (sd**2 + loc**2 - 1 - torch.log(sd**2))).mean(0)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert table["kl"].to_numpy() == pytest.approx(expected.numpy(), abs=tol)
    assert list(table["method"]) == ["analytic", "analytic"]
    # Dimension 1 is not in the likelihood: its posterior is the prior, a collapsed unit.
    assert list(table["active"]) == [True, False]
    assert active_units(table) == 1
    assert table["activity"].iloc[0] == pytest.approx(float(loc[:, 0].var(unbiased=False)), rel=1e-5)
    assert kl_summary(table)["kl_total"] == pytest.approx(float(expected.sum()), abs=tol)


def test_monte_carlo_kl_when_no_closed_form():
    import pyro
    import pyro.distributions as dist

    def student_guide(x):
        loc, sd = posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.StudentT(30.0, loc, sd).to_event(1))

    x = simulate(400, seed=1)
    table = latent_table(model, student_guide, x, num_samples=64)
    exact = latent_table(model, make_guide(), x)
    assert list(table["method"]) == ["monte carlo"] * 2
    # A t(30) guide is close to the Gaussian one: KLs agree to within the MC error (SE of a
    # 400 x 64-draw average of per-draw log ratios with sd ~1 is ~0.006; 5 SE).
    assert table["kl"].to_numpy() == pytest.approx(exact["kl"].to_numpy(), abs=0.05)


def test_mutual_information_of_the_gaussian_channel():
    x = simulate(1000, seed=1)
    mi = mutual_information(model, make_guide(), x, seed=5)
    # The estimator's spread over seeds is ~0.02 nats at N = 1000 (per-point terms have sd ~0.7
    # -> SE 0.022); the aggregate-posterior estimate adds a small O(1/N) bias. 3 SE.
    assert mi == pytest.approx(exact_mutual_information(), abs=0.07)
    assert mi <= np.log(1000)


def test_collapsed_guide_has_no_information():
    import pyro
    import pyro.distributions as dist

    def prior_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(2), x.new_ones(2)).to_event(1))

    x = simulate(300, seed=1)
    table = latent_table(model, prior_guide, x)
    assert active_units(table) == 0
    assert table["kl"].abs().max() < 1e-12
    assert abs(mutual_information(model, prior_guide, x)) < 1e-9
