"""Pareto smoothing of all rows at once against arviz_stats' loop over rows."""

import numpy as np
import pytest
from arviz_stats.base import array_stats

from ppl_vae.diagnostics.psis import psis
from ppl_vae.diagnostics.psis_rows import psis_rows
from ppl_vae.evaluation.fastpath import plain_path


@pytest.mark.parametrize("num_draws", [25, 200, 226, 1000])
@pytest.mark.parametrize("scale", [0.1, 2.0, 10.0])
def test_rows_equal_arviz_stats(num_draws, scale):
    rng = np.random.default_rng(num_draws)
    # Gaussian log ratios (light tails, k-hat < 0.5) plus Student-t ones (heavy, k-hat > 0.7).
    log_r = (rng.standard_normal((200, num_draws)) * scale
             + rng.standard_t(2, (200, num_draws)) * scale * 0.3)
    expected_w, expected_k = array_stats.psislw(-log_r, r_eff=1.0, axis=-1)
    log_w, k = psis_rows(log_r)
    np.testing.assert_allclose(k, expected_k, rtol=0, atol=1e-12)
    np.testing.assert_allclose(log_w, expected_w, rtol=0, atol=1e-12)
    assert (k > 0.7).any() or scale < 1  # both regimes are exercised


def test_a_flat_tail_is_left_to_arviz_stats():
    rng = np.random.default_rng(0)
    log_r = rng.standard_normal((3, 200))
    log_r[1, :60] = 5.0  # the 40 largest values are equal: arviz_stats refuses the fit
    with pytest.raises(ValueError, match="tail values are the same"):
        array_stats.psislw(-log_r[1:2], r_eff=1.0, axis=-1)
    with pytest.raises(ValueError, match="tail values are the same"):
        psis_rows(log_r)


def test_psis_fast_path_equals_plain_path(dtype=np.float32):
    rng = np.random.default_rng(1)
    log_r = (rng.standard_normal((4, 50, 200)) * 3).astype(dtype)
    log_r[0, 0] = 1.5  # a constant row: an exact fit either way
    fast_w, fast_k = psis(log_r)
    with plain_path():
        plain_w, plain_k = psis(log_r)
    assert np.isneginf(fast_k[0, 0]) and np.isneginf(plain_k[0, 0])
    np.testing.assert_allclose(fast_k, plain_k, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast_w, plain_w, rtol=0, atol=1e-12)
