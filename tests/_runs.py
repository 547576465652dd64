"""What a finished ``ppl-vae train`` / ``run`` must have printed and written, checked by value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def assert_elbo_rises(history: pd.DataFrame, column: str = "train_elbo") -> None:
    """The mean ELBO of the last third of the epochs exceeds that of the first third (the first
    and last epoch for two or three epochs): training raised it."""
    k = max(1, len(history) // 3)
    first, last = history[column].iloc[:k].mean(), history[column].iloc[-k:].mean()
    assert last > first, f"{column} did not rise: {history[column].tolist()}"


def assert_trained_run(out: Path, printed: str, *, model: str, guide: str, epochs: int,
                       rises: bool = True) -> pd.DataFrame:
    """Check a run folder and the command's standard output; return its history.

    - ``config.json`` names the programs and the epochs; ``final.pt`` holds finite parameters;
    - ``history.csv`` has one row per epoch with finite ELBOs, rising from the first epoch to
      the last when ``rises`` (the run trained, :func:`assert_elbo_rises`);
    - ``evaluation.csv`` holds finite ``elbo``, ``iwae``, ``kl``, ``recon`` with
      ``elbo = recon - kl`` and ``iwae >= elbo`` (the same draws: log-mean-exp >= mean), and the
      printed evaluation table shows those numbers.
    """
    out = Path(out)
    config = json.loads((out / "config.json").read_text())
    assert (config["model"], config["guide"]) == (model, guide)
    assert config["settings"]["epochs"] == epochs
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == list(range(1, epochs + 1))
    assert np.isfinite(history["train_elbo"]).all()
    if rises:
        assert_elbo_rises(history)
    final = torch.load(out / "final.pt", weights_only=True)["params"]
    values = [v for part in final.values() for v in part.values()]
    assert values and all(torch.isfinite(v).all() for v in values if v.is_floating_point())
    ev = pd.read_csv(out / "evaluation.csv", index_col=0).iloc[:, 0]
    assert np.isfinite(ev[["elbo", "iwae", "kl", "recon"]]).all()
    assert abs(ev["elbo"] - (ev["recon"] - ev["kl"])) < 1e-4 * max(1.0, abs(ev["elbo"]))
    assert ev["iwae"] >= ev["elbo"] - 1e-5 * max(1.0, abs(ev["elbo"]))
    assert f"training {model} / {guide}" in printed
    for key in ("elbo", "iwae", "kl", "recon"):
        assert f"{ev[key]:.4f}" in printed, (key, printed)
    return history
