"""Shared pieces of the trust tests (tests/test_bad_inputs.py, tests/test_run_faults.py): tiny
run folders, a user program in a file, and a program that would leave a marker if imported."""

import shutil
from pathlib import Path

from ppl_vae.cli import main

# The smallest real run: eight schools (8 rows), one epoch, a handful of evaluation samples
# (argparse keeps the last value: append "--epochs", "3" for another budget).
TRAIN = ["train", "--model", "eight_schools", "--guide", "eight_schools", "--data",
         "eight_schools", "--estimator", "mc", "--epochs", "1", "--batch-size", "8",
         "--no-progress", "--eval-samples", "3"]
REPORT = ["--num-draws", "30", "--no-sbc", "--no-gaps"]

# A user program written the way Pyro users write one: plain functions, a pyro.param guide.
USER_PROGRAM = """
import pyro, pyro.distributions as dist, torch

def model(sigma, y):
    mu = pyro.sample("mu", dist.Normal(sigma.new_zeros(()), 10.0))
    with pyro.plate("data", sigma.shape[0]):
        pyro.sample("y", dist.Normal(mu, sigma.squeeze(-1)), obs=y)

def guide(sigma, y):
    loc = pyro.param("loc", lambda: sigma.new_zeros(()))
    pyro.sample("mu", dist.Normal(loc, 1.0))
"""

# Imported, this leaves a marker file: a test that finds the marker caught code being run.
PLANTED_PROGRAM = """
import pathlib
pathlib.Path(__file__).with_name("MARKER").write_text("code from a run folder ran")
""" + USER_PROGRAM


def make_run(folder: Path, *, report: bool = True) -> Path:
    """Train the tiny run into ``folder`` (and write its diagnostics and report)."""
    assert main([*TRAIN, "--out", str(folder)]) == 0
    if report:
        assert main(["report", str(folder), *REPORT]) == 0
    return folder


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def flip_bit(path: Path, position: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * position)] ^= 0x10
    path.write_bytes(bytes(data))
