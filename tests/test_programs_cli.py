"""Every corpus program (``tests/programs/``) from the command line: a file that builds the
programs and loads the data (``--model f.py:model --guide f.py:guide --data f.py:load``,
as a user's own file would), trained, evaluated and reported by the CLI. The numbers are
checked against plain Pyro in ``test_programs_corpus.py``; here, that each program's plate,
scales and structure survive the run folder: loading it again for the report."""

import importlib
import math
from pathlib import Path

import pandas as pd
import pytest

from ppl_vae.cli import main

PROGRAMS = ["vae_soft", "ssvae", "dmm", "bayes_regression:diagonal", "subsampled", "prodlda",
            "gmm", "scanvi", "scvi_plate", "air_like", "cvae", "sparse_gamma_def"]
TESTS = Path(__file__).resolve().parent

WRAPPER = """import sys
sys.path.insert(0, {tests!r})
import torch
from programs import {name} as program
model, guide = program.make(torch.float32{variant})
def load():
    return program.data()
"""


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("program", PROGRAMS)
def test_program_trains_and_reports_from_the_command_line(program, tmp_path, capsys):
    name, _, variant = program.partition(":")
    module = importlib.import_module(f"programs.{name}")
    source = tmp_path / f"my_{name}.py"
    source.write_text(WRAPPER.format(tests=str(TESTS), name=name,
                                     variant=f", {variant!r}" if variant else ""))
    named = ["--model", f"{source}:model", "--guide", f"{source}:guide",
             "--data", f"{source}:load"]
    out = tmp_path / "run"
    rows = module.data()[0].shape[0]
    batch = rows if name == "sparse_gamma_def" else 10  # per-row parameters: the full batch
    assert main(["train", *named, "--out", str(out), "--estimator", module.ESTIMATORS[0],
                 "--epochs", "1", "--batch-size", str(batch), "--no-progress",
                 "--eval-samples", "5"]) == 0, capsys.readouterr().err
    elbo = pd.read_csv(out / "evaluation.csv", index_col=0).iloc[:, 0]["elbo"]
    assert math.isfinite(elbo)
    assert main(["report", str(out), *named, "--num-draws", "30", "--no-sbc",
                 "--no-gaps"]) == 0, capsys.readouterr().err
    assert "Verdicts" in (out / "report.html").read_text()
