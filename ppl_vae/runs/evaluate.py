"""Evaluate a run folder: the test-set table, written as ``evaluation.csv``."""

from __future__ import annotations

from pathlib import Path

from ppl_vae.evaluation.metrics import Evaluation, evaluate
from ppl_vae.storage.files import write_bytes
from ppl_vae.train.run_dir import load_run

__all__ = ["evaluate_run"]


def evaluate_run(run_dir, *, num_samples: int = 100, split: str = "test",
                 run=None) -> Evaluation:
    """Evaluate a run's programs on its ``split`` and write ``RUN_DIR/evaluation.csv``.

    Parameters
    ----------
    run_dir : str or Path
        The run folder (hold its lock, :func:`ppl_vae.runs.train.writing`).
    num_samples : int
        K of the importance-weighted bound (IWAE).
    split : str
        ``"test"`` or ``"train"``.
    run : ppl_vae.train.run_dir.Run, optional
        The already loaded run (for example with the user programs named again); default
        ``load_run(run_dir)``.

    Returns
    -------
    Evaluation
        What :func:`ppl_vae.evaluate` returns; the same table is in ``evaluation.csv``.
    """
    run = load_run(run_dir) if run is None else run
    ev = evaluate(run.model, run.guide, run.data(split), num_samples=num_samples)
    write_bytes(Path(run_dir) / "evaluation.csv", ev.to_frame().to_csv().encode())
    return ev
