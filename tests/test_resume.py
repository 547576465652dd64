"""A training process killed with SIGKILL in the middle of an epoch resumes from its last
checkpoint and ends bit-for-bit where an uninterrupted run with the same seed ends; a resume that
is not the same run is refused, a longer budget is not, and early stopping continues exactly."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import pytest
import torch

from ppl_vae import fit
from ppl_vae.cli import main
from ppl_vae.guides import MLPEncoder
from ppl_vae.models import VAE
from ppl_vae.train.checkpoint import CHECKPOINT_NAME, load_checkpoint

EPOCHS = 4

# The training script a user would run: same command to start and to restart (resume=True).
SCRIPT = f"""
import sys
import pyro
import torch
torch.set_num_threads(1)
from ppl_vae import fit
from ppl_vae.data.datasets import load_digits
from ppl_vae.guides import MLPEncoder
from ppl_vae.models import VAE

out = sys.argv[1]
data = load_digits()
pyro.set_rng_seed(7)  # the modules' initial weights: the same seed gives the same run
model = VAE.from_dataset(data, latent_dim=8, hidden=64)
guide = MLPEncoder.from_dataset(data, latent_dim=8, hidden=64)
result = fit(model, guide, data.train, validation_data=data.test, epochs={EPOCHS},
             batch_size=32, lr=3e-3, seed=7, progress=False, checkpoint_dir=out, resume=True)
torch.save(result.params, out + "/final_params.pt")
result.history.to_csv(out + "/final_history.csv", index=False)
"""


def _start(script: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _checkpoint_epoch(out: Path) -> int:
    path = out / CHECKPOINT_NAME
    return int(load_checkpoint(path)["epoch"]) if path.exists() else 0


def _wait(proc: subprocess.Popen, timeout: float = 120) -> None:
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output.decode()


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    reference, killed = tmp_path / "reference", tmp_path / "killed"

    reference_run = _start(script, reference)  # never interrupted; runs alongside
    proc = _start(script, killed)
    deadline = time.monotonic() + 120
    # Two epochs: the first also records the step (jit="auto"), the second is a steady one.
    while _checkpoint_epoch(killed) < 2 or not (killed / "history.csv").exists():
        assert proc.poll() is None, proc.communicate()[0].decode()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    before = _checkpoint_epoch(killed)
    # About half an epoch after epoch `before` was saved: inside epoch `before + 1`.
    seconds = pd.read_csv(killed / "history.csv")["seconds"].iloc[-1]
    time.sleep(0.5 * seconds)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    after = _checkpoint_epoch(killed)
    assert before <= after < EPOCHS, f"killed after epoch {after}, not in the middle of the run"
    assert not (killed / "final_params.pt").exists()

    _wait(_start(script, killed))  # the restart: same command, resume=True
    _wait(reference_run)

    got = torch.load(killed / "final_params.pt", weights_only=True)
    want = torch.load(reference / "final_params.pt", weights_only=True)
    for part in ("model", "guide"):
        assert got[part].keys() == want[part].keys()
        for name, value in want[part].items():
            # Bit for bit: same batches (seeded by (seed, epoch)), restored RNG and optimizer.
            assert torch.equal(got[part][name], value), f"{part}.{name} differs"

    for folder in (killed, reference):
        for name in ("final_history.csv", "history.csv"):
            history = pd.read_csv(folder / name)
            assert history["epoch"].tolist() == list(range(1, EPOCHS + 1))  # no gap, no duplicate
    resumed = pd.read_csv(killed / "final_history.csv")
    uninterrupted = pd.read_csv(reference / "final_history.csv")
    columns = ["epoch", "train_elbo", "val_elbo", "steps"]
    pd.testing.assert_frame_equal(resumed[columns], uninterrupted[columns], check_exact=True)


# In-process: resuming refuses another run, allows a longer budget, and continues early stopping.


class Interrupt(Exception):
    """Raised by a callback after epoch k's checkpoint: the run dies there."""


def _pair(seed=0):
    pyro.clear_param_store()
    torch.manual_seed(seed)  # the same initial weights for every run of a test
    return VAE(64, 4, hidden=32), MLPEncoder(64, 4, hidden=32)


def _options(**extra):
    return {"epochs": 2, "batch_size": 32, "seed": 3, "progress": False, **extra}


@pytest.mark.parametrize(
    "change, fragments",
    [
        ({"lr": 1e-2}, ["lr: 0.001 in the checkpoint, 0.01 now"]),
        ({"seed": 4}, ["seed: 3 in the checkpoint, 4 now"]),
        ({"batch_size": 16}, ["batch_size: 32 in the checkpoint, 16 now"]),
        ({"estimator": "mc"}, ["estimator: 'analytic' in the checkpoint, 'mc' now"]),
        ({"optimizer": "sgd"}, ["optimizer: 'adam' in the checkpoint, 'sgd' now"]),
        ({"num_particles": 2, "lr": 1e-2}, ["num_particles: 1 in the checkpoint, 2 now",
                                            "lr: 0.001 in the checkpoint, 0.01 now"]),
        ({"epochs": 1}, ["epochs: 2 in the checkpoint, 1 now (a resumed run may only get more"]),
        ({"data": "other rows"}, ["data: other values (the sha256 of its values differs)"]),
        ({"data": "more rows"}, ["data: shape (128, 64) in the checkpoint, (160, 64) now"]),
        ({"validation_data": "given"}, ["validation: none in the checkpoint, given now"]),
        ({"dtype": torch.float64}, ["dtype: 'float32' in the checkpoint, 'float64' now"]),
    ],
    ids=["lr", "seed", "batch_size", "estimator", "optimizer", "two", "fewer_epochs",
         "data_values", "data_shape", "validation", "dtype"],
)
def test_resume_refuses_another_run_listing_each_difference(digits, tmp_path, change, fragments):
    x = digits.train[:128]
    fit(*_pair(), x, checkpoint_dir=tmp_path, **_options())
    before = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    change = dict(change)
    data = {"other rows": digits.train[128:256], "more rows": digits.train[:160]}.get(
        change.pop("data", None), x)
    if change.pop("validation_data", None):
        change["validation_data"] = digits.test[:32]
    options = {**_options(), **change}
    with pytest.raises(ValueError, match="cannot resume from") as info:
        fit(*_pair(), data, checkpoint_dir=tmp_path, resume=True, **options)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    listed = message.split("checkpoint's in ", 1)[1].split(". Resume with", 1)[0].split("; ")
    assert len(listed) == len(fragments), message  # nothing else is listed
    after = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert after["epoch"] == before["epoch"] == 2  # the checkpoint is untouched


def test_a_longer_budget_is_allowed_recorded_and_continues_the_run(digits, tmp_path):
    x = digits.train[:128]
    full = fit(*_pair(), x, **_options(epochs=4))
    fit(*_pair(), x, checkpoint_dir=tmp_path, **_options(epochs=2))
    longer = fit(*_pair(1), x, checkpoint_dir=tmp_path, resume=True, **_options(epochs=4))
    assert longer.settings["epochs"] == 4
    assert longer.settings["epochs_extended"] == [{"after_epoch": 2, "from": 2, "to": 4}]
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["settings"]["epochs_extended"] == \
        longer.settings["epochs_extended"]
    pd.testing.assert_frame_equal(longer.history.drop(columns="seconds"),
                                  full.history.drop(columns="seconds"), check_exact=True)
    for part in ("model", "guide"):
        for name, value in full.params[part].items():
            assert torch.equal(longer.params[part][name], value), name


@pytest.mark.parametrize("kill_after", ["improving", "waiting", "stopped"])
def test_a_resumed_early_stopped_run_ends_like_an_uninterrupted_one(digits, tmp_path, kill_after):
    x, val = digits.train[:64], digits.test[:64]
    options = dict(validation_data=val, epochs=60, batch_size=16, lr=0.02, seed=1,
                   early_stopping_patience=2, progress=False)
    whole = fit(*_pair(), x, **options)
    assert whole.stopped_early and 6 < len(whole.history) < 60  # stops well inside the budget
    stop_epoch = len(whole.history)
    best_epoch = int(whole.history["epoch"][whole.history["val_elbo"].idxmax()])
    # Killed while the validation ELBO still improves, while the patience counts down after the
    # best epoch (a fresh counter would pick another best), or after the run stopped.
    kill = {"improving": 2, "waiting": best_epoch + 1, "stopped": stop_epoch}[kill_after]

    def die(record, state):
        if record["epoch"] == kill:
            raise Interrupt

    first = dict(options, callbacks=[die])
    if kill_after == "stopped":
        # The run ended by early stopping and is resumed anyway (the same command run again).
        first = options
    with pytest.raises(Interrupt) if kill_after != "stopped" else contextlib.nullcontext():
        fit(*_pair(), x, checkpoint_dir=tmp_path, **first)
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert ckpt["epoch"] == kill
    assert ckpt["early_stopping"]["best_epoch"] <= kill
    resumed = fit(*_pair(7), x, checkpoint_dir=tmp_path, resume=True, **options)
    assert resumed.stopped_early
    pd.testing.assert_frame_equal(resumed.history.drop(columns="seconds"),
                                  whole.history.drop(columns="seconds"), check_exact=True)
    for part in ("model", "guide"):
        for name, value in whole.params[part].items():
            assert torch.equal(resumed.params[part][name], value), name  # the best epoch's


def test_cli_resume_with_another_learning_rate_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--epochs", "1", "--latent-dim", "2", "--hidden", "8", "--no-progress",
            "--eval-samples", "3", "--out", str(out)]
    assert main(args) == 0
    assert main([*args, "--resume", "--lr", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume from" in err and "lr: 0.001 in the checkpoint, 0.01 now" in err
    assert main([*args, "--resume", "--epochs", "2"]) == 0  # a longer budget is fine
    assert pd.read_csv(out / "history.csv")["epoch"].tolist() == [1, 2]
    assert np.isfinite(pd.read_csv(out / "history.csv")["train_elbo"]).all()
