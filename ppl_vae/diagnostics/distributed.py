"""``diagnose(..., devices=N)``: the data points sharded over processes on Lightning Fabric,
the engine ``fit`` uses (see :mod:`ppl_vae.train.distributed` for why Fabric).

Each process maps its share of the chunks (``chunks[rank::world_size]``) of every sharded
phase -- the per-point draws and PSIS, the latent table, SBC -- and the results are gathered
(``all_gather_object``); rank 0 finishes the cheap, fixed-size phases (mutual information on at
most 1,000 points, gaps on ``gap_points``) and the verdicts. A chunk's draws are seeded from
(seed, its first point), so the result equals one process's exactly.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable

from ppl_vae.train.distributed import Engine, _fabric

__all__ = ["launch_diagnose"]


def _worker(fabric, diagnose: Callable, args: tuple, kwargs: dict, parent_pid: int,
            handover: str):
    result = diagnose(*args, **kwargs, engine=Engine(fabric))
    if os.getpid() == parent_pid:
        return result
    if fabric.global_rank == 0:
        # As in fit: a spawned worker hands its result over in a file, not the launcher's queue.
        with open(handover, "wb") as f:
            pickle.dump(result, f)
    return handover


def launch_diagnose(diagnose: Callable, model, guide, data, *, devices, strategy, **kwargs):
    """Run ``diagnose`` in every process of a Fabric launch on the CPU and return rank 0's
    Diagnostics (None in the other processes of a ``ddp`` launch, which re-runs the script)."""
    fabric = _fabric(devices, strategy, 1, None)
    with tempfile.TemporaryDirectory(prefix="ppl-vae-diagnose-") as folder:
        handover = os.path.join(folder, "rank0.pkl")
        out = fabric.launch(_worker, diagnose, (model, guide, data), kwargs, os.getpid(),
                            handover)
        if not isinstance(out, str):
            return out
        with open(handover, "rb") as f:
            return pickle.load(f)
