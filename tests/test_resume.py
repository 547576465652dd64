"""A training process killed with SIGKILL in the middle of an epoch resumes from its last
checkpoint and ends bit-for-bit where an uninterrupted run with the same seed ends."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

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
    while _checkpoint_epoch(killed) < 1:
        assert proc.poll() is None, proc.communicate()[0].decode()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    before = _checkpoint_epoch(killed)
    # About half an epoch after epoch `before` was saved: inside epoch `before + 1`.
    seconds = pd.read_csv(killed / "history.csv")["seconds"].median()
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
