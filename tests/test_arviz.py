"""``to_arviz``: ArviZ conventions, agreement with ``pointwise.draw``, several runs as chains,
a custom model with a global latent, and the netCDF round trip of ``ppl-vae diagnose``."""

import json

import numpy as np
import pytest
import torch
import xarray as xr
from _diagnostics_cases import GlobalGuide, global_data, global_model, make_guide, model, simulate

from ppl_vae.evaluation.arviz import to_arviz
from ppl_vae.evaluation.pointwise import draw
from ppl_vae.programs.random import chunk_seed, seeded
from ppl_vae.runs.diagnose import read_tree, write_tree


def _vae_pair(seed, obs_dim=64, dtype=torch.float32):
    from ppl_vae.guides import MLPEncoder
    from ppl_vae.models import VAE

    torch.manual_seed(seed)
    return VAE(obs_dim, 3, hidden=16).to(dtype), MLPEncoder(obs_dim, 3, hidden=16).to(dtype)


def test_vae_export_follows_arviz_conventions(digits, dtype):
    x = torch.as_tensor(digits.test[:12], dtype=dtype)
    vae, enc = _vae_pair(0, dtype=dtype)
    tree = to_arviz(vae, enc, x, num_draws=7, settings={"estimator": "analytic", "seed": 3})
    assert set(tree.children) == {"posterior", "posterior_predictive", "log_likelihood",
                                  "sample_stats", "observed_data"}
    assert tree["posterior"]["z"].dims == ("chain", "draw", "data", "z_dim_0")
    assert tree["posterior"]["z"].shape == (1, 7, 12, 3)
    assert tree["posterior_predictive"]["x"].shape == (1, 7, 12, 64)
    assert tree["log_likelihood"]["x"].dims == ("chain", "draw", "data")
    assert tree["sample_stats"]["log_q"].dims == ("chain", "draw", "data")
    np.testing.assert_array_equal(tree["observed_data"]["x"].values, x.numpy())
    assert tree.attrs["estimator"] == "analytic"
    # arviz_stats.loo would run on log_likelihood: the tree says it does not apply, and why.
    for attrs in (tree.attrs, tree["log_likelihood"].attrs):
        assert "does not apply" in attrs["leave_one_out"]
        assert "ppl_vae.compare" in attrs["leave_one_out"]
    assert "leave_one_out" not in tree["posterior"].attrs
    assert json.loads(tree.attrs["versions"])["pyro-ppl"].startswith("1.9")
    assert tree["posterior"]["z"].dtype == x.numpy().dtype
    # Same seed, same draws: the export is pointwise.draw laid out for ArviZ (12 points are
    # one chunk, seeded from (seed, chain 0, first index 0)).
    assert tree.attrs["num_points"] == 12 and tree.attrs["chunk_size"] >= 12
    with seeded(chunk_seed(0, "points", 0, 0)):
        d = draw(vae, enc, (x,), num_samples=7, nesting=1)
    np.testing.assert_allclose(tree["posterior"]["z"].values[0], d.latents["z"].numpy())
    np.testing.assert_allclose(tree["log_likelihood"]["x"].values[0], d.log_lik.numpy())
    np.testing.assert_allclose(tree["sample_stats"]["log_p"].values[0], d.log_p.numpy())
    np.testing.assert_allclose(tree["sample_stats"]["log_q"].values[0], d.log_q.numpy())
    # log p(x_i | z) recomputed from the exported z and the decoder.
    z = torch.as_tensor(tree["posterior"]["z"].values[0, 2])
    expected = vae.observation_dist(z).log_prob(x).sum(-1) if vae.observation_dist(z).event_shape \
        == () else vae.observation_dist(z).log_prob(x)
    np.testing.assert_allclose(tree["log_likelihood"]["x"].values[0, 2], expected.detach().numpy(),
                               rtol=1e-5)


def test_sample_stats_are_exact_for_the_conjugate_model():
    x = simulate(10, seed=1)
    tree = to_arviz(model, make_guide(), x, num_draws=20)
    ratio = tree["sample_stats"]["log_p"] - tree["sample_stats"]["log_q"]
    # Exact posterior: log p(x, z) - log q(z | x) = log p(x) for every draw.
    assert float(ratio.std("draw").max()) < 1e-12


def test_runs_become_chains_and_round_trip_netcdf(digits, tmp_path):
    x = torch.as_tensor(digits.test[:10])
    runs = [_vae_pair(1), _vae_pair(2)]
    tree = to_arviz(data=x, runs=runs, num_draws=5)
    assert tree["posterior"].sizes["chain"] == 2
    a, b = tree["posterior"]["z"].values
    assert not np.allclose(a, b)
    path = write_tree(tree, tmp_path / "diagnostics.nc")
    xr.testing.assert_identical(read_tree(path), tree)


def test_custom_model_with_a_global_latent():
    x = global_data(n=15)
    guides = [GlobalGuide(loc=1.0).double(), GlobalGuide(loc=2.0).double()]
    tree = to_arviz(data=x, runs=[(global_model, g) for g in guides], num_draws=30)
    assert tree["posterior"]["mu"].dims == ("chain", "draw")
    assert tree["posterior"]["z"].dims == ("chain", "draw", "data")
    assert json.loads(tree.attrs["global_sites"]) == ["mu"]
    assert tree["sample_stats"]["log_q_global"].dims == ("chain", "draw")
    # The two chains were fitted to different places: their mu disagree, which R-hat sees.
    import arviz_stats

    rhat = float(arviz_stats.rhat(tree, var_names=["mu"])["mu"])
    assert rhat > 1.2  # far above the 1.01 of agreeing chains
    means = tree["posterior"]["mu"].mean("draw").values
    assert means == pytest.approx([1.0, 2.0], abs=0.3)  # 30 draws of sd 0.5: SE 0.09, 3.3 SE


def test_fit_results_as_runs(digits):
    from ppl_vae.train.loop import fit

    x = torch.as_tensor(digits.train[:64])
    results = []
    for seed in (0, 1):
        vae, enc = _vae_pair(seed)
        results.append(fit(vae, enc, x, epochs=1, batch_size=32, seed=seed, progress=False))
    tree = to_arviz(data=x[:8], runs=results, num_draws=4)
    assert tree["posterior"].sizes["chain"] == 2
    assert json.loads(tree.attrs["chain_seeds"]) == [0, 1]
    single = to_arviz(result=results[0], data=x[:8], num_draws=4)
    assert single.attrs["estimator"] == results[0].settings["estimator"]


def test_bad_arguments_are_named(digits):
    vae, enc = _vae_pair(0)
    x = torch.as_tensor(digits.test[:4])
    with pytest.raises(ValueError, match="runs"):
        to_arviz(vae, enc, x, runs=[(vae, enc)])
    with pytest.raises(ValueError, match="num_draws"):
        to_arviz(vae, enc, x, num_draws=0)
    with pytest.raises(ValueError, match="data"):
        to_arviz(vae, enc)
    with pytest.raises(ValueError, match=r"runs\[1\]"):
        to_arviz(data=x, runs=[(vae, enc), (vae, enc, 3)])


def test_two_observed_sites_and_tuple_data():
    import pyro
    import pyro.distributions as dist

    def two_obs_model(x, y):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            loc = z.unsqueeze(-1).expand(z.shape + x.shape[-1:])
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)
            pyro.sample("y", dist.Normal(2 * z, 0.5), obs=y)

    def two_obs_guide(x, y):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.3 * y, 0.7))

    x, y = simulate(6, seed=1), torch.linspace(-1, 1, 6, dtype=torch.float64)
    tree = to_arviz(two_obs_model, two_obs_guide, (x, y), num_draws=9)
    assert set(tree["log_likelihood"].data_vars) == {"x", "y"}
    total = tree["log_likelihood"]["x"] + tree["log_likelihood"]["y"]
    np.testing.assert_allclose(total.values, tree["sample_stats"]["log_lik"].values, rtol=1e-12)
    assert tree["posterior_predictive"]["y"].dims == ("chain", "draw", "data")
    assert tree["observed_data"]["x"].dims == ("data", "x_dim_0")


def test_a_fit_result_has_its_own_keyword_and_the_old_spelling_warns():
    import warnings

    import pandas as pd

    from ppl_vae.evaluation.arviz import runs_from, split_result
    from ppl_vae.train.result import FitResult

    def prog(x):
        pass

    def guide_(x):
        pass

    fitted = FitResult(model=prog, guide=guide_, history=pd.DataFrame(), params={},
                       settings={"seed": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert split_result(None, None, fitted) == (None, fitted)
        assert split_result(prog, guide_, None) == (prog, None)
    assert runs_from(None, None, None, fitted) == [(prog, guide_, {"seed": 3})]
    with pytest.warns(FutureWarning, match="result="):
        assert split_result(fitted, None, None) == (None, fitted)
    with pytest.raises(ValueError, match="not both"):
        split_result(prog, guide_, fitted)
    with pytest.raises(ValueError, match="expected what fit returns"):
        split_result(None, None, (prog, guide_))
