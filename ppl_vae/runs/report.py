"""The report of a run folder."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ppl_vae.evaluation.export import DEFAULT_POINTS
from ppl_vae.evaluation.metrics import evaluate
from ppl_vae.reporting.page import report
from ppl_vae.runs.diagnose import diagnose_run
from ppl_vae.storage.files import read_run_file

__all__ = ["report_run"]


def report_run(run_dir, *, out=None, num_draws: int = 200, gaps: bool = True,
               calibrate: bool = True, points=DEFAULT_POINTS, progress: bool | None = None,
               timings: dict | None = None, run=None) -> Path:
    """Write the report of a run folder (``RUN_DIR/report.html`` by default). ``run``: the
    already loaded run (for example the programs just trained); default ``load_run(run_dir)``.

    The diagnostics files are read back when they are current for the run (same checkpoint
    sha256 and options, see :func:`~ppl_vae.runs.diagnose.diagnose_run`); only what is
    missing is computed, and written. ``timings``, when given, receives the seconds of each
    phase (``diagnose: <phase>``, ``report``).
    """
    run_dir = Path(run_dir)
    start = time.perf_counter()
    run, diag = diagnose_run(run_dir, num_draws=num_draws, gaps=gaps, calibrate=calibrate,
                             points=points, progress=progress, reuse=True, run=run)
    if timings is not None:
        timings.update({f"diagnose: {k}": v for k, v in diag.timings.items()})
        timings["diagnose (total, or reading the files)"] = time.perf_counter() - start
    start = time.perf_counter()
    ev_file = run_dir / "evaluation.csv"
    trained = max((run_dir / f).stat().st_mtime for f in ("final.pt", "checkpoint.pt")
                  if (run_dir / f).exists())
    if ev_file.exists() and ev_file.stat().st_mtime >= trained:  # written after the training
        frame = pd.read_csv(io.BytesIO(read_run_file(ev_file)), index_col=0)
        evaluation = dict(frame.iloc[:, 0])
    else:
        evaluation = evaluate(run.model, run.guide, run.data("test"))
    labels = run.dataset.test_labels
    settings = {**run.config.get("settings", {}), "model": run.config.get("model"),
                "guide": run.config.get("guide"), "data": run.config.get("data"),
                "split": f"test ({run.dataset.test.shape[0]:,} rows; trained on "
                         f"{run.dataset.train.shape[0]:,})"}
    path = report(run.model, run.guide, run.data("test"), out=out or run_dir / "report.html",
                  diagnostics=diag, history=run.history, settings=settings,
                  evaluation=evaluation, image_shape=run.dataset.image_shape,
                  labels=None if labels is None else np.asarray(labels),
                  title=f"ppl-vae report: {run_dir.name}")
    if timings is not None:
        timings["report"] = time.perf_counter() - start
    return path
