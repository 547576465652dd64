"""Simulation-based calibration (Talts et al. 2018) on the conjugate case."""

import numpy as np
import pytest
import torch
from _diagnostics_cases import GlobalGuide, global_data, global_model, make_guide, model, simulate

from ppl_vae.diagnostics.sbc import sbc


def test_exact_posterior_passes(dtype):
    x = simulate(1000, seed=1, dtype=dtype)
    result = sbc(model, make_guide(), x, num_draws=99, seed=3)
    assert result.passed, result.table
    assert result.ranks.shape == (1000, 2)
    assert result.ranks.to_numpy().min() >= 0 and result.ranks.to_numpy().max() <= 99
    assert result.histograms().to_numpy().sum(0).tolist() == [1000, 1000]


def test_half_spread_fails_with_u_shaped_ranks():
    x = simulate(1000, seed=1)
    result = sbc(model, make_guide(width=0.5), x, num_draws=99, seed=3)
    assert not result.passed
    assert (result.table["p_value"] < 1e-6).all()
    hist = result.histograms()
    # Too narrow: the truth falls outside the draws too often, so the end bins overflow.
    assert (hist.iloc[[0, -1]].sum() > 2 * hist.iloc[4:6].sum()).all()


def test_global_latent_is_calibrated_per_run():
    x = global_data(n=10)
    result = sbc(global_model, GlobalGuide().double(), x, num_draws=19, bins=5, num_runs=20, seed=0)
    assert list(result.ranks.columns) == ["mu[0]", "z[0]"]
    # mu has one simulation per run, z one per row per run.
    assert result.table.set_index("site")["simulations"].to_dict() == {"mu": 20, "z": 200}


def test_bins_must_divide_ranks():
    with pytest.raises(ValueError, match="bins"):
        sbc(model, make_guide(), simulate(10), num_draws=10, bins=4)


def test_sbc_restores_the_rng():
    torch.manual_seed(11)
    before = torch.get_rng_state()
    sbc(model, make_guide(), simulate(20), num_draws=9, bins=5, seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    assert np.isfinite(sbc(model, make_guide(), simulate(20), num_draws=9, bins=5).table["chi2"]).all()
