"""Small building blocks for users' and the zoo's Pyro programs."""

from __future__ import annotations

import itertools

import torch
from torch import nn

__all__ = ["unique_name", "mlp", "hidden_sizes", "check_width"]

_counter = itertools.count()


def unique_name(prefix: str) -> str:
    """A fresh root name for a ``PyroModule``.

    Two instances of one ``PyroModule`` class would otherwise share ``pyro.param`` entries in the
    global param store (both called ``decoder.0$$$weight``), and the second would silently train
    the first one's tensors.
    """
    return f"{prefix}_{next(_counter)}"


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
