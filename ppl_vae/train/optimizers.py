"""The optimizer ``fit`` trains with, built over the parameters it trains.

``optimizer=`` is a name (``"adam"``, ...), a ``torch.optim.Optimizer`` class, a factory
``(params, lr=...) -> Optimizer``, or a ``pyro.optim`` optimizer (``pyro.optim.Adam({...})``,
``pyro.optim.ClippedAdam({...})``, or per-parameter options ``Adam(lambda module_name,
param_name: {...})``). Pyro builds one torch optimizer per parameter with that parameter's
options; here that is one torch optimizer with one parameter group per parameter (a single group
for a dict of options), which steps every parameter as Pyro's would (Adam and ClippedAdam, with
its elementwise ``clip_norm`` and its per-step ``lrd`` decay, act on each group alone).

The learning rate, one rule: **the ``pyro.optim`` optimizer's own ``lr`` wins**; ``fit``'s ``lr``
fills in where its options name none. ``lr`` other than the default given together with options
that name another ``lr`` is a ``ValueError`` (two learning rates, and no way to know which one was
meant). What cannot be honoured is refused before the first step, in one line: ``clip_args``
(Pyro clips each parameter's gradient norm before its step; torch optimizers have no such
option), ``pyro.optim`` learning-rate schedulers (stepped by the user's own loop; use
``lr_schedule``), options the torch optimizer does not take, and per-parameter options for a
parameter outside Pyro's param store (they are looked up by its ``pyro.param`` name).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import pyro
import pyro.optim
import torch
from pyro.params.param_store import (
    module_from_param_with_module_name,
    normalize_param_name,
    user_param_name,
)

__all__ = ["OPTIMIZERS", "DEFAULT_LR", "make_optimizer", "check_pyro_optimizer", "needs_closure",
           "optimizer_label", "recorded_lr", "pyro_param_groups"]

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}

#: fit's default ``lr``: with a ``pyro.optim`` optimizer whose options name an ``lr``, fit's
#: ``lr`` must be this (not given) or the same value.
DEFAULT_LR = 1e-3


def _label(optimizer: pyro.optim.PyroOptim) -> str:
    return f"pyro.optim.{optimizer.pt_optim_constructor.__name__}"


def _check_keys(label: str, constructor: type, options, where: str = "") -> dict:
    if not isinstance(options, Mapping):
        raise TypeError(f"optimizer {label}: options{where} must be a dict, got "
                        f"{type(options).__name__}")
    accepted = set(inspect.signature(constructor).parameters) - {"self", "params"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"optimizer {label}: option(s) {unknown}{where} are not options of "
                         f"{constructor.__name__} (it takes {', '.join(sorted(accepted))})")
    return dict(options)


def needs_closure(cls: type) -> bool:
    """Whether ``cls.step`` requires a closure (``LBFGS``): fit's step calls ``step()``."""
    closure = inspect.signature(cls.step).parameters.get("closure")
    return closure is not None and closure.default is inspect.Parameter.empty


def check_pyro_optimizer(optimizer: pyro.optim.PyroOptim) -> pyro.optim.PyroOptim:
    """What can be checked before the parameters exist; ``TypeError`` / ``ValueError`` naming
    what cannot be honoured."""
    if isinstance(optimizer, pyro.optim.PyroLRScheduler):
        raise ValueError(f"optimizer {_label(optimizer)}: a pyro.optim scheduler steps when the "
                         "user's loop calls it, which fit does not; pass the optimizer it wraps "
                         "and lr_schedule='plateau' (or a callback) for the schedule")
    constructor = optimizer.pt_optim_constructor
    label = _label(optimizer)
    if not (isinstance(constructor, type) and issubclass(constructor, torch.optim.Optimizer)):
        raise TypeError(f"optimizer {label}: builds {constructor!r}, not a torch.optim.Optimizer")
    if needs_closure(constructor):
        raise ValueError(f"optimizer {label}: its step needs a closure that re-evaluates the "
                         "loss, and fit takes one loss per step; use a first-order optimizer")
    if callable(optimizer.pt_clip_args) or optimizer.pt_clip_args:
        raise ValueError(f"optimizer {label}: clip_args cannot be honoured (Pyro clips each "
                         "parameter's gradient before its step; a torch optimizer has no such "
                         "option); use pyro.optim.ClippedAdam({'clip_norm': ...}) instead")
    if not callable(optimizer.pt_optim_args):
        _check_keys(label, constructor, optimizer.pt_optim_args)
    return optimizer


def _options_for(optimizer: pyro.optim.PyroOptim, param: torch.Tensor) -> dict:
    """Pyro's per-parameter options for ``param`` (as ``PyroOptim`` asks its callable)."""
    name = pyro.get_param_store().param_name(param)
    label = _label(optimizer)
    if name is None:
        raise ValueError(f"optimizer {label}: per-parameter options need each parameter's "
                         f"pyro.param name, and a parameter of shape {tuple(param.shape)} is not "
                         "in Pyro's param store; register its module with pyro.module(name, "
                         "module)")
    if optimizer.pt_optim_args_argc == 1:
        options = optimizer.pt_optim_args(normalize_param_name(name))
    else:
        options = optimizer.pt_optim_args(module_from_param_with_module_name(name),
                                          user_param_name(name))
    return _check_keys(label, optimizer.pt_optim_constructor, options,
                       f" (returned for parameter {name!r})")


def pyro_param_groups(optimizer: pyro.optim.PyroOptim, params, lr: float) -> list[dict]:
    """The parameter groups that step ``params`` as ``optimizer`` would under Pyro's SVI, with
    fit's ``lr`` where the options name none (module docstring: the rule)."""
    check_pyro_optimizer(optimizer)
    params = list(params)
    if callable(optimizer.pt_optim_args):
        groups = [{"params": [p], **_options_for(optimizer, p)} for p in params]
    else:
        groups = [{"params": params, **optimizer.pt_optim_args}]
    for group in groups:
        if "lr" not in group:
            group["lr"] = lr
        elif lr != DEFAULT_LR and lr != group["lr"]:
            raise ValueError(f"lr={lr!r} given with optimizer {_label(optimizer)} whose options "
                             f"set lr={group['lr']!r}: the optimizer's own lr wins, so leave "
                             "fit's lr out (or give the same value)")
    return groups


def make_optimizer(optimizer, params, lr: float) -> torch.optim.Optimizer:
    """``optimizer`` is a name (``"adam"``, ...), a ``torch.optim.Optimizer`` class, any callable
    ``(params, lr=...) -> Optimizer``, or a ``pyro.optim`` optimizer (translated to its torch
    optimizer with a parameter group per parameter, see the module docstring)."""
    if isinstance(optimizer, pyro.optim.PyroOptim):
        groups = pyro_param_groups(optimizer, params, lr)
        constructor = optimizer.pt_optim_constructor
        try:
            # torch checks the values (lr=-1) of its constructor's keywords, not of a group's:
            # each group's options go through the constructor once, as Pyro passes them.
            for group in groups:
                constructor(group["params"][:1], **{k: v for k, v in group.items()
                                                    if k != "params"})
            return constructor(groups)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"optimizer {_label(optimizer)}: {exc}") from exc
    if isinstance(optimizer, str):
        key = optimizer.lower()
        if key not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZERS)} "
                "or pass a torch.optim.Optimizer class"
            )
        cls = OPTIMIZERS[key]
        # A fused kernel updates every tensor in one pass (Adam on a 650k-weight VAE: 1.3 ms
        # instead of 4.3 ms per step on one CPU thread); foreach kernels, a few launches for all
        # tensors, where torch has no fused variant for this optimizer, device or dtype.
        try:
            return cls(params, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            return cls(params, lr=lr, foreach=True)
    return optimizer(params, lr=lr)


def optimizer_label(optimizer) -> str:
    """How the settings record ``optimizer``: a name, a class's name, or a ``pyro.optim``
    optimizer with its options (``pyro.optim.ClippedAdam({'lr': 0.01})``; a per-parameter
    callable by its qualified name)."""
    if isinstance(optimizer, str):
        return optimizer
    if isinstance(optimizer, pyro.optim.PyroOptim):
        args = optimizer.pt_optim_args
        shown = f"per-parameter {getattr(args, '__qualname__', type(args).__name__)}" \
            if callable(args) else repr(dict(sorted(args.items())))
        return f"{_label(optimizer)}({shown})"
    return getattr(optimizer, "__name__", type(optimizer).__name__)


def recorded_lr(optimizer, lr: float) -> float:
    """The learning rate the settings record: a ``pyro.optim`` optimizer's own where its options
    (a dict) name one, else fit's ``lr`` (per-parameter callables: see ``settings["optimizer"]``
    and the parameter groups)."""
    if isinstance(optimizer, pyro.optim.PyroOptim) and not callable(optimizer.pt_optim_args):
        return float(optimizer.pt_optim_args.get("lr", lr))
    return lr
