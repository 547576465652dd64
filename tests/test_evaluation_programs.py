"""Users' own programs through evaluate, to_arviz, diagnose and report: a regression whose
draws do not vectorize (drawn one by one) and models that subsample their own plate
(evaluated on all of their points), each ELBO checked against plain Pyro's Trace_ELBO."""

import math

import numpy as np
import pyro
import pytest
import torch
from _user_programs import (
    N_POINTS,
    BayesianRegression,
    regression_data,
    subsampled_data,
    subsampled_model,
)
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoDiagonalNormal, AutoNormal

from ppl_vae import diagnose, evaluate, fit, report, to_arviz
from ppl_vae.evaluation.chunks import plan_points


def _pyro_elbo(model, guide, args, calls=400):
    """Plain Pyro's ELBO estimate (mean of ``calls`` one-particle losses) and its SE."""
    loss = Trace_ELBO()
    with torch.no_grad():
        values = np.array([-loss.loss(model, guide, *args) for _ in range(calls)])
    return values.mean(), values.std(ddof=1) / math.sqrt(calls)


def test_regression_with_autodiagonalnormal_is_drawn_one_by_one(tmp_path):
    x, y = regression_data()
    model = BayesianRegression()
    guide = AutoDiagonalNormal(model)
    fit(model, guide, (x, y), epochs=60, batch_size=40, lr=0.05, progress=False)
    plan = plan_points(model, guide, (x, y), num_draws=10)
    assert not plan.vectorized and plan.has_global and not plan.subsampled
    ev = evaluate(model, guide, (x, y), num_samples=400)
    expected, se = _pyro_elbo(model, guide, (x, y))
    # Same estimand (the ELBO of all 40 points), independent draws; evaluate's 400 draws have
    # the standard error of Pyro's 400 one-particle losses, so the difference has sqrt(2) se.
    assert ev["elbo"] * 40 == pytest.approx(expected, abs=4 * math.sqrt(2) * se)
    tree = to_arviz(model, guide, (x, y), num_draws=30)
    assert tree["posterior"]["linear.weight"].dims == ("chain", "draw", "linear.weight_dim_0",
                                                        "linear.weight_dim_1")
    assert tree["posterior_predictive"]["obs"].shape == (1, 30, 40)
    diag = diagnose(model, guide, (x, y), num_draws=30, gaps=False, calibrate=False)
    assert len(diag.pointwise) == 40 and np.isfinite(diag.pointwise["k_hat"]).all()
    assert "Joint k-hat (global latents)" in set(diag.checks["check"])
    out = report(model, guide, (x, y), out=tmp_path / "r.html", diagnostics=diag)
    assert "Verdicts" in out.read_text()


@pytest.mark.parametrize("autoguide", [AutoNormal, AutoDelta])
def test_self_subsampling_model_is_evaluated_on_all_points(autoguide, tmp_path):
    x = subsampled_data()
    guide = autoguide(subsampled_model)
    fit(subsampled_model, guide, (x,), epochs=150, batch_size=N_POINTS, lr=0.05, progress=False)
    plan = plan_points(subsampled_model, guide, (x,), num_draws=10, chunk_size=3)
    assert plan.subsampled and plan.num_points == N_POINTS and plan.chunk_size == 8
    ev = evaluate(subsampled_model, guide, (x,), num_samples=200)
    # Pyro's loss scales the subsample by N / B: unbiased for the ELBO of all N points.
    expected, se = _pyro_elbo(subsampled_model, guide, (x,))
    # evaluate's error (200 draws on every point) is below Pyro's (one draw on 8 of 30 points
    # per call), so the difference has at most sqrt(2) se.
    assert ev["elbo"] * N_POINTS == pytest.approx(expected, abs=4 * math.sqrt(2) * se)
    tree = to_arviz(subsampled_model, guide, (x,), num_draws=30, points="all")
    np.testing.assert_array_equal(tree["posterior"]["data"].values, np.arange(N_POINTS))
    np.testing.assert_array_equal(tree["observed_data"]["obs"].values, x.numpy())
    assert tree["posterior"]["z"].shape == (1, 30, N_POINTS)
    assert tree["posterior_predictive"]["obs"].shape == (1, 30, N_POINTS)
    diag = diagnose(subsampled_model, guide, (x,), num_draws=30, gaps=False, calibrate=False)
    assert sorted(diag.pointwise["point"]) == list(range(N_POINTS))
    assert np.isfinite(diag.pointwise["elbo"]).all()
    out = report(subsampled_model, guide, (x,), out=tmp_path / "r.html", diagnostics=diag)
    assert "Verdicts" in out.read_text()


def test_random_state_is_left_alone():
    x, y = regression_data()
    model = BayesianRegression()
    guide = AutoDiagonalNormal(model)
    evaluate(model, guide, (x, y), num_samples=5)
    before = torch.get_rng_state()
    evaluate(model, guide, (x, y), num_samples=5)
    to_arviz(model, guide, (x, y), num_draws=5)
    assert torch.equal(before, torch.get_rng_state())
    assert pyro.get_param_store() is not None
