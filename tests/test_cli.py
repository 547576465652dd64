import json

import pandas as pd
import pytest
import torch
from _runs import assert_trained_run

from ppl_vae.cli import main
from ppl_vae.estimators.registry import ESTIMATORS
from ppl_vae.programs.registry import describe

TINY = ["--epochs", "1", "--latent-dim", "3", "--hidden", "16", "--no-progress",
        "--eval-samples", "5"]


def test_train_writes_the_run_folder_and_evaluate_reads_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "vae", "--guide", "mlp", "--data", "digits",
                 "--estimator", "analytic", "--out", str(out), *TINY, "--epochs", "2"]) == 0
    for name in ("config.json", "history.csv", "checkpoint.pt", "final.pt", "evaluation.csv"):
        assert (out / name).exists(), name
    printed = capsys.readouterr().out
    history = assert_trained_run(out, printed, model="vae", guide="mlp", epochs=2)
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["estimator"] == "analytic" and config["settings"]["num_data"] == 1437
    assert config["model_options"] == {"latent_dim": 3, "hidden": 16}
    # The last epochs of the history are printed as a table.
    assert f"{history['val_elbo'].iloc[-1]:.6f}" in printed
    assert main(["evaluate", str(out), "--num-samples", "5"]) == 0
    again = capsys.readouterr().out
    assert "test-set evaluation (360 rows, K=5)" in again
    ev = pd.read_csv(out / "evaluation.csv", index_col=0).iloc[:, 0]
    for key in ("elbo", "iwae", "kl", "recon"):
        assert f"{ev[key]:.4f}" in again


def test_user_program_from_a_file(tmp_path, capsys):
    source = tmp_path / "mine.py"
    source.write_text(
        "import pyro, pyro.distributions as dist, torch\n"
        "def model(x):\n"
        "    w = pyro.param('w', lambda: torch.zeros(2, 64, dtype=x.dtype))\n"
        "    with pyro.plate('data', x.shape[0]):\n"
        "        z = pyro.sample('z', dist.Normal(x.new_zeros(2), 1.0).to_event(1))\n"
        "        pyro.sample('x', dist.Normal(z @ w, 1.0).to_event(1), obs=x)\n"
        "def guide(x):\n"
        "    a = pyro.param('a', lambda: torch.zeros(64, 2, dtype=x.dtype))\n"
        "    with pyro.plate('data', x.shape[0]):\n"
        "        pyro.sample('z', dist.Normal(x @ a, 1.0).to_event(1))\n"
    )
    out = tmp_path / "run"
    assert main(["train", "--model", f"{source}:model", "--guide", f"{source}:guide",
                 "--out", str(out), "--epochs", "2", "--lr", "0.01", "--no-progress",
                 "--eval-samples", "3"]) == 0
    assert_trained_run(out, capsys.readouterr().out, model=f"{source}:model",
                       guide=f"{source}:guide", epochs=2)
    assert main(["evaluate", str(out), "--num-samples", "3", "--model", f"{source}:model",
                 "--guide", f"{source}:guide"]) == 0
    assert "test-set evaluation (360 rows, K=3)" in capsys.readouterr().out


def test_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for kind in ("model", "guide"):
        start = lines.index(f"{kind}s:")
        listed = {line.split()[0] for line in lines[start + 1:] if line.startswith("  ")}
        assert {name for name, _ in describe(kind)} <= listed


def test_estimators_lists_every_registered_estimator(capsys):
    assert main(["estimators"]) == 0
    out = capsys.readouterr().out
    for name in ESTIMATORS:
        assert any(line.split()[0] == name for line in out.splitlines() if line.strip()), name


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--estimator", "nope"], "unknown estimator"),
        (["--data", "nope"], "unknown data"),
        (["--model", "missing.py:model"], "no such file"),
    ],
)
def test_errors_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    assert main(["train", "--out", str(tmp_path / "r"), *TINY, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_evaluate_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a ppl-vae run folder" in capsys.readouterr().err


def test_synthetic_latent_dim_is_the_default_of_both_programs(tmp_path):
    # linear_gaussian is generated with 2 latents: ppca and mlp both default to it.
    out = tmp_path / "run"
    assert main(["train", "--model", "ppca", "--guide", "mlp", "--data", "linear_gaussian",
                 "--epochs", "1", "--no-progress", "--eval-samples", "3", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "ppca"
    final = torch.load(out / "final.pt", weights_only=True)["params"]
    # Both programs were built with the data set's 2 latent dimensions: PPCA's loading matrix
    # is (10, 2), the encoder's last layer gives a location and a scale per latent.
    assert final["model"]["weight"].shape == (10, 2)
    assert final["guide"]["net.2.weight"].shape[0] == 2 * 2


def test_mismatched_latent_dims_are_a_clear_error(tmp_path, capsys):
    assert main(["train", "--model", "vae", "--guide", "mlp", "--model-option", "latent_dim=3",
                 "--out", str(tmp_path / "r"), *TINY[:2], "--no-progress"]) == 2
    assert "event shape (3,) but the guide's has (20,)" in capsys.readouterr().err


MODULE_PROGRAM = """
import pyro, pyro.distributions as dist, torch
from torch import nn

decoder = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 10))
encoder = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 4))

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
"""


def test_run_evaluates_the_programs_it_trained(tmp_path, capsys):
    """Issue 11: `ppl-vae run --model file.py:model` evaluated (and reported) freshly imported,
    untrained networks; its evaluation must be the trained one `ppl-vae evaluate` reads back."""
    source = tmp_path / "mine.py"
    source.write_text(MODULE_PROGRAM)
    programs = ["--model", f"{source}:model", "--guide", f"{source}:guide"]
    out = tmp_path / "run"
    assert main(["train", *programs, "--data", "linear_gaussian", "--epochs", "1", "--lr", "1e-9",
                 "--no-progress", "--eval-samples", "50", "--out", str(tmp_path / "untrained")]) == 0
    untrained = pd.read_csv(tmp_path / "untrained" / "evaluation.csv", index_col=0).iloc[0, 0]
    assert main(["train", *programs, "--data", "linear_gaussian", "--epochs", "15", "--lr", "1e-2",
                 "--no-progress", "--eval-samples", "50", "--out", str(out)]) == 0
    in_run = pd.read_csv(out / "evaluation.csv", index_col=0).iloc[0, 0]
    assert main(["evaluate", str(out), "--num-samples", "50", *programs]) == 0
    read_back = pd.read_csv(out / "evaluation.csv", index_col=0).iloc[0, 0]
    # Training gains tens of nats per point; the two evaluations of the trained run differ by
    # Monte Carlo error only (50 draws of each of 200 test points).
    assert in_run - untrained > 5.0
    assert abs(in_run - read_back) < 0.5


def test_dtype_float64_from_the_cli(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--dtype", "float64", "--out", str(out), *TINY]) == 0
    assert json.loads((out / "config.json").read_text())["settings"]["dtype"] == "float64"
    assert main(["evaluate", str(out), "--num-samples", "3"]) == 0


def test_overwrite_replaces_only_the_run_files(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    (out / "notes.txt").write_text("mine")
    assert main(["train", "--out", str(out), *TINY]) == 2
    assert main(["train", "--out", str(out), "--overwrite", *TINY, "--epochs", "2"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert len(pd.read_csv(out / "history.csv")) == 2


@pytest.mark.parametrize("env, writer", [({}, True), ({"LOCAL_RANK": "1"}, False),
                                         ({"RANK": "0", "LOCAL_RANK": "0"}, True),
                                         ({"RANK": "5", "LOCAL_RANK": "1"}, False),
                                         ({"SLURM_PROCID": "2"}, False)])
def test_only_rank_zero_of_a_launch_locks_and_writes_the_run_folder(monkeypatch, env, writer):
    from ppl_vae.runs.train import is_writer

    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert is_writer(devices=2) is writer
    assert is_writer()  # one process
