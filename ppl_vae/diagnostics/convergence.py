"""Has training converged? The slope of the ELBO over the last part of training, against its
noise.

A least-squares line is fitted to the last third of the epochs (at least 10) (validation ELBO when the
history has one, the training ELBO otherwise). Training is "still improving" when the slope is
positive beyond 1.645 standard errors (one-sided 5%) (the residual scatter around the line is the noise) and the
gain it implies over the last 10% of the epochs is larger than ``tolerance`` nats per data point:
a curve that keeps rising is a model that has not finished learning, whatever its other checks
say.

A learning-rate schedule changes what "still improving" means: when the history's ``lr`` fell
inside the fitted tail, the slope of the epochs at a higher rate says nothing about what more
epochs would gain now. The line is then fitted on the final epochs whose rate is within a factor
2 of the last one (at least 5 of them): a run whose ELBO rose while the rate was high and is flat
at the rate it ended with has converged for its schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["Convergence", "convergence"]


@dataclass(frozen=True)
class Convergence:
    """What :func:`convergence` found.

    Attributes
    ----------
    column : str
        The history column judged (``"val_elbo"`` or ``"train_elbo"``).
    epochs : int
        Epochs in the history.
    window : int
        Epochs in the fitted tail.
    slope, slope_se : float
        Least-squares slope (nats per data point per epoch) and its standard error.
    gain_last_10pct : float
        slope * (number of epochs in the last 10%): what the last tenth of training gained.
    still_improving : bool
    """

    column: str
    epochs: int
    window: int
    slope: float
    slope_se: float
    gain_last_10pct: float
    still_improving: bool
    lr_start: float | None = None
    lr_end: float | None = None
    stopped_by: str | None = None

    @property
    def lr_note(self) -> str:
        """Where the fitted epochs lie in the learning-rate schedule ('' without a cut)."""
        if self.lr_start is None or self.lr_end is None or self.lr_end >= self.lr_start:
            return ""
        return (f" (fitted on the {self.window} final epochs at a learning rate of "
                f"{self.lr_end:.2g}, or within a factor 2 of it; the schedule had cut it from "
                f"{self.lr_start:.2g})")

    @property
    def z(self) -> float:
        """slope / standard error (inf for a noiseless rising line)."""
        if self.slope_se > 0:
            return self.slope / self.slope_se
        return math.inf if self.slope > 0 else 0.0


def convergence(history: pd.DataFrame, *, tail: float = 1 / 3, min_window: int = 10,
                z: float = 1.645, tolerance: float = 0.02,
                stopped_by: str | None = None) -> Convergence | None:
    """Judge whether the ELBO was still rising when training stopped.

    Parameters
    ----------
    history : pandas.DataFrame
        ``fit``'s history: ``epoch`` and ``train_elbo``, optionally ``val_elbo``.
    tail : float
        Share of the epochs (at the end) the line is fitted on.
    min_window : int
        At least this many epochs in the fitted tail; shorter histories return None.
    z : float
        The slope must exceed ``z`` standard errors to count as rising (one-sided 5%).
    tolerance : float
        ... and the gain over the last 10% of the epochs must exceed this (nats per data point).
    stopped_by : str, optional
        What ended the training (``fit``'s ``settings["stopped_by"]``), for the advice.

    Returns
    -------
    Convergence or None
        None when the history has fewer than ``min_window`` finite ELBO values.
    """
    if history is None or len(history) == 0:
        return None
    column = ("val_elbo" if "val_elbo" in history and history["val_elbo"].notna().all()
              else "train_elbo")
    if column not in history:
        return None
    values = history[column].to_numpy(dtype=float)
    epochs = (history["epoch"].to_numpy(dtype=float) if "epoch" in history
              else np.arange(1, len(values) + 1, dtype=float))
    finite = np.isfinite(values)
    lr = history["lr"].to_numpy(dtype=float)[finite] if "lr" in history else None
    values, epochs = values[finite], epochs[finite]
    n = len(values)
    window = max(int(min_window), int(math.ceil(tail * n)))
    if n < max(int(min_window), 3) or window > n:
        return None
    x, y = epochs[-window:], values[-window:]
    lr_start = lr_end = None
    if lr is not None and np.isfinite(lr[-window:]).all():
        high = np.nonzero(lr[-window:] > 2 * lr[-1])[0]
        final = window - (high[-1] + 1) if high.size else window
        if high.size and final >= 5:  # the rate was cut inside the tail: judge its end
            lr_start, lr_end = float(lr[-window]), float(lr[-1])
            x, y, window = x[-final:], y[-final:], final
    x = x - x.mean()
    slope = float((x * (y - y.mean())).sum() / (x**2).sum())
    resid = y - y.mean() - slope * x
    # Epoch-to-epoch ELBO noise is roughly independent; the OLS standard error of the slope.
    se = float(math.sqrt((resid**2).sum() / max(window - 2, 1) / (x**2).sum()))
    last = max(1, int(math.ceil(0.1 * n)))
    gain = slope * last
    ratio = slope / se if se > 0 else (math.inf if slope > 0 else 0.0)
    improving = bool(ratio > z and gain > tolerance)
    return Convergence(column, n, window, slope, se, gain, improving, lr_start, lr_end,
                       stopped_by)
