import gzip
import struct

import numpy as np
import pytest
import torch

from ppl_vae import datasets


def test_digits_split_and_range(digits):
    assert digits.train.shape == (1437, 64) and digits.test.shape == (360, 64)
    assert digits.train.dtype == torch.float32
    assert float(digits.train.min()) >= 0.0 and float(digits.train.max()) <= 1.0
    assert digits.train_labels.shape == (1437,) and digits.num_classes == 10
    again = datasets.load_digits()
    assert torch.equal(again.train, digits.train)  # the split is fixed


def _write_idx(path, array):
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.tobytes())


def test_idx_round_trip_and_mnist_loader(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5, dtype=np.uint8)
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    assert np.array_equal(datasets.load_idx(tmp_path / "train-images-idx3-ubyte.gz"), images)
    mnist = datasets.load_mnist(tmp_path)
    assert mnist.train.shape == (5, 784) and float(mnist.train.max()) <= 1.0
    assert mnist.image_shape == (28, 28)


def test_idx_errors(tmp_path):
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        datasets.load_idx(bad)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        datasets.load_mnist(tmp_path)


def test_synthetic_generators():
    lg = datasets.make_linear_gaussian(200, obs_dim=6, latent_dim=2)
    assert lg.train.shape == (160, 6) and lg.info["W"].shape == (6, 2)
    bi = datasets.make_binary_images(100, obs_dim=16, latent_dim=3)
    assert set(bi.train.unique().tolist()) <= {0.0, 1.0} and bi.image_shape == (4, 4)


def test_load_array_csv_with_labels(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("a,b,label\n" + "\n".join(f"{i},{2 * i},{i % 2}" for i in range(10)))
    ds = datasets.load_array(path)
    assert ds.obs_dim == 2 and ds.train_labels is not None


def test_load_array_npz_labels_kept_by_value_and_other_arrays_named(tmp_path):
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.repeat([0.0, 1.0], 10)  # whole numbers stored as floats: labels 0 and 1
    np.savez(tmp_path / "d.npz", x=x, y=y, z=np.ones(3))
    with pytest.warns(UserWarning, match=r"array\(s\) \['z'\] ignored"):
        ds = datasets.load_array(tmp_path / "d.npz", test_fraction=0.5)
    assert ds.train_labels.dtype == torch.int64
    # Every row keeps its own label: the rows labelled 0 are exactly those with x[:, 0] < 20.
    for features, labels in ((ds.train, ds.train_labels), (ds.test, ds.test_labels)):
        assert torch.equal(labels, (features[:, 0] >= 20).long())
