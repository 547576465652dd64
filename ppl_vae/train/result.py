"""What ``fit`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

__all__ = ["FitResult", "TrainingDivergedError"]


@dataclass
class FitResult:
    """A trained model/guide pair and how it got there.

    Attributes
    ----------
    model, guide : callable
        The programs, with trained parameters (``state_dict()`` for modules).
    history : pandas.DataFrame
        One row per epoch: ``epoch``, ``train_elbo`` and (with validation data) ``val_elbo``, in
        nats per data point, ``seconds`` and ``steps``.
    params : dict
        Final trained values: ``{"pyro_params": {name: unconstrained tensor}, "model": state
        dict, "guide": state dict}`` (module entries only for ``torch.nn.Module`` programs).
    settings : dict
        The arguments ``fit`` used (JSON-serialisable).
    state : ppl_vae.train.TrainState
        The final training state (loss module and optimizer), to continue with ``update``.
    stopped_early : bool
        Whether early stopping ended training (the best validation parameters are restored).
    """

    model: Any
    guide: Any
    history: pd.DataFrame
    params: dict
    settings: dict
    state: Any = field(repr=False, default=None)
    stopped_early: bool = False


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite. ``history`` holds the completed epochs; the last good
    checkpoint (when ``checkpoint_dir`` was given) is left untouched on disk."""

    def __init__(self, message: str, history: pd.DataFrame, epoch: int, step: int):
        super().__init__(message)
        self.history = history
        self.epoch = epoch
        self.step = step
