"""Bayesian regression: mean-field VI against the closed-form conjugate posterior."""

import pytest
import torch
from _runs import assert_trained_run

from ppl_vae import fit
from ppl_vae.cli import main
from ppl_vae.data.datasets import make_regression
from ppl_vae.guides import RegressionGuide
from ppl_vae.models import BayesianRegression


def _train(model, guide, data, dtype, seed=0):
    # Two phases: a fast one to reach the optimum, a slow one to shrink Adam's stationary noise.
    for lr in (0.05, 0.005):
        fit(model, guide, data, epochs=100, batch_size=data[0].shape[0], lr=lr,
            estimator="analytic", num_particles=16, vectorize_particles=True, progress=False,
            dtype=dtype, seed=seed, elbo_options={"max_plate_nesting": 1})


def test_posterior_mean_matches_conjugate_answer(dtype):
    # A small data set and a tight prior so that the posterior mean differs clearly from least
    # squares (shrinkage of about 0.8 posterior sd): the test can tell the two apart.
    ds = make_regression(n=25, noise=1.0, seed=3).to(dtype)
    data = (ds.train, ds.train_targets)
    model, guide = BayesianRegression(3, prior_scale=0.5, noise=1.0), RegressionGuide(3)
    _train(model, guide, data, dtype)
    post = model.exact_posterior(*data)
    loc = torch.cat([guide.w_loc.detach(), guide.b_loc.detach()[None]])
    sd = post.covariance_matrix.diagonal().sqrt()
    # For a Gaussian posterior the mean-field optimum has exactly the posterior mean (Bishop 2006,
    # section 10.1.2). What remains is optimiser noise: measured < 0.15 posterior sd over three
    # seeds; 0.3 sd is twice that.
    err = ((loc - post.mean) / sd).abs()
    assert bool((err < 0.3).all()), err
    design = torch.cat([ds.train, ds.train.new_ones(len(ds.train), 1)], 1)
    ols = torch.linalg.lstsq(design, ds.train_targets[:, None]).solution[:, 0]
    assert float(((ols - post.mean) / sd).abs().max()) > 0.5  # least squares would fail
    # ... and its variances are the reciprocal diagonal of the posterior precision (the known
    # under-dispersion of mean-field VI); 15% covers the noise (measured < 5%).
    w_scale, b_scale = guide.scales()
    scales = torch.cat([w_scale.detach(), b_scale.detach()[None]])
    ratio = scales * post.precision_matrix.diagonal().sqrt()
    assert bool(((ratio - 1).abs() < 0.15).all()), ratio
    assert loc.dtype == dtype


def test_bad_shapes_are_named():
    model = BayesianRegression(3)
    with pytest.raises(ValueError, match="one response per row"):
        model(torch.zeros(4, 3), torch.zeros(5))
    with pytest.raises(ValueError, match="3 features"):
        model(torch.zeros(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="positive"):
        BayesianRegression(3, noise=0.0)


def test_cli_trains_regression(tmp_path, capsys):
    code = main(["train", "--model", "regression", "--guide", "regression", "--data", "regression",
                 "--estimator", "mc", "--epochs", "30", "--lr", "0.05", "--eval-samples", "5", "--no-progress",
                 "--out", str(tmp_path / "run")])
    assert code == 0
    assert_trained_run(tmp_path / "run", capsys.readouterr().out, model="regression",
                       guide="regression", epochs=30)
