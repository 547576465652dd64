"""``diagnose(..., devices=N)``: the data points sharded over processes on Lightning Fabric,
the engine ``fit`` uses (:mod:`ppl_vae.parallel.engine`, which says why Fabric).

Each process maps its share of the chunks (``chunks[rank::world_size]``) of every sharded
phase -- the per-point draws and PSIS, the latent table, SBC -- and the results are gathered
(``all_gather_object``); rank 0 finishes the cheap, fixed-size phases (mutual information on at
most 1,000 points, gaps on ``gap_points``) and the verdicts. A chunk's draws are seeded from
(seed, its first point), so the result equals one process's exactly.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable

from ppl_vae.parallel.engine import launch, make_fabric

__all__ = ["launch_diagnose"]


def _hand_over(result, path: str) -> None:
    with open(path, "wb") as f:
        pickle.dump(result, f)


def _take_back(path: str):
    with open(path, "rb") as f:
        return pickle.load(f)


def launch_diagnose(diagnose: Callable, model, guide, data, *, devices, strategy, **kwargs):
    """Run ``diagnose`` in every process of a Fabric launch on the CPU and return rank 0's
    Diagnostics (None in the other processes of a ``ddp`` launch, which re-runs the script)."""
    fabric = make_fabric(devices, strategy, 1, None)
    return launch(fabric, diagnose, (model, guide, data), kwargs, hand_over=_hand_over,
                  take_back=_take_back)
