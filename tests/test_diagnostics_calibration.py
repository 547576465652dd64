"""Calibration beyond rank histograms: ECDF bands, interval coverage, z-scores, contraction."""

import pandas as pd
import pytest
from _diagnostics_cases import make_guide, model, simulate

from ppl_vae.diagnostics.calibration import calibration_table, coverage_table, ecdf_bands
from ppl_vae.diagnostics.sbc import SIMULATION_NOTE, sbc
from ppl_vae.diagnostics.verdicts import calibration_rows


@pytest.fixture(scope="module")
def x():
    return simulate(1000, seed=1)


def _statuses(result):
    rows = pd.DataFrame(calibration_rows(calibration_table(result), result.simulation))
    return rows.set_index("check")["status"]


def test_the_exact_posterior_passes_every_calibration_check(x):
    result = sbc(model, make_guide(), x, num_draws=99, seed=3)
    table = calibration_table(result)
    assert table["calibrated"].all(), table
    # Coverage within its binomial error; z-scores mean 0, mean square 1 (SE ~0.03 / 0.045).
    cov = coverage_table(result)
    assert (cov["z"].abs() < 3.5).all()
    assert table["z_mean"].abs().max() < 0.15 and (table["z_ms"] - 1).abs().max() < 0.2
    # Contraction: dimension 0 learns 1 - 1/5 = 0.8 of its prior variance, dimension 1 nothing.
    assert table.loc[0, "contraction"] == pytest.approx(0.8, abs=0.05)
    assert table.loc[1, "contraction"] == pytest.approx(0.0, abs=0.1)
    assert (_statuses(result) == "ok").all()
    assert result.simulation == SIMULATION_NOTE and "trained parameters" in result.simulation


def test_half_the_posterior_spread_fails_as_overconfident(x):
    result = sbc(model, make_guide(width=0.5), x, num_draws=99, seed=3)
    table = calibration_table(result)
    assert not table["ecdf_ok"].any() and not table["coverage_ok"].any()
    # z = (mean - truth) / (sd / 2): mean square 4.
    assert (table["z_ms"] > 3).all()
    assert table["problem"].str.contains("overconfident").all()
    assert (table["coverage_0.9"] < 0.7).all()  # 90% intervals of half width cover ~59%
    assert (_statuses(result) == "failing").all()


def test_a_biased_mean_fails_as_biased(x):
    result = sbc(model, make_guide(shift=0.3), x, num_draws=99, seed=3)
    table = calibration_table(result)
    assert not table["calibrated"].any()
    # Shift 0.3 over posterior sds (0.447, 1): mean z-scores 0.67 and 0.3.
    assert table["z_mean"].to_numpy() == pytest.approx([0.67, 0.3], abs=0.1)
    assert table["problem"].str.contains("biased").all()
    assert _statuses(result)["Posterior z-scores and contraction"] == "failing"


def test_ecdf_bands_are_simultaneous_at_the_family_level(x):
    result = sbc(model, make_guide(), x, num_draws=99, seed=3)
    bands = ecdf_bands(result, alpha=0.01)
    assert bands["ci_prob"].iloc[0] == pytest.approx(1 - 0.01 / 2)
    assert bands["inside_band"].all()


def test_the_band_check_uses_a_fixed_subset_of_many_ranks():
    # Beyond MAX_ECDF_RANKS the band is checked on a random subset, chosen by the seed alone:
    # uniform PIT values stay inside, PIT values piled up near 1 (an overconfident guide's
    # ranks) still fall outside.
    import numpy as np

    from ppl_vae.diagnostics.calibration import MAX_ECDF_RANKS, _band, ecdf_subset

    rng = np.random.default_rng(0)
    uniform = rng.uniform(size=20 * MAX_ECDF_RANKS)
    kept = ecdf_subset(uniform, seed=1)
    assert len(kept) == MAX_ECDF_RANKS and np.array_equal(kept, ecdf_subset(uniform, seed=1))
    assert set(kept) <= set(uniform)
    x, lower, upper = _band(len(kept), 0.99, 1000, 0)
    ecdf = (np.searchsorted(np.sort(kept), x, side="right") / len(kept))
    assert ((ecdf >= lower) & (ecdf <= upper)).all()
    skewed = ecdf_subset(rng.uniform(size=20 * MAX_ECDF_RANKS) ** 0.8, seed=1)
    ecdf = (np.searchsorted(np.sort(skewed), x, side="right") / len(skewed))
    assert not ((ecdf >= lower) & (ecdf <= upper)).all()
