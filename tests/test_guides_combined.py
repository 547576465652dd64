"""LocalGlobalGuide: an amortized local guide plus an AutoNormal over the global latents."""

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ppl_vae import evaluate, fit
from ppl_vae.data.datasets import make_linear_gaussian
from ppl_vae.guides import LocalGlobalGuide, MLPEncoder, global_part
from ppl_vae.models import GlobalLocalVAE


def test_global_part_hides_data_plate_sites():
    model = GlobalLocalVAE(3, 2, hidden=4)
    trace = poutine.trace(global_part(model)).get_trace(torch.zeros(5, 3))
    sites = [n for n, s in trace.nodes.items()
             if s["type"] == "sample" and not site_is_subsample(s)]
    assert sites == ["b", "sigma"]


def test_autonormal_globals_with_amortized_locals():
    ds = make_linear_gaussian(n=500, obs_dim=5, latent_dim=2, noise=0.5).to(torch.float64)
    x = ds.train
    model = GlobalLocalVAE(5, 2, hidden=())
    guide = LocalGlobalGuide(model, MLPEncoder(5, 2, hidden=32))
    fit(model, guide, x, epochs=100, batch_size=200, lr=0.03, estimator="mc", progress=False,
        seed=0)
    median = guide.global_guide.median()
    assert median["b"].dtype == torch.float64
    # Same checks (and reasons) as for the hand-written GlobalLocalGuide: b's posterior mean is
    # the sample mean within 1.5 standard errors (measured 0.6), sigma near the generating 0.5.
    se = x.std(0) / len(x) ** 0.5
    err = ((median["b"].detach() - x.mean(0)) / se).abs()
    assert bool((err < 1.5).all()), err
    assert abs(float(median["sigma"]) - 0.5) < 0.1
    # evaluate counts the autoguide's auxiliary "<site>_unconstrained" densities in log q: with
    # them left out the KL would be off by tens of nats and IWAE < ELBO could not hold.
    ev = evaluate(model, guide, ds.test, num_samples=50)
    assert ev["iwae"] >= ev["elbo"] - 1e-6
    assert 0 < ev["kl"] < 30
