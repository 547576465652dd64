import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from _linear_gaussian import LinearGaussian

import ppl_vae


def test_exact_posterior_gives_the_exact_evidence():
    lg = LinearGaussian()
    x = lg.sample(50)
    ev = ppl_vae.evaluate(lg.model, lg.guide, x, num_samples=20)
    exact = float(lg.log_evidence(x).mean())
    # With q = p(z | x) every importance weight equals p(x): no Monte Carlo error at all.
    assert ev["elbo"] == pytest.approx(exact, abs=1e-9)
    assert ev["iwae"] == pytest.approx(exact, abs=1e-9)
    assert ev["recon"] - ev["kl"] == pytest.approx(ev["elbo"])


def test_wider_guide_elbo_below_iwae_below_evidence():
    lg = LinearGaussian()
    x = lg.sample(200)

    def guide(x):
        return lg.guide(x, scale_factor=1.5)

    exact = float(lg.log_evidence(x).mean())
    ev = ppl_vae.evaluate(lg.model, guide, x, num_samples=200)
    # KL(q || p) for a Gaussian whose covariance is 1.5^2 times the posterior's, per point:
    # 0.5 * L * (s^2 - 1 - log s^2) with L = 2.
    gap = 0.5 * 2 * (1.5**2 - 1 - math.log(1.5**2))
    # Standard error of the ELBO estimate: the log-weight sd / sqrt(K N) is below 0.01 here.
    assert ev["elbo"] == pytest.approx(exact - gap, abs=0.03)
    # IWAE is below log p(x) in expectation; one estimate is not: its standard error here is
    # sqrt(Var_q(w) / E[w]^2 / (K N)) = sqrt(0.447 / (200 * 200)) = 0.0033 (0.447 = 1.203^2 - 1,
    # per dimension s^2 / sqrt(2 s^2 - 1) = 1.203 for s = 1.5), so allow three of them.
    assert ev["elbo"] < ev["iwae"] <= exact + 0.01


def test_evaluation_prints_as_a_table(digits):
    from ppl_vae.guides import MLPEncoder
    from ppl_vae.models import VAE

    ev = ppl_vae.evaluate(VAE(64, 3, hidden=16), MLPEncoder(64, 3, hidden=16), digits.test[:20],
                          num_samples=5)
    assert set(ev) >= {"elbo", "iwae", "kl", "recon"}
    assert all(isinstance(ev[k], float) for k in ("elbo", "iwae", "kl", "recon"))
    assert "iwae" in str(ev) and "<table" in ev._repr_html_()


def test_global_latent_is_counted_once():
    import pyro
    import pyro.distributions as dist

    def model(x):
        mu = pyro.sample("mu", dist.Normal(x.new_tensor(0.0), 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def guide(x):  # the exact posterior of mu
        n = x.shape[0]
        pyro.sample("mu", dist.Normal(x.sum() / (n + 1), (1.0 / (n + 1)) ** 0.5))

    x = torch.randn(30, dtype=torch.float64)
    cov = torch.eye(30, dtype=torch.float64) + 1.0
    exact = float(dist.MultivariateNormal(torch.zeros(30, dtype=torch.float64), cov).log_prob(x)) / 30
    ev = ppl_vae.evaluate(model, guide, x, num_samples=10)
    assert ev["iwae"] == pytest.approx(exact, abs=1e-9)
    assert ev["elbo"] == pytest.approx(exact, abs=1e-9)


def _normal_model(x):
    loc = pyro.param("loc", torch.zeros((), dtype=x.dtype))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, 1.0), obs=x)


def _no_guide(x):
    pass


def test_non_finite_metrics_warn_naming_the_term_and_the_row():
    x = torch.zeros(6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # finite: nothing to say
        ok = ppl_vae.evaluate(_normal_model, _no_guide, x, num_samples=2)
    assert math.isfinite(ok["elbo"])
    pyro.get_param_store()["loc"] = torch.tensor(float("nan"))  # parameters gone NaN
    with pytest.warns(UserWarning, match=r"elbo, iwae, recon not finite: the model's likelihood "
                      r"log p\(x \| z\) is NaN or infinite at 6 data point\(s\), the first row 0"):
        bad = ppl_vae.evaluate(_normal_model, _no_guide, x, num_samples=2)
    assert math.isnan(bad["elbo"])
