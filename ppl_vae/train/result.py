"""What ``fit`` returns."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ppl_vae.train.saving import save_result

__all__ = ["FitResult", "TrainingDivergedError"]


@dataclass(repr=False)
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
        The training state after the last step (loss module, optimizer, step count), to
        continue with ``update``.
    stopped_early : bool
        Whether early stopping ended training (the best validation parameters are restored).
    record : dict or None
        For a result read by :func:`ppl_vae.load`: how its folder recorded the programs (zoo
        names and options, ``file.py:name`` and sha256), written again by :meth:`save`.
    """

    model: Any
    guide: Any
    history: pd.DataFrame
    params: dict
    settings: dict
    state: Any = field(repr=False, default=None)
    stopped_early: bool = False
    # config.json's program entries of the folder ppl_vae.load read this from (save keeps them).
    record: dict | None = None

    def save(self, path, *, data=None, validation_data=None, overwrite: bool = False) -> Path:
        """Write this result as a run folder (the CLI's format: ``config.json``,
        ``history.csv``, ``final.pt``, ``manifest.json``), read back by :func:`ppl_vae.load`
        and by ``ppl-vae evaluate / diagnose / report / latents / compare``.

        Parameters
        ----------
        path : str or Path
            The folder. One that holds a run already is refused unless ``overwrite=True``
            (which removes that run's files only).
        data, validation_data : optional
            What ``fit`` was given (arrays, tensors or ``(x, y)`` tuples; written to the folder
            as ``data.npz``), or a data-set name or file as the CLI's ``--data`` (``"digits"``).
            Checked against the training data's fingerprint. Without ``data`` only Python can
            evaluate the folder (``ppl_vae.load(..., data=...)``).

        Returns
        -------
        Path
            The folder.
        """
        return save_result(self, path, data=data, validation_data=validation_data,
                           overwrite=overwrite)

    def summary(self) -> dict:
        """Epochs, final train / validation ELBO, seconds and what stopped training."""
        last = self.history.iloc[-1] if len(self.history) else {}
        out = {"epochs": int(last.get("epoch", 0)) if len(self.history) else 0,
               "train_elbo": last.get("train_elbo"), "val_elbo": last.get("val_elbo"),
               "seconds": float(self.history["seconds"].sum())
               if "seconds" in self.history else None,
               "stopped_by": self.settings.get("stopped_by")}
        return {k: v for k, v in out.items() if v is not None and v == v}

    def _line(self) -> str:
        parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                 for k, v in self.summary().items()]
        return (f"estimator={self.settings.get('estimator')!r}, " + ", ".join(parts))

    def __repr__(self) -> str:
        return (f"FitResult(model={_name(self.model)}, guide={_name(self.guide)}, "
                f"{self._line()})")

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                       f"<td>{html.escape(f'{v:.4g}' if isinstance(v, float) else str(v))}</td></tr>"
                       for k, v in {"model": _name(self.model), "guide": _name(self.guide),
                                    "estimator": self.settings.get("estimator"),
                                    **self.summary()}.items())
        return f"<div><b>FitResult</b><table>{rows}</table></div>"


def _name(program) -> str:
    return getattr(program, "__qualname__", type(program).__name__)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite. ``history`` holds the completed epochs; the last good
    checkpoint (when ``checkpoint_dir`` was given) is left untouched on disk."""

    def __init__(self, message: str, history: pd.DataFrame, epoch: int, step: int):
        super().__init__(message)
        self.history = history
        self.epoch = epoch
        self.step = step
