"""``benchmarks/gpu.py``: the GPU check runs end to end on the CPU (``--device cpu --tiny``) and
writes its table and JSON; its site check passes on programs whose draws live on the data's
device and fails, naming the site, on one that draws elsewhere."""

import json

import pyro
import pyro.distributions as dist
import pytest
import torch

from benchmarks import gpu


def test_tiny_cpu_run_writes_table_and_json(tmp_path):
    out = tmp_path / "gpu"
    assert gpu.main(["--device", "cpu", "--tiny", "--out", str(out), "--contenders", "ppl_vae",
                     "--steps", "2", "--repeats", "2", "--warmup", "1", "--rows", "64"]) == 0
    result = json.loads((out / "gpu.json").read_text())
    assert result["settings"]["dtype"] == "float32"
    rows = {(r["batch"], r["contender"]): r for r in result["rows"]}
    # torch is always in (the reference), first; one row per batch size and contender.
    assert set(rows) == {(b, c) for b in (16, 32) for c in ("torch", "ppl_vae")}
    for row in rows.values():
        assert row["median_ms"] > 0 and row["steps"] == 4 and row["warmup_s"] > 0
        low, high = row["ratio_range"]
        assert 0 < low <= high
        assert row["host_syncs"] == 0  # not counted on the CPU
        assert len(row["block_ms"]) == 2 and min(row["block_ms"]) > 0
    assert rows[(16, "torch")]["ratio"] == 1.0 and rows[(16, "torch")]["ratio_range"] == [1, 1]
    assert result["sync_debug"] is False and result["settings"]["clock"] == "wall clock"
    assert result["sites"] == {"model:z": "cpu", "model:x": "cpu", "guide:z": "cpu"}
    text = (out / "gpu.md").read_text()
    for needle in ("| batch | contender | ms/step", "| 16 | torch |", "| 32 | ppl_vae |",
                   "not checked", "No GPU", "`model:z` on cpu", "--device cpu --tiny",
                   "(wall clock)"):
        assert needle in text, needle


def test_tiny_cpu_run_in_float64(tmp_path):
    assert gpu.main(["--device", "cpu", "--tiny", "--out", str(tmp_path), "--dtype", "float64",
                     "--batch", "16", "--steps", "2", "--repeats", "1", "--warmup", "1",
                     "--rows", "32", "--contenders", "ppl_vae"]) == 0
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["settings"]["dtype"] == "float64" and len(result["rows"]) == 2
    assert all(row["median_ms"] > 0 for row in result["rows"])


def test_synthetic_rows_are_binary_on_the_device():
    x = gpu.synthetic_rows(200, torch.device("cpu"), torch.float64, seed=1)
    assert x.shape == (200, 784) and x.dtype == torch.float64
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    # The same seed draws the same rows; the pixels are neither all off nor all on.
    assert torch.equal(x, gpu.synthetic_rows(200, torch.device("cpu"), torch.float64, seed=1))
    assert 0.05 < float(x.mean()) < 0.95


def _programs(z_device):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, device=z_device), 1.0,
                                             validate_args=False).to_event(1))
            pyro.sample("x", dist.Normal(x.new_zeros(x.shape) + z.sum(-1, keepdim=True).to(
                x.device), 1.0, validate_args=False).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2, device=z_device), 1.0,
                                         validate_args=False).to_event(1))

    return model, guide


def test_check_sites_passes_on_the_data_device_and_names_a_stray_site():
    # "meta" stands in for a second device on a machine with only a CPU.
    x = torch.zeros(4, 3, device="meta")
    found = gpu.check_sites(x, *_programs("meta"))
    assert found == {"model:z": "meta", "model:x": "meta", "guide:z": "meta"}
    with pytest.raises(AssertionError, match=r"not on meta.*guide:z.*cpu"):
        gpu.check_sites(x, *_programs("cpu"))


def test_check_sites_accepts_the_zoo_vae_in_float32_and_float64():
    for dtype in (torch.float32, torch.float64):
        x = gpu.synthetic_rows(8, torch.device("cpu"), dtype)
        assert set(gpu.check_sites(x).values()) == {"cpu"}


def test_wheel_requirements_pin_what_is_installed(capsys):
    from importlib.metadata import version

    assert gpu.main(["--wheel-requirements"]) == 0
    lines = capsys.readouterr().out.split()
    assert lines == [f"{name}=={version(name)}" for name in gpu.CARRIED]
    assert {"pyro-ppl", "arviz-base", "arviz-stats"} <= set(gpu.CARRIED)
    assert any("--wheel-requirements" in line for line in gpu.carrying_lines())


def test_the_check_needs_an_output_folder():
    with pytest.raises(SystemExit) as exc:
        gpu.main(["--device", "cpu", "--tiny"])
    assert exc.value.code == 2
