"""``diagnose(..., devices=2)``: the data points sharded over 2 CPU processes (gloo, Lightning
Fabric) give the same per-point tables, latent table, SBC ranks and exported draws as one
process, because every chunk is seeded from (seed, its first point)."""

import numpy as np
import pandas as pd
import pytest
import torch

from ppl_vae import diagnose
from ppl_vae.guides import MLPEncoder
from ppl_vae.models import VAE

pytest.importorskip("lightning_fabric")


def test_two_processes_match_one(digits):
    torch.manual_seed(0)
    model, guide = VAE(64, 2, hidden=8), MLPEncoder(64, 2, hidden=8)
    x = torch.as_tensor(digits.test[:40])
    # chunk_size=7: 6 chunks, split 3 / 3 between the processes, the last one short.
    kwargs = dict(num_draws=30, gaps=False, sbc_draws=29, points=9, chunk_size=7,
                  progress=False)
    one = diagnose(model, guide, x, **kwargs)
    two = diagnose(model, guide, x, devices=2, strategy="ddp_fork", **kwargs)
    assert len(one.pointwise) == 40
    assert (one.tree.attrs["num_processes"], two.tree.attrs["num_processes"]) == (1, 2)
    pd.testing.assert_frame_equal(one.pointwise, two.pointwise)
    pd.testing.assert_frame_equal(one.latent, two.latent)
    pd.testing.assert_frame_equal(one.sbc.ranks, two.sbc.ranks)
    np.testing.assert_array_equal(one.tree["posterior"]["z"].values,
                                  two.tree["posterior"]["z"].values)
    assert one.mutual_information == two.mutual_information
    pd.testing.assert_frame_equal(one.checks, two.checks)


def test_cli_diagnose_on_two_processes(tmp_path):
    import subprocess
    import sys

    from ppl_vae.cli import main
    from ppl_vae.runs.diagnose import read_tree

    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--epochs", "1", "--latent-dim", "2", "--hidden",
                 "8", "--no-progress", "--out", str(run)]) == 0
    args = ["diagnose", str(run), "--num-draws", "30", "--no-gaps", "--no-sbc", "--points", "5"]
    assert main(args) == 0
    one = pd.read_csv(run / "diagnostics.csv")
    # Lightning's ddp strategy re-runs the command for rank 1, so it runs as a script here.
    done = subprocess.run([sys.executable, "-m", "ppl_vae.cli", *args, "--devices", "2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Pareto k-hat" in done.stdout
    pd.testing.assert_frame_equal(one, pd.read_csv(run / "diagnostics.csv"))
    assert read_tree(run / "diagnostics.nc").attrs["num_processes"] == 2
