"""``fit``'s arguments, checked before anything runs: one line naming the argument for each bad one.

:func:`check_arguments` turns ``fit``'s keyword arguments into a :class:`FitConfig` (the checked
values, in the types the loop uses), raising ``TypeError`` for a value of the wrong kind
(``epochs=1.7``, ``batch_size=True``, ``resume="no"``) and ``ValueError`` for one out of range
(``lr=0``, ``epochs=0``, a ``checkpoint_dir`` that is a file). What depends on the data (the
batch size against the number of rows) is checked in :mod:`ppl_vae.train.prepare`.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ppl_vae.data.tensors import resolve_device
from ppl_vae.estimators.registry import check_jit
from ppl_vae.train.loggers import check_loggers
from ppl_vae.train.state import OPTIMIZERS
from ppl_vae.train.threads import check_threads

__all__ = ["FitConfig", "check_arguments", "as_integer", "as_rate", "as_flag"]

# pyro.set_rng_seed seeds NumPy too, which takes seeds in [0, 2**32).
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class FitConfig:
    """The checked arguments of one ``fit`` call (everything but the programs and the data).

    The distributed workers receive it unchanged (with ``device=None``: the engine places them).
    """

    estimator: str = "analytic"
    num_particles: int = 1
    vectorize_particles: bool = False
    jit: bool | str = "auto"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str | Callable = "adam"
    device: torch.device | None = None
    dtype: torch.dtype | None = None
    threads: int | str | None = "auto"
    seed: int = 0
    progress: bool | None = None  # None: on a terminal or in a notebook
    checkpoint_dir: Path | None = None
    resume: bool = False
    data_plate: str | None = None  # None: found by init_state (the plate of the batch's size)
    callbacks: tuple[Callable, ...] = ()
    early_stopping_patience: int | None = None
    elbo_options: dict = field(default_factory=dict)
    devices: int | str | tuple[int, ...] | None = None
    strategy: str | None = None
    num_nodes: int = 1
    # epochs="auto": train until the monitored ELBO stops improving (``epochs`` is then the
    # budget max_epochs).
    auto: bool = False
    patience: int = 20
    tolerance: float = 0.01
    time_budget: float | None = None
    lr_schedule: str | None = None
    kl_warmup_epochs: int = 0
    free_bits: float | None = None
    free_bits_per: str = "dim"
    loggers: tuple = ()  # lightning.fabric.loggers.Logger instances

    @property
    def optimizer_name(self) -> str:
        if isinstance(self.optimizer, str):
            return self.optimizer
        return getattr(self.optimizer, "__name__", type(self.optimizer).__name__)


def _kind(value) -> str:
    return type(value).__name__


def as_integer(name: str, value, *, minimum: int | None = 1, maximum: int | None = None) -> int:
    """``value`` as an ``int``; ``TypeError`` unless it is an integer (a bool or ``1.7`` is not),
    ``ValueError`` outside ``[minimum, maximum]``. The one integer check of ``fit``'s arguments."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({_kind(value)})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_epochs(epochs) -> int:
    """The training budget: an integer >= 1."""
    return as_integer("epochs", epochs)


LR_SCHEDULES = ("plateau",)


def check_convergence(epochs, patience, max_epochs, time_budget, tolerance, lr_schedule,
                      kl_warmup_epochs, jit, free_bits=None, free_bits_per="dim") -> dict:
    """``epochs`` (an integer or ``"auto"``) and the options of training to convergence."""
    auto = isinstance(epochs, str)
    if auto and epochs != "auto":
        raise TypeError(f"epochs must be an integer or 'auto', got {epochs!r} ({_kind(epochs)})")
    out = {"auto": auto, "patience": as_integer("patience", patience),
           "epochs": as_integer("max_epochs", max_epochs) if auto else check_epochs(epochs)}
    out["tolerance"] = 0.0 if tolerance == 0 else as_rate("tolerance", tolerance)
    out["time_budget"] = None if time_budget is None else as_rate("time_budget", time_budget)
    if lr_schedule is not None and lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be None or one of {LR_SCHEDULES}, got "
                         f"{lr_schedule!r}")
    out["lr_schedule"] = lr_schedule
    out["kl_warmup_epochs"] = as_integer("kl_warmup_epochs", kl_warmup_epochs, minimum=0)
    # A recorded or compiled step would keep the first step's KL weight (a Python number in each
    # site's scale) and the free-bits correction's shape: these objectives train eagerly.
    traced = jit is not False and jit != "auto"
    if out["kl_warmup_epochs"] and traced:
        raise ValueError(f"kl_warmup_epochs with jit={jit!r}: a recorded step would keep the first "
                         "step's KL weight; train the warm-up with jit=False (or 'auto')")
    out["free_bits"] = None if free_bits is None else as_rate("free_bits", free_bits)
    if free_bits_per not in ("dim", "site"):
        raise ValueError(f"free_bits_per must be 'dim' or 'site', got {free_bits_per!r}")
    out["free_bits_per"] = free_bits_per
    if out["free_bits"] is not None and traced:
        raise ValueError(f"free_bits with jit={jit!r}: train with free bits with jit=False (or "
                         "'auto')")
    return out


def as_rate(name: str, value) -> float:
    """A finite real number > 0 (a learning rate)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({_kind(value)})")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


def as_flag(name: str, value) -> bool:
    """``True`` or ``False`` only: ``resume="no"`` would otherwise be true."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {value!r} ({_kind(value)})")
    return bool(value)


def _as_name(name: str, value, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty string, got {value!r} ({_kind(value)})")
    return value


def check_optimizer(optimizer):
    """A name in ``OPTIMIZERS``, a ``torch.optim.Optimizer`` subclass, or a factory
    ``(params, lr=...) -> Optimizer``."""
    if isinstance(optimizer, str):
        if optimizer.lower() not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZERS)} "
                "or pass a torch.optim.Optimizer class"
            )
        return optimizer
    if isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a class or factory, got an instance of {_kind(optimizer)}: pass "
            f"the class (optimizer=torch.optim.{_kind(optimizer)}); fit builds it over the "
            "parameters it trains"
        )
    if isinstance(optimizer, type):
        if not issubclass(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer {optimizer.__name__} is not a torch.optim.Optimizer subclass"
            )
        return optimizer
    if not callable(optimizer):
        raise TypeError(
            f"optimizer must be a name ({', '.join(OPTIMIZERS)}), a torch.optim.Optimizer class "
            f"or a factory (params, lr=...) -> Optimizer; got {optimizer!r} ({_kind(optimizer)})"
        )
    return optimizer


def check_callbacks(callbacks) -> tuple[Callable, ...]:
    # A sequence, not a set: callbacks run in the order given.
    if callable(callbacks) or isinstance(callbacks, str | bytes) or \
            not isinstance(callbacks, Sequence):
        hint = "; pass callbacks=[fn]" if callable(callbacks) else ""
        raise TypeError(f"callbacks must be a sequence of callables, got {_kind(callbacks)}{hint}")
    for i, callback in enumerate(callbacks):
        if not callable(callback):
            raise TypeError(f"callbacks[{i}] is not callable: {callback!r} ({_kind(callback)})")
    return tuple(callbacks)


def check_checkpoint_dir(checkpoint_dir) -> Path | None:
    """A folder that exists and is writable, or that can be created (nothing is created here)."""
    if checkpoint_dir is None:
        return None
    if not isinstance(checkpoint_dir, str | os.PathLike):
        raise TypeError(f"checkpoint_dir must be a path, got {_kind(checkpoint_dir)}")
    path = Path(checkpoint_dir)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is" if existing == path else f"lies under {str(existing)!r}, which is"
        raise ValueError(f"checkpoint_dir {str(path)!r} {what} a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"checkpoint_dir {str(path)!r}: {str(existing)!r} is not writable")
    return path


def check_devices(devices, strategy, num_nodes):
    """Lightning's forms: a count, ``"auto"`` (or another string Lightning parses), or a list of
    device indices; the strategy a name; ``num_nodes`` a count."""
    if isinstance(devices, str) and devices != "auto" and \
            not all(part.strip().lstrip("-").isdigit() for part in devices.split(",")):
        raise ValueError(f"devices must be a number of devices, a list of device indices or "
                         f"'auto', got {devices!r}")
    if devices is not None and not isinstance(devices, str):
        if isinstance(devices, Sequence):
            devices = tuple(as_integer(f"devices[{i}]", d, minimum=0) for i, d in enumerate(devices))
            if not devices:
                raise ValueError("devices is an empty list")
        else:
            devices = as_integer("devices", devices, minimum=1)
    return devices, _as_name("strategy", strategy, optional=True), as_integer("num_nodes", num_nodes)


def _check_dtype(dtype) -> torch.dtype | None:
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.float64), got {dtype!r}")
    if dtype not in (torch.float32, torch.float64):
        # Half precisions: log-densities summed over a data set lose every digit that matters.
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r} (half "
                         "precision cannot hold the ELBO's sums)")
    return dtype


def _check_elbo_options(options) -> dict:
    if options is None:
        return {}
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise TypeError(f"elbo_options must be a dict of keyword arguments, got {_kind(options)}")
    return dict(options)


def check_arguments(*, estimator, num_particles, vectorize_particles, jit, epochs, batch_size,
                    lr, optimizer, device, dtype, seed, threads="auto", progress, checkpoint_dir, resume,
                    data_plate, callbacks, early_stopping_patience, elbo_options, devices,
                    strategy, num_nodes, patience=20, max_epochs=500, time_budget=None,
                    tolerance=0.01, lr_schedule=None, kl_warmup_epochs=0, free_bits=None,
                    free_bits_per="dim", auto=False, loggers=()) -> FitConfig:
    """Check every argument of ``fit`` but the programs and the data; return them as a
    :class:`FitConfig`. Raises ``TypeError`` / ``ValueError`` naming the argument.
    ``auto=True`` reads ``epochs`` as the budget of ``epochs="auto"`` (a FitConfig's fields
    passed back in give the same FitConfig)."""
    if auto is True and not isinstance(epochs, str):
        epochs, max_epochs = "auto", epochs
    resume = as_flag("resume", resume)
    checkpoint_dir = check_checkpoint_dir(checkpoint_dir)
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    stop_patience = None if early_stopping_patience is None else \
        as_integer("early_stopping_patience", early_stopping_patience)
    devices, strategy, num_nodes = check_devices(devices, strategy, num_nodes)
    converge = check_convergence(epochs, patience, max_epochs, time_budget, tolerance,
                                 lr_schedule, kl_warmup_epochs, jit, free_bits, free_bits_per)
    return FitConfig(
        estimator=_as_name("estimator", estimator),
        num_particles=as_integer("num_particles", num_particles),
        vectorize_particles=as_flag("vectorize_particles", vectorize_particles),
        jit=False if (converge["kl_warmup_epochs"] or converge["free_bits"] is not None)
        else check_jit(jit),
        batch_size=as_integer("batch_size", batch_size, minimum=None), lr=as_rate("lr", lr),
        optimizer=check_optimizer(optimizer), device=resolve_device(device),
        dtype=_check_dtype(dtype), seed=as_integer("seed", seed, minimum=0, maximum=MAX_SEED),
        threads=check_threads(threads),
        progress=None if progress is None else as_flag("progress", progress),
        loggers=check_loggers(loggers), checkpoint_dir=checkpoint_dir, resume=resume,
        data_plate=_as_name("data_plate", data_plate, optional=True), callbacks=check_callbacks(callbacks),
        early_stopping_patience=stop_patience, elbo_options=_check_elbo_options(elbo_options),
        devices=devices, strategy=strategy, num_nodes=num_nodes, **converge,
    )
