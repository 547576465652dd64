"""``ppl-vae latents`` and ``ppl-vae compare`` (cli/workflow.py) on run folders."""

import numpy as np
import pandas as pd
import pytest

from ppl_vae.cli import main

TINY = ["--model", "vae", "--guide", "mlp", "--data", "digits", "--epochs", "1",
        "--latent-dim", "2", "--hidden", "8", "--no-progress", "--eval-samples", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for seed in ("0", "1"):
        assert main(["train", "--out", str(root / f"r{seed}"), "--seed", seed, *TINY]) == 0
    return root


def test_latents_csv_npz_npy(runs, tmp_path, capsys):
    assert main(["latents", str(runs / "r0"), "--out", str(tmp_path / "z.csv")]) == 0
    frame = pd.read_csv(tmp_path / "z.csv")
    assert list(frame.columns) == ["point", "z_0", "z_1"] and len(frame) == 360
    assert main(["latents", str(runs / "r0"), "--out", str(tmp_path / "z.npz"),
                 "--num-draws", "3", "--split", "train"]) == 0
    assert np.load(tmp_path / "z.npz")["z"].shape == (3, 1437, 2)
    assert main(["latents", str(runs / "r0"), "--out", str(tmp_path / "z.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), frame[["z_0", "z_1"]].to_numpy(),
                               rtol=1e-6)


@pytest.mark.parametrize("where, message", [
    ("inside", "inside the run folder"), ("exists", "pass --overwrite"),
    ("suffix", "suffix picks|the file type is read from the suffix")])
def test_latents_refuses_unsafe_outputs(runs, tmp_path, capsys, where, message):
    out = {"inside": runs / "r0" / "z.csv", "exists": tmp_path / "z.csv",
           "suffix": tmp_path / "z.txt"}[where]
    if where == "exists":
        out.write_text("mine")
    assert main(["latents", str(runs / "r0"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ppl-vae latents: error:" in err
    assert any(m in err for m in message.split("|"))
    if where == "exists":
        assert out.read_text() == "mine"
    assert not (runs / "r0" / "z.csv").exists()


def test_compare_prints_the_table_and_writes_the_figure(runs, tmp_path, capsys):
    figure = tmp_path / "compare.png"
    assert main(["compare", str(runs / "r0"), str(runs / "r1"), "--num-samples", "5",
                 "--figure", str(figure)]) == 0
    out = capsys.readouterr().out
    assert "r0" in out and "r1" in out and "diff_se" in out and "active_units" in out
    assert figure.read_bytes()[:4] == b"\x89PNG"


def test_train_logger_csv(tmp_path, capsys):
    pytest.importorskip("lightning_fabric")
    assert main(["train", "--out", str(tmp_path / "r"), *TINY, "--epochs", "2",
                 "--logger", f"csv:{tmp_path / 'logs'}"]) == 0
    (metrics,) = (tmp_path / "logs").rglob("metrics.csv")
    frame = pd.read_csv(metrics)
    assert frame["step"].tolist() == [1, 2] and frame["val_elbo"].notna().all()
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--out", str(tmp_path / "s"), *TINY, "--logger", "wandb"])
    assert exit_.value.code == 2
    assert "expected csv or tensorboard" in capsys.readouterr().err


def test_python_loads_a_cli_folder_and_saves_it_again(runs, tmp_path, capsys):
    import ppl_vae

    loaded = ppl_vae.load(runs / "r0")
    assert loaded.settings["estimator"] == "analytic" and len(loaded.history) == 1
    loaded.save(tmp_path / "copy", data="digits")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        loaded.save(runs / "r1", data="digits")  # another run's folder is never replaced
    assert main(["evaluate", str(tmp_path / "copy"), "--num-samples", "3"]) == 0
    capsys.readouterr()
    z_copy = ppl_vae.latents(ppl_vae.load(tmp_path / "copy").model,
                             ppl_vae.load(tmp_path / "copy").guide, loaded_data(runs))["z"]
    again = ppl_vae.load(runs / "r0")
    np.testing.assert_array_equal(z_copy.numpy(),
                                  ppl_vae.latents(again.model, again.guide,
                                                  loaded_data(runs))["z"].numpy())


def loaded_data(runs):
    from ppl_vae.data.datasets import load_digits

    return load_digits().test[:50]


def test_latents_parquet(runs, tmp_path):
    pytest.importorskip("pyarrow")  # the `parquet` extra
    out = tmp_path / "z.parquet"
    assert main(["latents", str(runs / "r0"), "--out", str(out), "--num-draws", "2"]) == 0
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["draw", "point", "z_0", "z_1"] and len(frame) == 2 * 360
    # The same numbers as the CSV writer (Parquet keeps float32 exactly).
    assert main(["latents", str(runs / "r0"), "--out", str(tmp_path / "z.csv")]) == 0
    assert main(["latents", str(runs / "r0"), "--out", str(tmp_path / "m.parquet")]) == 0
    np.testing.assert_allclose(pd.read_parquet(tmp_path / "m.parquet").to_numpy(),
                               pd.read_csv(tmp_path / "z.csv").to_numpy(), rtol=1e-6)


def test_latents_parquet_without_pyarrow_says_what_to_install(runs, tmp_path, capsys,
                                                             monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in {
        "pyarrow", "fastparquet"} else real(name, *a))
    out = tmp_path / "z.parquet"
    assert main(["latents", str(runs / "r0"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install pyarrow" in err and "ppl-vae[parquet]" in err
    assert not out.exists()
