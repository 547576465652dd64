"""The checks of ``fit``'s arguments: one line naming the argument for each bad one.

The option declarations (:mod:`ppl_vae.train.options`) call these checks, raising
``TypeError`` for a value of the wrong kind
(``epochs=1.7``, ``batch_size=True``, ``resume="no"``) and ``ValueError`` for one out of range
(``lr=0``, ``epochs=0``, a ``checkpoint_dir`` that is a file). What depends on the data (the
batch size against the number of rows) is checked in :mod:`ppl_vae.train.prepare`.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyro.infer
import pyro.optim
import torch

from ppl_vae.estimators.pyro_elbos import resolve_estimator
from ppl_vae.train.optimizers import OPTIMIZERS, check_pyro_optimizer, needs_closure

__all__ = ["as_integer", "as_rate", "as_flag"]

# pyro.set_rng_seed seeds NumPy too, which takes seeds in [0, 2**32).
MAX_SEED = 2**32 - 1


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


def check_estimator(estimator):
    """An estimator name (the registry checks that it is one when the ELBO is built) or a
    ``pyro.infer.ELBO`` instance (resolved with its companions by
    :func:`~ppl_vae.estimators.pyro_elbos.resolve_estimator` when the options are built)."""
    if isinstance(estimator, pyro.infer.ELBO):
        return estimator
    return _as_name("estimator", resolve_estimator(estimator).estimator)


def check_optimizer(optimizer):
    """A name in ``OPTIMIZERS``, a ``torch.optim.Optimizer`` subclass, a factory
    ``(params, lr=...) -> Optimizer``, or a ``pyro.optim`` optimizer
    (:mod:`~ppl_vae.train.optimizers`)."""
    if isinstance(optimizer, pyro.optim.PyroOptim):
        return check_pyro_optimizer(optimizer)
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
        if needs_closure(optimizer):
            raise ValueError(f"optimizer {optimizer.__name__}: its step needs a closure that "
                             "re-evaluates the loss, and fit takes one loss per step")
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
