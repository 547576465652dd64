"""Each example script runs end to end with tiny settings."""

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name, args, monkeypatch):
    monkeypatch.setattr(sys, "argv", [name, *args])
    return runpy.run_path(str(EXAMPLES / name), run_name="not_main")["main"](args)


def test_vae_digits(monkeypatch):
    ev = run_example("vae_digits.py", ["--epochs", "1", "--hidden", "32", "--latent-dim", "4",
                                       "--eval-samples", "5"], monkeypatch)
    assert ev["elbo"] < ev["iwae"] + 1.0 and ev["elbo"] < 0


def test_custom_model_recovers_the_noise_level(monkeypatch):
    sigma = run_example("custom_model.py", ["--epochs", "120", "--n", "1000"], monkeypatch)
    # Simulated with 0.3; 1,000 readings of 5 features pin sigma down to a few percent once
    # trained; 120 epochs of 4 steps get within a few hundredths (0.315 measured).
    assert sigma == pytest.approx(0.3, abs=0.05)


def _write_idx(path, array):
    # IDX: two zero bytes, the type code (0x08: unsigned byte), the number of dimensions, then
    # each dimension as a big-endian uint32 and the raw values.
    import struct

    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def test_vae_mnist_trains_on_local_idx_files_and_writes_its_report(monkeypatch, tmp_path):
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    # Two kinds of 28x28 "digits" (a bar on the left or on the right) so there is something to
    # encode; 64 training and 24 test images.
    def images(n):
        labels = rng.integers(0, 2, n)
        x = np.zeros((n, 28, 28), dtype=np.uint8)
        for i, lab in enumerate(labels):
            cols = slice(4, 10) if lab == 0 else slice(18, 24)
            x[i, 4:24, cols] = 255
        return x, labels

    xtr, ytr = images(64)
    xte, yte = images(24)
    _write_idx(folder / "train-images-idx3-ubyte", xtr)
    _write_idx(folder / "train-labels-idx1-ubyte", ytr)
    _write_idx(folder / "t10k-images-idx3-ubyte", xte)
    _write_idx(folder / "t10k-labels-idx1-ubyte", yte)
    out = tmp_path / "run"
    summary = run_example("vae_mnist.py", [str(folder), "--out", str(out), "--max-epochs", "3",
                                          "--hidden", "16", "--latent-dim", "2",
                                          "--batch-size", "32", "--no-gaps", "--no-sbc"],
                          monkeypatch)
    page = (out / "report.html").read_text()
    assert "Verdicts" in page and "Reconstruction vs data mean" in page
    assert "data:image/png;base64" in page
    assert summary["epochs"] <= 3 and summary["stopped_by"] in ("max_epochs", "patience")
    assert json.loads((out / "summary.json").read_text())["elbo"] == summary["elbo"] < 0
