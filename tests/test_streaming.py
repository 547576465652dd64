"""DiskData: rows streamed from memory-mapped .npy files, batched by the distributed sampler."""

import pickle

import numpy as np
import pyro
import pytest
import torch

from ppl_vae import fit
from ppl_vae.data.streaming import DiskData, epoch_batches, sequential_batches, write_shards
from ppl_vae.data.tensors import iter_batches
from ppl_vae.guides import MLPEncoder
from ppl_vae.models import VAE
from ppl_vae.train.epoch import epoch_generator


@pytest.fixture
def arrays(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((53, 4), dtype=np.float64)
    y = rng.integers(0, 3, size=53)
    write_shards(x, tmp_path / "x", rows_per_shard=10)  # 6 shards, the last one short
    np.save(tmp_path / "y.npy", y)
    return tmp_path, x, y


def test_rows_across_shards_and_members(arrays):
    path, x, y = arrays
    data = DiskData(path / "x", path / "y.npy", dtype=torch.float64)
    assert len(data) == 53 and len(data.files[0]) == 6
    idx = [52, 0, 19, 20, 9, 10, 31, 3, 3]  # unsorted, repeated, on both sides of boundaries
    xb, yb = data.__getitems__(idx)
    assert xb.dtype == torch.float64 and yb.dtype == torch.int64  # labels keep their dtype
    np.testing.assert_array_equal(xb.numpy(), x[idx])
    np.testing.assert_array_equal(yb.numpy(), y[idx])
    one_x, one_y = data[-1]
    np.testing.assert_array_equal(one_x.numpy(), x[52])
    assert DiskData(path / "x").__getitems__([1])[0].dtype == torch.float32  # the default
    with pytest.raises(IndexError, match="out of range"):
        data.__getitems__([53])


def test_pickling_keeps_paths_not_rows(arrays):
    path, x, _ = arrays
    data = DiskData(path / "x")
    data.__getitems__([0])  # opens the memory maps
    copy = pickle.loads(pickle.dumps(data))
    assert copy._arrays is None
    np.testing.assert_allclose(copy[40][0].numpy(), x[40], rtol=1e-6)


def test_bad_input_is_named(arrays, tmp_path):
    path, x, _ = arrays
    np.save(tmp_path / "short.npy", x[:5])
    with pytest.raises(ValueError, match="different numbers of rows: \\[53, 5\\]"):
        DiskData(path / "x", tmp_path / "short.npy")
    with pytest.raises(ValueError, match="does not exist"):
        DiskData(tmp_path / "nope.npy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .npy shards"):
        DiskData(tmp_path / "empty")
    bad = x.copy()
    bad[12, 1] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match="NaN or infinite values in row\\(s\\) \\[12\\]"):
        DiskData(tmp_path / "bad.npy").__getitems__([3, 12])


@pytest.mark.parametrize("num_workers", [0, 1])
def test_sampler_shards_union_to_the_single_process_batches(arrays, num_workers):
    path, x, _ = arrays
    data = DiskData(path / "x", dtype=torch.float64, num_workers=num_workers)
    tensors = (torch.from_numpy(x),)
    whole = list(iter_batches(tensors, 8, shuffle=True, generator=epoch_generator(5, 2)))
    single = list(epoch_batches(data, 8, seed=5, epoch=2))
    assert [b[0].shape[0] for b in single] == [8] * 6 + [5]
    for a, b in zip(whole, single, strict=True):
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    ranks = [list(epoch_batches(data, 8, seed=5, epoch=2, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])  # equal step counts, or DDP would hang
    for k in range(6):  # full windows: the two halves are exactly the single-process batch
        union = torch.cat([ranks[0][k][0], ranks[1][k][0]])
        rows = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
        assert rows(union) == rows(whole[k][0])
    with pytest.raises(ValueError, match="divisible"):
        next(epoch_batches(data, 7, seed=0, epoch=1, rank=0, world_size=2))


def test_sequential_batches_cover_every_row_once(arrays):
    path, x, _ = arrays
    data = DiskData(path / "x", dtype=torch.float64)
    seen = torch.cat([b[0] for r in range(3)
                      for b in sequential_batches(data, 4, rank=r, world_size=3)])
    assert seen.shape[0] == 53
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, x.tolist()))


def test_fit_on_disk_equals_fit_in_memory(digits, tmp_path, dtype):
    x = digits.train[:256].numpy()
    write_shards(x, tmp_path / "train", rows_per_shard=100)
    np.save(tmp_path / "test.npy", digits.test[:64].numpy())
    results = []
    for data, val in [(torch.from_numpy(x).to(dtype), digits.test[:64].to(dtype)),
                      (DiskData(tmp_path / "train", dtype=dtype),
                       DiskData(tmp_path / "test.npy", dtype=dtype))]:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model = VAE.from_dataset(digits, latent_dim=4, hidden=32)
        guide = MLPEncoder.from_dataset(digits, latent_dim=4, hidden=32)
        results.append(fit(model, guide, data, validation_data=val, epochs=2, batch_size=64,
                           seed=1, progress=False))
    memory, disk = results
    assert disk.settings["dtype"] == str(dtype).replace("torch.", "")
    # Same batches in the same order and the same noise: identical to the last bit.
    for part in ("model", "guide"):
        for name, value in memory.params[part].items():
            assert value.dtype == dtype
            assert torch.equal(disk.params[part][name], value), name
    cols = ["train_elbo", "val_elbo", "steps"]
    assert disk.history[cols].equals(memory.history[cols])
