"""Inference-gap split (Cremer et al. 2018) and per-point log-evidence on the conjugate case."""

import pytest
import torch
from _diagnostics_cases import SIGMA, make_guide, model, posterior, simulate

from ppl_vae.diagnostics.gaps import inference_gaps, log_evidence


def _exact_log_px(x):
    # Marginal: x ~ N(0, W W^T + sigma^2 I), diagonal here: variances (4 + s^2, s^2, s^2).
    var = torch.tensor([4 + SIGMA**2, SIGMA**2, SIGMA**2], dtype=x.dtype)
    return torch.distributions.Normal(0.0, var.sqrt()).log_prob(x).sum(-1)


def test_log_evidence_of_the_exact_posterior_is_exact():
    x = simulate(30, seed=1)
    table = log_evidence(model, make_guide(), x, num_samples=50)
    assert table["log_px"].to_numpy() == pytest.approx(_exact_log_px(x).numpy(), abs=1e-9)
    assert table["elbo_gap"].abs().max() < 1e-9


def test_amortization_gap_of_a_shifted_encoder(dtype):
    # The encoder's mean is off by 0.3 in each dimension but its spread is exact: the family
    # holds the posterior, so refinement closes the gap. Amortization gap = KL(q || posterior)
    # = sum_d 0.3^2 / (2 sd_d^2); approximation gap = 0.
    x = simulate(16, seed=1, dtype=dtype)
    _, sd = posterior(x)
    expected = float((0.3**2 / (2 * sd**2)).sum())
    table = inference_gaps(model, make_guide(shift=0.3), x, num_points=16, steps=300, lr=0.02,
                           num_particles=16, num_samples=2000)
    assert len(table) == 16
    # MC error of the amortized ELBO with 2000 draws: sd(log r) ~ 0.6 -> SE 0.013 per point,
    # ~0.004 on the mean over 16 points; the refined q is exact, so its log ratios are constant.
    assert table["amortization_gap"].mean() == pytest.approx(expected, abs=0.02)
    # What stochastic refinement leaves: q* jitters around the posterior (~0.01 nats).
    assert table["approximation_gap"].mean() < 0.02
    # log p(x) is the better of two 2000-draw IWAE estimates: unbiased up to O(1/K), with
    # per-point noise of a few hundredths when the refined q is slightly off.
    error = table["log_px"].to_numpy() - _exact_log_px(x).double().numpy()
    assert abs(error.mean()) < 0.01 and abs(error).max() < 0.05


def test_narrow_encoder_gap_is_also_amortization():
    # Right mean, half the spread: refining the scale recovers the posterior as well.
    x = simulate(8, seed=2)
    table = inference_gaps(model, make_guide(width=0.5), x, num_points=8, steps=300, lr=0.02,
                           num_particles=16)
    expected = 2 * 0.5 * (0.25 - 1 - torch.log(torch.tensor(0.25)).item())
    assert table["amortization_gap"].mean() == pytest.approx(expected, abs=0.03)
    assert table["approximation_gap"].mean() < 0.03


def test_non_reparameterised_guide_is_refused():
    import pyro
    import pyro.distributions as dist

    def discrete_model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(x.new_full((), 0.5)))
            pyro.sample("x", dist.Normal(c.unsqueeze(-1), 1.0).to_event(1), obs=x)

    def discrete_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(torch.sigmoid(x[:, 0])))

    with pytest.raises(ValueError, match="site 'c'"):
        inference_gaps(discrete_model, discrete_guide, simulate(4), steps=1)
