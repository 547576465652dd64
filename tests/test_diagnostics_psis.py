"""Per-data-point PSIS k-hat against cases with a known answer (conjugate linear-Gaussian)."""

import numpy as np
import pytest
import torch
from _diagnostics_cases import make_guide, model, simulate

from ppl_vae.diagnostics.psis import khat_category, khat_shares, pointwise_psis, psis
from ppl_vae.evaluation.arviz import to_arviz


def _table(width, n=40, draws=2000, dtype=torch.float64):
    x = simulate(n, seed=1, dtype=dtype)
    return pointwise_psis(to_arviz(model, make_guide(width), x, num_draws=draws))


def test_exact_posterior_is_a_perfect_fit_not_a_crash(dtype):
    # q = p(z | x): every ratio equals p(x_i); the tail fit would see identical values.
    table = _table(1.0, dtype=dtype)
    assert np.isneginf(table["k_hat"]).all()
    assert (table["category"] == "exact").all()
    assert table["ess"].to_numpy() == pytest.approx(2000)
    assert table["elbo_gap"].abs().max() < 1e-4
    assert khat_shares(table)["share_exact"] == 1.0


def test_slightly_wide_guide_has_small_khat_and_elbo_gap():
    table = _table(1.1)
    # Bounded ratios (q wider than p): the true k is <= 0; the estimate must stay well below 0.5.
    assert table["k_hat"].max() < 0.5
    assert khat_shares(table)["share_khat_gt_0.5"] == 0.0
    # With K large the gap log p(x) - ELBO tends to KL(q || p(z|x)) = 2 * 0.5 (c^2 - 1 - ln c^2)
    # per point (both dimensions have posterior variance scaled by c^2 = 1.21).
    kl = 2 * 0.5 * (1.21 - 1 - np.log(1.21))
    # The ELBO estimate's standard error per point is sd(log r) / sqrt(K) ~ 0.15 / 45; averaged
    # over 40 points it is far below 0.005, plus an O(var / K) importance-sampling bias.
    assert table["elbo_gap"].mean() == pytest.approx(kl, abs=0.005)


def test_much_narrower_guide_has_khat_above_07():
    # q = N(mu, (sd / 3)^2): the ratio's tail index is 1 - 1/9 = 0.89 in each dimension.
    table = _table(1 / 3)
    assert table["k_hat"].median() > 0.7
    assert khat_shares(table)["share_khat_gt_0.7"] > 0.6


def test_psis_sign_convention_matches_a_known_tail():
    # Ratios exp(log r) with log r = log of Pareto(k = 0.8) draws: k-hat should be near 0.8
    # (the GPD fit's prior pulls a little toward 0.5).
    rng = np.random.default_rng(0)
    log_r = np.log1p(rng.pareto(1 / 0.8, size=(20, 4000)))  # Lomax tail index 1/k
    _, k = psis(log_r)
    assert np.median(k) == pytest.approx(0.8, abs=0.1)
    _, k_neg = psis(-log_r)  # the reciprocal ratios are bounded: a light tail
    assert np.median(k_neg) < 0.3


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="at least 25 draws"):
        psis(np.zeros((3, 20)))
    with pytest.raises(ValueError, match="non-finite"):
        psis(np.r_[np.arange(29.0), np.inf][None])
    assert list(khat_category([-np.inf, 0.2, 0.6, 0.9])) == ["exact", "good", "ok", "bad"]


def test_joint_khat_covers_global_latents():
    from _diagnostics_cases import GlobalGuide, global_data, global_model

    from ppl_vae.diagnostics.psis import joint_khat

    assert joint_khat(to_arviz(model, make_guide(), simulate(5), num_draws=30)) is None
    x = global_data(n=20)
    # Exact local part: given mu, mean(x_i) ~ N(mu + z_i, 0.5^2 / 4), so z_i | x_i, mu has
    # precision 1 + 16 = 17 and mean (16 / 17)(mean(x_i) - mu). The posterior of mu has sd ~0.23;
    # q(mu) with sd 0.4 gives bounded joint ratios, sd 0.02 a tail index 1 - (0.02 / 0.23)^2.
    guides = []
    for scale in (0.02, 0.4):
        g = GlobalGuide(loc=1.5).double()
        g.scale = torch.tensor(scale, dtype=torch.float64)
        g.a = torch.tensor(16 / 17, dtype=torch.float64)
        g.s = torch.tensor(17**-0.5, dtype=torch.float64)
        guides.append(g)
    k = joint_khat(to_arviz(data=x, runs=[(global_model, g) for g in guides], num_draws=1000))
    assert k.shape == (2,)
    assert k[0] > 0.7 and k[1] < 0.5
