"""``evaluation.chunks`` and ``evaluation.export``: a pass over chunks of points gives what one
pass over all of them gives (exactly for an exact guide, to Monte Carlo error otherwise),
global latents are shared by every chunk, and exported points are reproducible."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from _diagnostics_cases import GlobalGuide, global_data, global_model, make_guide, model, simulate

from ppl_vae import diagnose, evaluate, to_arviz
from ppl_vae.evaluation.chunks import map_chunks, plan_points
from ppl_vae.evaluation.export import select_points


def test_chunks_of_an_exact_guide_give_the_exact_evidence():
    x = simulate(50, seed=2)
    guide = make_guide()
    whole = evaluate(model, guide, x, num_samples=10, batch_size=50)
    chunked = evaluate(model, guide, x, num_samples=10, batch_size=7)
    # The exact posterior: every log weight is log p(x_i), whatever was drawn.
    assert chunked["iwae"] == pytest.approx(whole["iwae"], abs=1e-10)
    assert chunked["elbo"] == pytest.approx(whole["elbo"], abs=1e-10)
    assert plan_points(model, guide, (x,), num_draws=10, chunk_size=7).starts() == \
        [0, 7, 14, 21, 28, 35, 42, 49]


def test_global_latents_are_drawn_once_and_shared_by_every_chunk():
    x = global_data(n=30)
    guide = GlobalGuide(loc=1.0).double()
    plan = plan_points(global_model, guide, (x,), num_draws=20, chunk_size=4)
    assert plan.has_global and plan.vectorized
    tree = to_arviz(global_model, guide, x, num_draws=20, chunk_size=4, points="all")
    whole = to_arviz(global_model, guide, x, num_draws=20, chunk_size=30, points="all")
    # The joint ratio sums the local ratios of all points under the same global draws.
    stats = tree["sample_stats"]
    np.testing.assert_allclose(stats["local_log_ratio"].values,
                               (stats["log_p"] - stats["log_q"]).sum("data").values, rtol=1e-10)
    assert tree["posterior"]["mu"].shape == whole["posterior"]["mu"].shape == (1, 20)
    # Chunked and whole: the same estimand, draws of the same distribution.
    a, b = (evaluate(global_model, guide, x, num_samples=400, batch_size=s) for s in (4, 30))
    assert a["elbo"] == pytest.approx(b["elbo"], abs=0.05)


def test_selected_points_are_reproducible_and_named():
    first = select_points(1000, 100, seed=0)
    assert first.size == 100 and np.all(np.diff(first) > 0)
    np.testing.assert_array_equal(first, select_points(1000, 100, seed=0))
    assert not np.array_equal(first, select_points(1000, 100, seed=1))
    np.testing.assert_array_equal(select_points(5, 100, seed=0), np.arange(5))
    np.testing.assert_array_equal(select_points(10, [7, 2, 2], seed=0), [2, 7])
    for bad in ("some", 0, [10]):
        with pytest.raises(ValueError, match="points"):
            select_points(10, bad, seed=0)


def test_exported_points_have_the_draws_of_the_full_pass(digits):
    from ppl_vae.guides import MLPEncoder
    from ppl_vae.models import VAE

    torch.manual_seed(0)
    vae, enc = VAE(64, 2, hidden=8), MLPEncoder(64, 2, hidden=8)
    x = torch.as_tensor(digits.test[:50])
    full = to_arviz(vae, enc, x, num_draws=30, chunk_size=8, points="all")
    some = to_arviz(vae, enc, x, num_draws=30, chunk_size=8, points=[3, 17, 42])
    np.testing.assert_array_equal(some["posterior"]["data"].values, [3, 17, 42])
    np.testing.assert_array_equal(some["posterior"]["z"].values,
                                  full["posterior"]["z"].sel(data=[3, 17, 42]).values)
    diag = diagnose(vae, enc, x, num_draws=30, chunk_size=8, points=4, num_worst=3,
                    gaps=False, calibrate=False)
    assert len(diag.pointwise) == 50  # every point, while the tree keeps 4 + the 3 worst
    worst = diag.pointwise.nlargest(3, "k_hat")["point"].to_numpy()
    exported = diag.tree["posterior"]["data"].values
    assert set(worst) <= set(exported) and len(exported) <= 7
    # The tree's draws of a point are the ones its k-hat was computed on.
    from ppl_vae.diagnostics.psis import pointwise_psis

    again = pointwise_psis(diag.tree).set_index("point")["k_hat"]
    table = diag.pointwise.set_index("point")["k_hat"]
    np.testing.assert_allclose(again.values, table.loc[again.index].values, rtol=1e-4)


def test_map_chunks_keeps_the_order():
    assert map_chunks(lambda s: s * 2, [0, 5, 10], progress=False) == [0, 10, 20]


def test_map_chunks_gives_memory_back_as_it_goes(monkeypatch):
    import platform

    from ppl_vae.evaluation import chunks

    calls = []
    real = chunks.release_memory
    monkeypatch.setattr(chunks, "release_memory",
                        lambda full=False, trim=True: calls.append((full, trim)) or real(full, trim))
    assert chunks.map_chunks(lambda s: s * 2, range(0, 130, 2)) == [s * 2 for s in range(0, 130, 2)]
    # After each of the 65 chunks the young generations, every 64th all of them; the free
    # pages go back to the system every 16th (not every one: the next chunk would fault them
    # in again).
    assert len(calls) == 65 and [full for full, _ in calls].count(True) == 1
    assert [i + 1 for i, (_, trim) in enumerate(calls) if trim] == [16, 32, 48, 64]
    trim = chunks._malloc_trim()
    assert (trim is not None) == (platform.libc_ver()[0] == "glibc")


def test_plan_gives_a_plate_that_follows_the_batch_its_own_row_indices():
    """scvi-tools' ``pyro.plate("cells", size=n_obs, subsample_size=x.shape[0])``: chunks of
    rows, each with the indices of its rows (not Pyro's random ones)."""
    n_obs, seen = 300, []

    def cells_model(x):
        with pyro.plate("cells", size=n_obs, subsample_size=x.shape[0]) as idx:
            seen.append(idx)
            pyro.sample("x", dist.Normal(x.new_zeros(x.shape[0]), 1.0), obs=x[:, 0])

    x = torch.randn(n_obs, 2, dtype=torch.float64)
    plan = plan_points(cells_model, lambda x: None, (x,), num_draws=2, chunk_size=128)
    assert plan.indexed and not plan.subsampled and plan.starts() == [0, 128, 256]
    batch, index = plan.chunk((x,), 256)
    assert batch[0].shape[0] == 44 and torch.equal(index, torch.arange(256, 300))
    ev = evaluate(cells_model, lambda x: None, x, num_samples=2, batch_size=128)
    want = float(torch.distributions.Normal(0.0, 1.0).log_prob(x[:, 0]).mean())
    assert ev["elbo"] == pytest.approx(want, rel=1e-12)
    assert torch.equal(torch.cat(seen[-3:]), torch.arange(n_obs))  # each row once, in order


def test_plan_holds_all_points_in_one_chunk_with_a_per_row_parameter():
    n = 10

    def row_model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def row_guide(x):
        loc = pyro.param("row_loc", x.new_zeros(n))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, 1.0))

    x = torch.randn(n, dtype=torch.float64)
    plan = plan_points(row_model, row_guide, (x,), num_draws=2, chunk_size=3)
    assert plan.fixed_points and plan.chunk_size == n and plan.starts() == [0]
