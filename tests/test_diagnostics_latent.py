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


# --- the latent table against evaluate's KL on every corpus program ----------------------------

CORPUS = ["vae_soft", "ssvae", "dmm", "bayes_regression:diagonal", "subsampled", "prodlda",
          "scanvi", "gmm", "scvi_plate", "air_like", "cvae"]


@pytest.mark.filterwarnings("ignore:.*enumerate sites")
@pytest.mark.parametrize("program", CORPUS)
def test_latent_table_kl_agrees_with_evaluate_on_the_corpus(program):
    """Sum over dimensions of the table's KL (times the site's own scale: scANVI's
    1 / (batch x genes)) = evaluate's KL less its global part and less the guide's factors
    (log q terms of evaluate's KL, not latents), to Monte Carlo error (ProdLDA's batch-normed
    decoder is drawn one draw at a time: its table once read the points as draws). The
    standard error comes from the same number of draws."""
    import importlib
    import math

    import ppl_vae
    from ppl_vae.evaluation.chunks import chunk_draws, plan_points

    name, _, variant = program.partition(":")
    module = importlib.import_module(f"programs.{name}")
    model, guide = module.make(torch.float64, variant) if variant else module.make(torch.float64)
    data = module.data(torch.float64)
    ppl_vae.fit(model, guide, data, estimator=module.ESTIMATORS[0], epochs=2, batch_size=10,
                progress=False, elbo_options=module.ELBO_OPTIONS)
    k = 200
    evaluation = ppl_vae.evaluate(model, guide, data, num_samples=k)
    table = latent_table(model, guide, data, data_plate=module.DATA_PLATE, num_samples=k)
    # The draws on all points in one chunk, one by one where they do not vectorize (dmm).
    plan = plan_points(model, guide, data, num_draws=k, data_plate=module.DATA_PLATE,
                       chunk_size=10**6)
    plan_n = plan.num_points
    d = chunk_draws(plan, model, guide, data, 0, num_draws=k, seed=3)
    local = ((d.log_q - d.log_prior).sum(1) / plan_n).double()
    glob = ((d.log_q_global - d.log_prior_global) / plan_n).double()
    assert (len(table) > 0) == bool(d.local_sites)
    assert not table["kl"].isna().groupby(table["site"]).all().any()  # every site has a KL
    factors = _guide_factor_share(model, guide, data, k, plan_n)
    se = math.sqrt(float((local + glob).var() + glob.var() + local.var() + factors.var()) / k)
    table_kl = float((table["kl"] * table["scale"]).sum()) if len(table) else 0.0
    want = evaluation["kl"] - float(glob.mean()) - float(factors.mean())
    assert table_kl == pytest.approx(want, abs=4 * se + 1e-9)


def _guide_factor_share(model, guide, data, k, n):
    """Per draw, the guide's pyro.factor terms (scaled and masked as Pyro scores them) per
    data point, from plain Pyro traces with the modules in eval mode."""
    import pyro
    from pyro import poutine

    owner = getattr(guide, "__self__", None)
    was = owner.training if isinstance(owner, torch.nn.Module) else None
    if was is not None:
        owner.eval()
    out = []
    with torch.no_grad(), pyro.validation_enabled(False):
        for _ in range(k):
            trace = poutine.trace(guide).get_trace(*data)
            trace.compute_log_prob()
            out.append(sum(float(site["log_prob_sum"]) for site in trace.nodes.values()
                           if site["type"] == "sample" and site["is_observed"]) / n)
    if was is not None:
        owner.train(was)
    return torch.tensor(out, dtype=torch.float64)


def test_mutual_information_of_several_sites_cannot_exceed_log_n(dtype):
    """Two local sites that each identify their point (sd 0.01 around well-separated x): each
    alone carries log N - O(e^-gap), so summing per-site informations gave about 2 log N
    (scANVI's three sites showed 131-174% of log N). The joint estimate is at most log N."""
    import math

    import pyro
    import pyro.distributions as dist

    x = torch.arange(20, dtype=dtype)[:, None] * 3.0

    def guide_of(names):
        def guide(x):
            with pyro.plate("data", x.shape[0]):
                for name in names:
                    pyro.sample(name, dist.Normal(x, 0.01).to_event(1))
        return guide

    def model_of(names):
        def model(x):
            with pyro.plate("data", x.shape[0]):
                for name in names:
                    pyro.sample(name, dist.Normal(0.0, 30.0).expand([1]).to_event(1))
        return model

    def mi(names):
        return mutual_information(model_of(names), guide_of(names), x, data_plate="data")

    log_n = math.log(20)
    assert mi(["a"]) + mi(["b"]) > 1.9 * log_n  # what the per-site sum reported
    joint = mi(["a", "b"])
    assert joint <= log_n * (1 + 4 * torch.finfo(dtype).eps)  # up to rounding
    # Points 3 apart at sd 0.01: every cross density is below e^-40000, so I = log N.
    assert joint == pytest.approx(log_n, abs=1e-6)
