"""tracegraph is Pyro's TraceGraph_ELBO (same seed, same loss and gradient) with a
differentiable_loss; score differs from it exactly at the reparameterizable sites."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from _mixed_latent import PARAMS, data, make_programs

from ppl_vae import explain
from ppl_vae.estimators.registry import make_elbo
from ppl_vae.estimators.tracegraph import TraceGraphELBO


def _grads(fn):
    for name in PARAMS:
        pyro.param(name).unconstrained().grad = None
    loss = fn()
    return loss, [pyro.param(n).unconstrained().grad.clone() for n in PARAMS]


@pytest.mark.parametrize("particles,vectorize", [(1, False), (3, False), (4, True)])
def test_tracegraph_is_pyros_tracegraph_elbo(particles, vectorize, dtype):
    x = data(dtype)
    model, guide = make_programs()
    ours = make_elbo("tracegraph", num_particles=particles, vectorize_particles=vectorize,
                     max_plate_nesting=1)
    theirs = pyro.infer.TraceGraph_ELBO(num_particles=particles, vectorize_particles=vectorize,
                                        max_plate_nesting=1)
    ours.loss(model, guide, x)  # creates the params
    results = []
    for fn in (lambda: theirs.loss_and_grads(model, guide, x),
               lambda: ours.loss_and_grads(model, guide, x),
               lambda: ours.differentiable_loss(model, guide, x).backward()):
        pyro.set_rng_seed(11)
        results.append(_grads(fn))
    (ref_loss, ref), (loss, got), (_, via_module) = results
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for a, b, c in zip(ref, got, via_module, strict=True):
        torch.testing.assert_close(b, a)
        torch.testing.assert_close(c, a)
        assert b.dtype == dtype


def test_score_is_not_tracegraph_at_reparameterized_sites():
    x = data()
    model, guide = make_programs()
    grads = {}
    for name in ("tracegraph", "score"):
        pyro.set_rng_seed(2)
        loss = make_elbo(name).differentiable_loss(model, guide, x)
        grads[name] = torch.autograd.grad(loss, pyro.param("ls").unconstrained())[0]
    assert not torch.allclose(grads["tracegraph"], grads["score"])
    plan = {n: explain(model, guide, x, estimator=n).set_index("site")["gradient"]
            for n in ("tracegraph", "score")}
    assert plan["tracegraph"]["u"] == "reparameterized"
    assert plan["tracegraph"]["z"].startswith("score function")
    assert plan["score"]["u"].startswith("score function")


def test_user_baselines_are_used_and_unknown_baseline_is_an_error():
    with pytest.raises(ValueError, match="baseline must be"):
        TraceGraphELBO(baseline="magic")

    def model():
        pyro.sample("k", dist.Bernoulli(torch.tensor(0.3)))

    def guide():
        probs = pyro.param("p", torch.tensor(0.5))
        pyro.sample("k", dist.Bernoulli(probs),
                    infer={"baseline": {"baseline_value": torch.tensor(1.0e3)}})

    # A constant baseline leaves the mean unchanged but shifts every draw's gradient: with a
    # huge one, the gradient is dominated by -1e3 * d log q(k).
    pyro.set_rng_seed(0)
    loss = make_elbo("tracegraph").differentiable_loss(model, guide)
    (g,) = torch.autograd.grad(loss, pyro.param("p").unconstrained())
    assert abs(float(g)) > 100


def test_programs_without_sample_sites_give_zero():
    def empty(x):
        pyro.param("a", x.new_ones(()))

    x = torch.ones(2, dtype=torch.float64)
    for name in ("tracegraph", "score", "stl", "iwae", "dreg", "vimco"):
        loss = make_elbo(name, num_particles=2).differentiable_loss(empty, empty, x)
        assert float(loss) == 0.0 and loss.dtype == torch.float64, name
    assert pyro.infer.Trace_ELBO().loss(empty, empty, x) == 0.0
