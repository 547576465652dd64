"""Small building blocks for users' and the zoo's Pyro programs."""

from __future__ import annotations

import functools
import inspect
import itertools
import weakref

import torch
from torch import nn

__all__ = ["unique_name", "mlp", "hidden_sizes", "check_width", "keeps_arguments",
           "constructor_arguments"]

_counter = itertools.count()
# Program -> the arguments its class's __init__ was called with (see keeps_arguments).
_ARGUMENTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def unique_name(prefix: str) -> str:
    """A fresh root name for a ``PyroModule``.

    Two instances of one ``PyroModule`` class would otherwise share ``pyro.param`` entries in the
    global param store (both called ``decoder.0$$$weight``), and the second would silently train
    the first one's tensors.
    """
    return f"{prefix}_{next(_counter)}"


def keeps_arguments(init):
    """Decorate a zoo class's ``__init__`` to keep the arguments an instance was built with.

    A run saved from Python then names the zoo entry and its options in ``config.json``
    (``vae`` with ``{"latent_dim": 8, "hidden": 64}``) instead of the instance's per-process
    name (``vae_3``), so a fresh process (``ppl-vae evaluate DIR``) rebuilds the same program.
    """
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        init(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        # A subclass's own __init__ calling this one is not this class's instance as built.
        if type(self).__init__ is wrapper:
            _ARGUMENTS[self] = dict(list(bound.arguments.items())[1:])

    return wrapper


def constructor_arguments(program) -> dict | None:
    """The arguments ``program``'s class was built with (``keeps_arguments``), else None."""
    try:
        return _ARGUMENTS.get(program)
    except TypeError:  # not weakly referenceable (a plain function's closure, a builtin)
        return None


def mlp(sizes, activation=nn.Softplus) -> nn.Sequential:
    """Linear layers between consecutive ``sizes`` with ``activation`` between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def hidden_sizes(hidden) -> tuple[int, ...]:
    """``400`` -> ``(400,)``; ``[256, 128]`` -> ``(256, 128)``."""
    return (int(hidden),) if isinstance(hidden, int) else tuple(int(h) for h in hidden)


def check_width(x: torch.Tensor, obs_dim: int, who: str) -> None:
    """Raise ``ValueError`` when ``x`` does not have ``obs_dim`` features per row."""
    if x.dim() < 1 or x.shape[-1] != obs_dim:
        raise ValueError(
            f"{who} was built for {obs_dim} features per row but got data of shape "
            f"{tuple(x.shape)} ({x.shape[-1] if x.dim() else 0} features)"
        )
