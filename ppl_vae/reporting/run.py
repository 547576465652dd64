"""The report of a run folder."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from ppl_vae.diagnostics.run import diagnose_run
from ppl_vae.evaluation.metrics import evaluate
from ppl_vae.reporting.page import report
from ppl_vae.train.storage import read_run_file

__all__ = ["report_run"]


def report_run(run_dir, *, out=None, num_draws: int = 200, gaps: bool = True,
               calibrate: bool = True, run=None) -> Path:
    """Diagnose a run folder (writing diagnostics.nc / .csv) and write its report
    (``RUN_DIR/report.html`` by default). ``run``: the already loaded run (for example the
    programs just trained); default ``load_run(run_dir)``."""
    run_dir = Path(run_dir)
    run, diag = diagnose_run(run_dir, num_draws=num_draws, gaps=gaps, calibrate=calibrate,
                             run=run)
    ev_file = run_dir / "evaluation.csv"
    if ev_file.exists():
        frame = pd.read_csv(io.BytesIO(read_run_file(ev_file)), index_col=0)
        evaluation = dict(frame.iloc[:, 0])
    else:
        evaluation = evaluate(run.model, run.guide, run.data("test"))
    labels = run.dataset.test_labels
    settings = {**run.config.get("settings", {}), "model": run.config.get("model"),
                "guide": run.config.get("guide"), "data": run.config.get("data")}
    return report(run.model, run.guide, run.data("test"), out=out or run_dir / "report.html",
                  diagnostics=diag, history=run.history, settings=settings,
                  evaluation=evaluation, image_shape=run.dataset.image_shape,
                  labels=None if labels is None else np.asarray(labels),
                  title=f"ppl-vae report: {run_dir.name}")
