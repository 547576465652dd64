"""gradient_variance on the linear-Gaussian model (closed-form gradient) and from the CLI."""

import numpy as np
import pandas as pd
import pyro
import pytest
import torch
from _linear_gaussian import NaiveELBO, exact_gradient, make_programs, setup

from ppl_vae import gradient_variance
from ppl_vae.estimators.registry import EstimatorSpec, register_estimator, unregister_estimator
from ppl_vae.estimators.variance import VARIANCE_COLUMNS

DRAWS = 60


def _programs(init, x):
    model, guide = make_programs(init)
    model(x), guide(x)  # create the params
    return model, guide


def _by(table, group):
    return table[table.group == group].set_index("estimator")


def test_variance_ordering_and_agreement_on_linear_gaussian():
    x, init = setup()
    model, guide = _programs(init, x)
    table = gradient_variance(model, guide, x, estimators=["mc", "analytic", "score", "stl"],
                              num_draws=DRAWS, num_particles=20, vectorize_particles=True)
    assert list(table.columns) == VARIANCE_COLUMNS
    guide_rows, all_rows = _by(table, "guide"), _by(table, "all")
    tv = guide_rows["total_variance"]
    # Closed-form KL removes the KL's sampling noise: lower variance than whole-ELBO Monte Carlo.
    assert tv["analytic"] < tv["mc"]
    # The score function is noisier than either reparameterized estimator, even with the
    # leave-one-out baseline that vectorized particles give it (measured: about 7x mc here; 23x
    # without a baseline, see test_estimators_score).
    assert tv["score"] > 3 * tv["mc"]
    assert guide_rows.loc["analytic", "variance_ratio"] == 1.0
    # All four estimate the same gradient.
    assert all_rows["agrees_in_mean"].all()
    # |mean_norm - |exact|| <= |mean - exact|, whose expected square is the total variance /
    # draws; 5 of those standard deviations is a loose but sure bound.
    exact_norm = float(exact_gradient(x, init).norm())
    for name, row in all_rows.iterrows():
        assert abs(row["mean_norm"] - exact_norm) < 5 * (row["total_variance"] / DRAWS) ** 0.5, name
    assert (table["seconds_per_estimate"] > 0).all()
    assert table.attrs["reference"] == "analytic"


def test_stl_variance_is_zero_at_the_exact_posterior():
    x, init = setup(exact_posterior=True)
    model, guide = _programs(init, x)
    table = gradient_variance(model, guide, x, estimators=["mc", "stl"], num_draws=20)
    tv = _by(table, "guide")["total_variance"]
    assert tv["stl"] < 1e-20 and tv["mc"] > 1.0


def test_a_biased_estimator_is_flagged(request):
    # The detached-path gradient estimates something else; the equal-means test must say so.
    register_estimator("naive", EstimatorSpec(
        lambda num_particles, vectorize_particles, jit, **o: NaiveELBO(num_particles=num_particles),
        "detached sample path (wrong on purpose)"))
    request.addfinalizer(lambda: unregister_estimator("naive"))
    x, init = setup()
    model, guide = _programs(init, x)
    table = gradient_variance(model, guide, x, estimators=["analytic", "naive"], num_draws=60,
                              num_particles=5)
    naive = _by(table, "guide").loc["naive"]
    assert not naive["agrees_in_mean"] and naive["mean_discrepancy"] > 100
    assert _by(table, "model").loc["naive", "agrees_in_mean"]  # the model's gradient is right


def test_iwae_is_compared_only_with_itself():
    x, init = setup()
    model, guide = _programs(init, x)
    table = gradient_variance(model, guide, x, estimators=["mc", "iwae"], num_draws=5,
                              num_particles=3)
    iwae = _by(table, "all").loc["iwae"]
    assert iwae["objective"] == "IWAE (K=3)" and iwae["variance_ratio"] == 1.0


def test_float64_and_rng_state_restored():
    x, init = setup(torch.float64)
    model, guide = _programs(init, x)
    state = torch.get_rng_state()
    table = gradient_variance(model, guide, x, estimators=["mc"], num_draws=3)
    assert torch.equal(state, torch.get_rng_state())
    assert table["total_variance"].notna().all()


def test_bad_arguments():
    x, init = setup()
    model, guide = _programs(init, x)
    with pytest.raises(ValueError, match="unknown estimator"):
        gradient_variance(model, guide, x, estimators=["mc", "bogus"])
    with pytest.raises(ValueError, match="num_draws"):
        gradient_variance(model, guide, x, num_draws=1)


def test_compare_estimators_command(tmp_path, capsys):
    from ppl_vae.cli import main

    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--latent-dim", "3", "--hidden", "8", "--out", str(run),
                 "--no-progress", "--eval-samples", "5"]) == 0
    capsys.readouterr()
    pyro.clear_param_store()
    csv = tmp_path / "var.csv"
    assert main(["compare-estimators", str(run), "--num-draws", "4", "--batch-size", "16",
                 "--estimators", "mc", "analytic", "stl", "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    for name in ("mc", "analytic", "stl", "total_variance", "guide"):
        assert name in out
    table = pd.read_csv(csv)
    assert set(table["estimator"]) == {"mc", "analytic", "stl"}
    assert np.isfinite(table["total_variance"]).all() and (table["total_variance"] >= 0).all()
    for value in table["total_variance"]:
        assert f"{value:.4g}" in out  # the printed table is the written one
    assert main(["compare-estimators", str(run), "--num-draws", "3", "--batch-size", "8",
                 "--estimators", "iwae", "dreg", "--num-particles", "1", "5",
                 "--vectorize-particles"]) == 0
    out = capsys.readouterr().out
    assert "signal-to-noise ratio by K" in out and "dreg" in out and "IWAE (K=5)" in out
    assert main(["compare-estimators", str(tmp_path / "missing")]) == 2


def test_several_particle_counts_and_the_snr_table():
    from ppl_vae.estimators.variance import snr_by_particles

    x, init = setup()
    model, guide = _programs(init, x)
    table = gradient_variance(model, guide, x, estimators=["iwae", "dreg", "mc"], num_draws=20,
                              num_particles=(1, 5), vectorize_particles=True)
    assert set(table["num_particles"]) == {1, 5}
    rows = table[(table.group == "guide")].set_index(["estimator", "num_particles"])
    assert rows.loc[("dreg", 5), "objective"] == "IWAE (K=5)"
    assert rows.loc[("mc", 5), "objective"] == "ELBO"
    # dreg is compared with iwae (same bound, same K), mc only with ELBO runs of its K.
    assert rows.loc[("iwae", 5), "variance_ratio"] == 1.0
    assert rows.loc[("dreg", 5), "agrees_in_mean"]
    snr = snr_by_particles(table)
    assert list(snr.index) == ["iwae", "dreg", "mc"] and list(snr.columns) == [1, 5]
    assert snr.loc["dreg", 5] == rows.loc[("dreg", 5), "snr"]
    with pytest.raises(ValueError, match="num_particles"):
        gradient_variance(model, guide, x, estimators=["mc"], num_particles=[0])
    with pytest.warns(UserWarning, match="'vimco' estimator with num_particles=1"):
        gradient_variance(model, guide, x, estimators=["vimco"], num_particles=1, num_draws=2)


@pytest.mark.parametrize("kind", ["zoo", "module", "autoguide"])
def test_after_clear_param_store_and_a_second_fit_gradients_are_measured(kind, digits):
    # Every mean norm and variance came out exactly 0 in this situation (issue 11).
    import pyro.distributions as dist
    from pyro.infer.autoguide import AutoNormal

    from ppl_vae import fit
    from ppl_vae.guides import MLPEncoder
    from ppl_vae.models import VAE

    x = digits.train[:64]
    if kind == "zoo":
        model, guide = VAE(64, 2, hidden=8), MLPEncoder(64, 2, hidden=8)
    elif kind == "module":
        decoder, encoder = torch.nn.Linear(2, 64), torch.nn.Linear(64, 4)

        def model(x):
            pyro.module("decoder", decoder)
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(decoder(z), 0.5).to_event(1), obs=x)

        def guide(x):
            pyro.module("encoder", encoder)
            loc, log_scale = encoder(x).chunk(2, dim=-1)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))
    else:
        def model(x):
            loc = pyro.sample("loc", dist.Normal(x.new_zeros(64), 1.0).to_event(1))
            with pyro.plate("data", x.shape[0]):
                pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

        guide = AutoNormal(model)
    for _ in range(2):
        pyro.clear_param_store()
        fit(model, guide, x, epochs=1, batch_size=32, progress=False)
    table = gradient_variance(model, guide, x, estimators=["mc"], num_draws=3)
    assert (table["mean_norm"] > 0).all() and (table["total_variance"] > 0).all()
