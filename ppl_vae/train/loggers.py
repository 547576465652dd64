"""Experiment loggers: ``fit(..., loggers=[...])`` with Lightning's loggers.

Any :class:`lightning.fabric.loggers.Logger` works (``CSVLogger``, ``TensorBoardLogger``; and
Lightning's MLflow and W&B loggers, which implement the same interface). Per epoch they get
``train_elbo``, ``val_elbo`` (with validation data), ``kl``, ``lr``, ``kl_weight`` and
``seconds``; once, the settings of the run as hyperparameters.

``kl`` is a Monte Carlo estimate: one draw of ``log q(z) - log p(z)`` summed over the latent
sites, per row of a fixed batch of at most :data:`KL_ROWS` rows (validation rows when given):
enough to follow the trend (collapse, warm-up), cheap enough for every epoch.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from collections.abc import Sequence

import torch

from ppl_vae.estimators.kl import program_traces
from ppl_vae.programs.checks import latent_sites

__all__ = ["KL_ROWS", "check_loggers", "fabric_loggers", "logger_bases", "EpochLoggers", "batch_kl"]

KL_ROWS = 256


def fabric_loggers():
    """Fabric's loggers module: ``lightning_fabric.loggers`` (the ``distributed`` and
    ``loggers`` extras install only that package) or ``lightning.fabric.loggers`` (the whole
    ``lightning`` package); None where neither is installed."""
    for package, module in (("lightning_fabric", "lightning_fabric.loggers"),
                            ("lightning", "lightning.fabric.loggers")):
        if importlib.util.find_spec(package) is not None:
            return importlib.import_module(module)
    return None


def logger_bases() -> tuple[type, ...]:
    """The ``Logger`` base classes installed: the two packages' classes are distinct, and
    Lightning's own loggers (``lightning.pytorch.loggers``) derive from ``lightning.fabric``'s."""
    bases = []
    for package, module in (("lightning_fabric", "lightning_fabric.loggers"),
                            ("lightning", "lightning.fabric.loggers")):
        if importlib.util.find_spec(package) is not None:
            bases.append(importlib.import_module(module).Logger)
    return tuple(bases)


def check_loggers(loggers) -> tuple:
    """``loggers`` as a tuple, each a Lightning ``Logger`` (``TypeError`` naming the one that is
    not). Lightning is imported only when loggers are given (the ``loggers`` extra)."""
    loggers = tuple(loggers or ())
    if not loggers:
        return ()
    bases = logger_bases()
    if not bases:
        raise ImportError("loggers need Lightning Fabric: pip install 'ppl-vae[loggers]'")
    for i, logger in enumerate(loggers):
        if not isinstance(logger, bases):
            raise TypeError(f"loggers[{i}] is a {type(logger).__name__}, not a "
                            "lightning.fabric.loggers.Logger (CSVLogger, TensorBoardLogger, ...)")
    return loggers


def batch_kl(model, guide, batch: Sequence[torch.Tensor]) -> float:
    """One draw of ``sum over latent sites of log q(z) - log p(z)``, divided by the rows of
    ``batch`` (nats per row). Global sites count once for the batch."""
    model_trace, guide_trace = program_traces(model, guide, tuple(batch))
    total = 0.0
    for name in latent_sites(model_trace):
        if name in guide_trace.nodes:
            q, p = guide_trace.nodes[name], model_trace.nodes[name]
            total += float(q["fn"].log_prob(q["value"]).sum() - p["fn"].log_prob(p["value"]).sum())
    return total / int(batch[0].shape[0])


class EpochLoggers:
    """Send the history rows of ``fit`` to the loggers.

    Parameters
    ----------
    loggers : tuple of lightning.fabric.loggers.Logger
    model, guide : the programs (for ``kl``)
    batch : tuple of tensors, optional
        The fixed rows ``kl`` is measured on; None: no ``kl``.
    """

    def __init__(self, loggers: tuple, model, guide, batch=None):
        self.loggers, self.model, self.guide = loggers, model, guide
        self.batch = None if batch is None else tuple(t[:KL_ROWS] for t in batch)

    def start(self, settings: dict) -> None:
        hparams = {k: v for k, v in settings.items() if k != "fingerprint"}
        for logger in self.loggers:
            try:
                logger.log_hyperparams(hparams)
            except NotImplementedError:  # Fabric's CSVLogger: metrics only
                warnings.warn(f"{type(logger).__module__}.{type(logger).__name__} does not log "
                              "hyperparameters: the settings are in FitResult.settings (Lightning's "
                              "lightning.pytorch.loggers.CSVLogger writes them to hparams.yaml)",
                              stacklevel=4)

    def epoch(self, record: dict, state) -> None:
        metrics = {k: float(record[k]) for k in ("train_elbo", "val_elbo", "seconds")
                   if k in record}
        metrics["lr"] = float(state.optimizer.param_groups[0]["lr"])
        metrics["kl_weight"] = float(record.get("kl_weight", 1.0))
        if self.batch is not None:
            metrics["kl"] = batch_kl(self.model, self.guide, self.batch)
        for logger in self.loggers:
            logger.log_metrics(metrics, step=int(record["epoch"]))

    def finish(self, status: str = "success") -> None:
        for logger in self.loggers:
            logger.finalize(status)
