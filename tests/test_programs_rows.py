"""Parameters with one row per data point (``ppl_vae.programs.rows``), the data's row order in
full-batch training (``train/epoch.py``, ``data/streaming.py``), and fit's refusal of mini-batches
for such parameters.

The posterior of ``z_i ~ N(0, 10^2)``, ``x_i ~ N(z_i, 1)`` is ``N(x_i * 100 / 101, 100 / 101)``
row by row: a guide with one parameter per row must end near it for every row, not near the
average of the rows (as it does when the rows are shuffled between steps).
"""

import sys
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDelta, AutoNormal
from torch.distributions import constraints

import ppl_vae
from ppl_vae.data.streaming import DiskData, epoch_batches
from ppl_vae.programs.rows import per_row_parameters

sys.path.insert(0, str(Path(__file__).parent))
from programs import gmm, sparse_gamma_def, vae_soft  # noqa: E402

SHRINK = 100 / 101  # posterior mean / x_i for the prior N(0, 10^2) and unit noise
SUBSAMPLE = 4


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(()), 10.0))
        pyro.sample("obs", dist.Normal(z, 1.0), obs=x)


def per_row_guide(x):
    loc = pyro.param("loc", lambda: x.new_zeros(x.shape[0]))
    scale = pyro.param("scale", lambda: x.new_ones(x.shape[0]), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, scale))


def subsampling_model(x):
    with pyro.plate("data", x.shape[0], subsample_size=SUBSAMPLE) as idx:
        z = pyro.sample("z", dist.Normal(x.new_zeros(()), 10.0))
        pyro.sample("obs", dist.Normal(z, 1.0), obs=x[idx])


def subsampling_guide(x):
    # The idiom that works with per-row parameters: the plate draws the rows, the guide indexes.
    loc = pyro.param("loc", lambda: x.new_zeros(x.shape[0]))
    scale = pyro.param("scale", lambda: x.new_ones(x.shape[0]), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0], subsample_size=SUBSAMPLE) as idx:
        pyro.sample("z", dist.Normal(loc[idx], scale[idx]))


def amortized_guide(x):
    # Amortized: loc = a * x + sum(mix * x). ``mix`` has the batch's size but mixes all its
    # entries into every point, so no row of it is one point's own.
    a = pyro.param("a", lambda: x.new_zeros(()))
    mix = pyro.param("mix", lambda: x.new_full((x.shape[0],), 0.1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(a * x + (mix * x).sum(), 1.0))


def test_per_row_parameters_are_found_from_a_trace():
    x = torch.arange(8.0)
    assert per_row_parameters(model, per_row_guide, (x,)) == ["loc", "scale"]
    assert per_row_parameters(model, per_row_guide, (x[:3],), num_data=8) == ["loc", "scale"]
    assert per_row_parameters(subsampling_model, subsampling_guide, (x,)) == []  # indexed
    assert per_row_parameters(model, amortized_guide, (x,)) == []  # no row is a point's own
    (counts,) = sparse_gamma_def.data()
    assert per_row_parameters(sparse_gamma_def.model, sparse_gamma_def.guide, (counts,)) == [
        f"{p}_z_{layer}" for layer in ("top", "mid", "bottom") for p in ("alpha", "mean")]
    vae_model, vae_guide = vae_soft.make()
    assert per_row_parameters(vae_model, vae_guide, vae_soft.data()) == []
    # An AutoDelta of the globals of a model whose per-point assignment is enumerated.
    gmm_model, gmm_guide = gmm.make()
    assert per_row_parameters(gmm_model, gmm_guide, (gmm.data()[0][:10],), num_data=30) == []
    assert len(pyro.get_param_store()) == 0  # run in a scope of its own


@pytest.mark.parametrize("autoguide", [AutoNormal, AutoDelta])
def test_autoguide_is_read_without_calling_it(autoguide):
    guide = autoguide(model)
    x = torch.arange(8.0)
    assert per_row_parameters(model, guide, (x,)) == [f"{autoguide.__name__}'s parameters of "
                                                      "site 'z'"]
    assert guide.prototype_trace is None  # its first call is still fit's
    guide(x)  # once set up, its own parameters are traced
    own = {AutoNormal: ["AutoNormal.locs.z", "AutoNormal.scales.z"], AutoDelta: ["AutoDelta.z"]}
    assert per_row_parameters(model, guide, (x,)) == own[autoguide]


def _locations(guide, x, **kwargs):
    ppl_vae.fit(model, guide, (x,), estimator="mc", epochs=600, lr=0.05, progress=False,
                **kwargs)
    return pyro.param("AutoNormal.locs.z" if isinstance(guide, AutoNormal) else "loc").detach()


@pytest.mark.parametrize("make_guide", [lambda: per_row_guide, lambda: AutoNormal(model)],
                         ids=["pyro.param", "AutoNormal"])
def test_full_batch_learns_each_row_from_its_own_point(make_guide, dtype):
    # Data 0..7: shuffled rows pull every location to the rows' average (3.0 .. 3.9).
    x = torch.arange(8.0, dtype=dtype)
    loc = _locations(make_guide(), x, batch_size=8)
    assert loc.dtype == dtype
    # The optimum's location is x_i * 100 / 101. Adam at lr 0.05 on one-draw gradients (noise
    # sd about 1 per step) leaves each location wandering with sd about 0.1 around it: 0.5 is 5
    # sd, and half the rows' spacing (a shuffled run misses by up to 3.5).
    torch.testing.assert_close(loc, x * SHRINK, atol=0.5, rtol=0)


def test_streamed_full_batch_keeps_the_row_order(tmp_path):
    x = np.arange(24, dtype=np.float32).reshape(12, 2)
    np.save(tmp_path / "x.npy", x)
    stream = DiskData(tmp_path / "x.npy")
    for epoch in (0, 3):
        (batch,) = list(epoch_batches(stream, 12, seed=1, epoch=epoch))
        np.testing.assert_array_equal(batch[0].numpy(), x)
    # Mini-batches are still shuffled.
    rows = torch.cat([b[0] for b in epoch_batches(stream, 4, seed=1, epoch=0)])
    assert not torch.equal(rows, torch.from_numpy(x))


def test_mini_batches_with_per_row_parameters_are_refused_naming_them():
    x = torch.arange(8.0)
    with pytest.raises(ValueError, match=r"\['loc', 'scale'\] hold one row per data point.*"
                       r"batch_size=8.*pyro.plate\('data', 8, subsample_size=4\) as idx"):
        ppl_vae.fit(model, per_row_guide, (x,), estimator="mc", epochs=1, batch_size=4,
                    progress=False)
    (counts,) = sparse_gamma_def.data()
    with pytest.raises(ValueError, match=r"'alpha_z_top'.*hold one row per data point"):
        ppl_vae.fit(sparse_gamma_def.model, sparse_gamma_def.guide, (counts,), estimator="mc",
                    epochs=1, batch_size=8, progress=False)


def test_program_that_subsamples_itself_trains_each_row():
    # Pyro draws SUBSAMPLE of the 8 rows per step and scales them by 8 / SUBSAMPLE; each row's
    # parameters move only when its row is drawn, so more steps than a full batch needs.
    x = torch.arange(8.0)
    ppl_vae.fit(subsampling_model, subsampling_guide, (x,), estimator="mc", epochs=1200,
                batch_size=8, lr=0.05, progress=False)
    torch.testing.assert_close(pyro.param("loc").detach(), x * SHRINK, atol=0.5, rtol=0)
