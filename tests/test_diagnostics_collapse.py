"""Posterior collapse judged by information: reconstruction against the data mean, KL-aware
active units, mutual information against log N and a reference."""

import math

import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from _diagnostics_cases import SIGMA, make_guide, model, posterior, simulate, weights

from ppl_vae.diagnostics.collapse import reconstruction_gain
from ppl_vae.diagnostics.latent import kl_summary, latent_table, mutual_information
from ppl_vae.diagnostics.verdicts import collapse_rows


def prior_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x.new_zeros(2), x.new_ones(2)).to_event(1))


def test_reconstruction_gain_of_the_exact_posterior_is_the_closed_form():
    x = simulate(400, seed=1)
    r = reconstruction_gain(model, make_guide(), x, num_samples=64)
    # E_q log N(x | W z, s^2) = log N(x | W mu, s^2) - tr(W Sigma W^T) / (2 s^2); at z = 0:
    # log N(x | 0, s^2).
    mu, sd = posterior(x)
    w = weights(x.dtype)
    normal = torch.distributions.Normal
    exact = (normal(mu @ w.T, SIGMA).log_prob(x).sum(-1)
             - (w**2 * sd**2).sum() / (2 * SIGMA**2)).mean()
    base = normal(x.new_zeros(()), SIGMA).log_prob(x).sum(-1).mean()
    assert r.recon_prior_mean == pytest.approx(float(base), abs=1e-9)
    # MC error of 64 draws x 400 points: sd of log p(x|z) over q ~ 1 -> SE ~ 0.006.
    assert r.recon == pytest.approx(float(exact), abs=0.03)
    assert r.gain > 1.5  # about 2 nats: 0.5 (E x0^2 - E (x0 - 2 z)^2) = 0.5 (5 - 1)


def test_a_collapsed_guide_fails_the_reconstruction_and_unit_checks():
    x = simulate(300, seed=2)
    r = reconstruction_gain(model, prior_guide, x)
    assert r.gain < 0.1  # the code is noise: no better than the prior mean (here worse)
    latent = latent_table(model, prior_guide, x)
    mi = mutual_information(model, prior_guide, x)
    rows = pd.DataFrame(collapse_rows(latent, kl_summary(latent), mi, None, 300, r, None))
    status = rows.set_index("check")["status"]
    assert status["Reconstruction vs data mean"] == "failing"
    assert status["Active units"] == "failing"
    assert status["KL(q || prior)"] == "warning"
    exact = pd.DataFrame(collapse_rows(*_rows_of(model, make_guide(), x), None))
    assert (exact.set_index("check")["status"] == "ok").all(), exact


def _rows_of(m, g, x):
    latent = latent_table(m, g, x)
    return (latent, kl_summary(latent), mutual_information(m, g, x), None, x.shape[0],
            reconstruction_gain(m, g, x))


def test_a_unit_with_kl_near_zero_is_inactive_whatever_its_covariance():
    # q(z_0 | x) = N(0.04 x_0, 1): Cov_x of the mean = 0.0016 * 5 = 0.008... scaled to 0.015
    # (above Burda's 0.01) while its KL = 0.5 E[mu^2] = 0.0075 nats, below 0.01.
    x = simulate(2000, seed=3)
    a = math.sqrt(0.015 / 5.0)

    def weak_guide(x):
        loc = torch.stack([a * x[:, 0], x.new_zeros(x.shape[0])], -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, x.new_ones(2)).to_event(1))

    table = latent_table(model, weak_guide, x)
    assert table.loc[0, "activity"] > 0.01 and table.loc[0, "kl"] < 0.01
    assert not table.loc[0, "active"]
    assert table["active"].sum() == 0


def test_mutual_information_against_log_n_and_a_reference():
    x = simulate(200, seed=4)
    latent, kl, mi, reason, n, recon = _rows_of(model, make_guide(), x)
    rows = pd.DataFrame(collapse_rows(latent, kl, mi, reason, n, recon, reference_mi=mi / 0.1))
    row = rows.set_index("check").loc["Mutual information I(x; z)"]
    assert row["status"] == "failing" and "10% of the reference" in row["value"]
    assert f"of log N = {math.log(200):.2f}" in row["value"]
    ok = pd.DataFrame(collapse_rows(latent, kl, mi, reason, n, recon, reference_mi=mi))
    assert ok.set_index("check").loc["Mutual information I(x; z)", "status"] == "ok"


def test_mutual_information_does_not_apply_without_local_latents():
    def global_only(x):
        mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), x.new_ones(())))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu.unsqueeze(-1), 1.0).to_event(1), obs=x)

    def global_guide(x):
        pyro.sample("mu", dist.Normal(pyro.param("m", x.new_zeros(())), x.new_ones(())))

    x = simulate(20, seed=5)
    with pytest.raises(ValueError, match="does not apply"):
        mutual_information(global_only, global_guide, x)
    from ppl_vae.diagnostics import diagnose

    checks = diagnose(global_only, global_guide, x, num_draws=30, gaps=False,
                      calibrate=False).checks.set_index("check")
    assert checks.loc["Mutual information I(x; z)", "value"] == "does not apply"
    assert "no local latent" in checks.loc["Mutual information I(x; z)", "why"]


def test_an_untrained_vae_fails_and_a_trained_one_passes(digits):
    # An untrained decoder gains nothing from z (measured: -0.45 to -0.70 nats over 3 seeds);
    # a few epochs of training make the code worth more than the 0.1-nat / 1% floor.
    from ppl_vae import fit
    from ppl_vae.guides import MLPEncoder
    from ppl_vae.models import VAE

    x = torch.as_tensor(digits.test, dtype=torch.float32)
    pyro.set_rng_seed(0)
    vae, enc = VAE(64, 4, hidden=64), MLPEncoder(64, 4, hidden=64)

    def status():
        r = reconstruction_gain(vae, enc, x)
        rows = collapse_rows(pd.DataFrame(columns=["kl", "active"]), {"num_dims": 0}, 1.0, None,
                             len(x), r, None)
        return r.gain, rows[0]["status"]

    gain, verdict = status()
    assert gain < 0 and verdict == "failing"
    fit(vae, enc, torch.as_tensor(digits.train, dtype=torch.float32), epochs=5, batch_size=32,
        lr=3e-3, progress=False)
    gain, verdict = status()
    assert gain > 1.0 and verdict == "ok"


def _latent(kls):
    return pd.DataFrame({"site": "z", "dim": range(len(kls)), "kl": kls,
                         "activity": [1.0 if k >= 0.01 else 0.0 for k in kls],
                         "active": [k >= 0.01 for k in kls], "method": "analytic"})


class _Recon:
    def __init__(self, gain):
        self.recon, self.recon_prior_mean, self.gain = -20.0 + gain, -20.0, gain


@pytest.mark.parametrize("kls, mi, gain, status, advised", [
    ([0.8, 0.7, 0.5] + [0.001] * 17, 2.7, 6.2, "ok", False),  # the converged digits VAE: 3 of 20
    ([0.0] * 20, 0.0, 0.0, "failing", True),  # total collapse
    ([0.02, 0.001, 0.001, 0.001], 0.05, 0.01, "warning", True),  # partial, and z says nothing
    ([0.5, 0.6], 1.5, 3.0, "ok", False),  # every unit in use
])
def test_unused_units_are_flagged_only_when_the_code_carries_too_little(kls, mi, gain, status,
                                                                         advised):
    latent = _latent(kls)
    rows = pd.DataFrame(collapse_rows(latent, kl_summary(latent), mi, None, 300, _Recon(gain),
                                      None)).set_index("check")
    assert rows.loc["Active units", "status"] == status
    assert bool(rows.loc["Active units", "advice"]) == advised
    if status == "ok" and min(kls) < 0.01:
        assert "not collapse" in rows.loc["Active units", "why"]
