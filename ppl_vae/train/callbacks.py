"""``fit``'s built-in callbacks: early stopping and checkpointing.

Both keep their state in plain containers (``state_dict`` / ``load_state_dict``) that the
checkpoint holds, so a resumed run continues them exactly: an early-stopped run resumed from any
epoch stops at the same epoch with the same best parameters as an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

from ppl_vae.train.checkpoint import (
    CHECKPOINT_NAME,
    capture_params,
    capture_rng,
    restore_params,
    save_checkpoint,
    save_history,
)
from ppl_vae.train.state import TrainState

__all__ = ["EarlyStopping", "Checkpointer"]


class EarlyStopping:
    """Stop after ``patience`` epochs without a better monitored ELBO; keep the best parameters.

    Parameters
    ----------
    patience : int or None
        Epochs without an improvement larger than ``tolerance`` before stopping (None: never
        stop, only track the best epoch and drive the learning-rate schedule).
    tolerance : float
        An epoch improves on the best only by more than this (nats per data point).
    monitor : {"val_elbo", "train_elbo"}
        The history column watched; the training ELBO is smoothed over epochs (exponential
        moving average with weight ``smoothing`` on the newest epoch) since its epoch-to-epoch
        noise would otherwise pick a lucky epoch.
    smoothing : float or None
    warmup : int
        Epochs not counted (the objective is not the ELBO during a KL warm-up).
    keep_best : bool
        Restore the best parameters at the end even when the patience did not run out
        (``epochs="auto"``: the budget or the time ran out first).
    lr_schedule : torch.optim.lr_scheduler.ReduceLROnPlateau, optional
        Stepped with the monitored value after every epoch; its state is part of this one's.

    Attributes
    ----------
    best : float
        The best monitored value so far (``-inf`` before the first epoch).
    best_epoch : int
        Its epoch (0 before the first); ``epoch - best_epoch`` is the patience counter.
    best_params : dict or None
        A :func:`~ppl_vae.train.checkpoint.capture_params` snapshot at ``best_epoch``.
    stopped : bool
        Whether the patience ran out (a resumed run then trains no further).
    """

    def __init__(self, patience: int | None, *, tolerance: float = 0.0,
                 monitor: str = "val_elbo", smoothing: float | None = None, warmup: int = 0,
                 keep_best: bool = False, lr_schedule=None):
        self.patience = None if patience is None else int(patience)
        self.tolerance, self.monitor, self.smoothing = float(tolerance), monitor, smoothing
        self.warmup, self.keep_best, self.lr_schedule = int(warmup), bool(keep_best), lr_schedule
        self.best, self.best_epoch, self.best_params, self.stopped = float("-inf"), 0, None, False
        self.smoothed = None

    def value(self, record: dict) -> float:
        """The monitored value of an epoch (smoothed when asked); also stored in ``record``."""
        value = float(record[self.monitor])
        if self.smoothing is not None:
            prev = self.smoothed
            value = value if prev is None else self.smoothing * value + (1 - self.smoothing) * prev
            self.smoothed = value
            record["smoothed_" + self.monitor] = value
        return value

    def update(self, record: dict, model, guide, state: TrainState) -> bool:
        """Record an epoch; return whether training stops here."""
        value = self.value(record)
        if self.lr_schedule is not None:
            self.lr_schedule.step(value)
        if record["epoch"] <= self.warmup:
            return False
        if value > self.best + self.tolerance or self.best_params is None:
            self.best, self.best_epoch = value, record["epoch"]
            self.best_params = capture_params(model, guide, state.param_names)
        elif self.patience is not None and record["epoch"] - self.best_epoch >= self.patience:
            self.stopped = True
        return self.stopped

    def restore_best(self, model, guide) -> int | None:
        """Restore the best epoch's parameters when this run keeps them; return that epoch
        (None when the last epoch's parameters stay)."""
        if (self.stopped or self.keep_best) and self.best_params is not None:
            restore_params(self.best_params, model, guide)
            return self.best_epoch
        return None

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "best_params": self.best_params,
                "stopped": self.stopped, "patience": self.patience, "smoothed": self.smoothed,
                "lr_schedule": None if self.lr_schedule is None
                else self.lr_schedule.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])
        self.best_params, self.stopped = state["best_params"], bool(state["stopped"])
        self.smoothed = state.get("smoothed")
        if self.lr_schedule is not None and state.get("lr_schedule") is not None:
            self.lr_schedule.load_state_dict(state["lr_schedule"])


class Checkpointer:
    """Write ``history.csv`` and ``checkpoint.pt`` (each atomically) into ``directory`` after every
    epoch, from the main process only.

    Attributes
    ----------
    path : pathlib.Path
        The checkpoint file.
    saved_epoch : int or None
        The epoch of the checkpoint on disk from this run (or the one it resumed from).
    """

    def __init__(self, directory: Path, *, is_main: bool = True):
        self.directory, self.is_main = Path(directory), is_main
        self.path = self.directory / CHECKPOINT_NAME
        self.saved_epoch: int | None = None

    def save(self, epoch: int, records: list, model, guide, state: TrainState, settings: dict,
             early_stopping: EarlyStopping | None) -> None:
        if self.is_main:
            # history.csv first: a checkpoint on disk always has its history beside it. Both are
            # recorded in the folder's manifest (created by the first of them).
            save_history(self.directory, records)
            save_checkpoint(self.path, {
                "epoch": epoch, "step": state.step, "history": records,
                "params": capture_params(model, guide, state.param_names),
                "optimizer": state.optimizer.state_dict(), "rng": capture_rng(),
                "settings": settings,
                "early_stopping": None if early_stopping is None else early_stopping.state_dict(),
            })
        self.saved_epoch = epoch  # written by the main process, for every process to name

    @property
    def where(self) -> tuple[Path, int | None]:
        """For the divergence message: the checkpoint path and the epoch it holds."""
        return self.path, self.saved_epoch
