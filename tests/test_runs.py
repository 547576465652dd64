"""The run-folder jobs called from Python, as the CLI and the benchmarks call them: train into a
folder, evaluate it, diagnose it; files read back only while current."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ppl_vae.cli.main import build_parser, config_from_args
from ppl_vae.runs import (
    checkpoint_digest,
    diagnose_run,
    evaluate_run,
    read_diagnostics,
    train_into,
    writing,
)


def test_train_evaluate_and_diagnose_a_folder_from_python(tmp_path):
    out = tmp_path / "digits"
    args = build_parser().parse_args([
        "train", "--data", "digits", "--epochs", "1", "--latent-dim", "2", "--hidden", "16",
        "--batch-size", "256", "--no-progress", "--out", str(out)])
    with writing(out):
        config, result, dataset = train_into(out, args, config=config_from_args(args))
    assert json.loads((out / "config.json").read_text())["settings"]["epochs"] == 1
    assert len(result.history) == 1 and (out / "final.pt").is_file()
    with pytest.raises(FileExistsError, match="already holds a run"), writing(out):
        train_into(out, args, config=config)  # no --resume, no --overwrite: refused

    with writing(out):
        ev = dict(evaluate_run(out, num_samples=10))
    written = pd.read_csv(out / "evaluation.csv", index_col=0).iloc[:, 0]
    assert written["elbo"] == pytest.approx(ev["elbo"]) and ev["iwae"] >= ev["elbo"]

    with writing(out):
        _, diag = diagnose_run(out, num_draws=30, gaps=False, calibrate=False, points=5,
                               progress=False)
    assert diag.prior_means is not None  # what the report shows, computed here
    back = read_diagnostics(out, digest=checkpoint_digest(out))
    pd.testing.assert_frame_equal(back.prior_means, diag.prior_means, check_exact=False,
                                  rtol=1e-6)
    assert read_diagnostics(out, digest="another checkpoint") is None  # not current: not read
