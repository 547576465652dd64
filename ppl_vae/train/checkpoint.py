"""Checkpoints: written atomically, read with ``weights_only=True`` (a checkpoint never runs code).

A checkpoint holds tensors, numbers, strings and plain containers only: module state dicts,
the unconstrained values of ``pyro.param`` sites, the optimizer state, the history rows and the
RNG states, so that a run resumed at an epoch boundary continues exactly where it stopped.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import pyro
import torch

__all__ = [
    "CHECKPOINT_NAME",
    "save_checkpoint",
    "load_checkpoint",
    "capture_params",
    "restore_params",
    "capture_rng",
    "restore_rng",
]

CHECKPOINT_NAME = "checkpoint.pt"


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # Flush to disk before the rename: a killed process never leaves half a file, and a
        # crashed machine (a cluster node going down) does not leave a renamed empty one.
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(path: Path, payload: dict) -> None:
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: Path, *, map_location=None) -> dict:
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def capture_params(model, guide, param_names) -> dict:
    """Copies of every trained value: module state dicts and unconstrained ``pyro.param``s."""
    out = {"pyro_params": {n: pyro.param(n).unconstrained().detach().clone() for n in param_names}}
    for key, program in (("model", model), ("guide", guide)):
        if isinstance(program, torch.nn.Module):
            out[key] = {k: v.detach().clone() for k, v in program.state_dict().items()}
    return out


def restore_params(snapshot: dict, model, guide) -> None:
    with torch.no_grad():
        for name, value in snapshot.get("pyro_params", {}).items():
            target = pyro.param(name).unconstrained()
            target.copy_(value.to(device=target.device, dtype=target.dtype))
    for key, program in (("model", model), ("guide", guide)):
        if key in snapshot and isinstance(program, torch.nn.Module):
            program.load_state_dict(snapshot[key])


def capture_rng() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    import ast

    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    random.setstate(ast.literal_eval(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
