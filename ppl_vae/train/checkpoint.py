"""Checkpoints: written atomically and checksummed, read with ``weights_only=True`` (a
checkpoint never runs code).

A checkpoint holds tensors, numbers, strings and plain containers only: module state dicts,
the unconstrained values of ``pyro.param`` sites, the optimizer state, the history rows and the
RNG states, so that a run resumed at an epoch boundary continues exactly where it stopped.
"""

from __future__ import annotations

import io
import pickle
import random
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import torch

from ppl_vae.storage.files import CorruptFileError, atomic_write, read_run_file, write_bytes

__all__ = [
    "CHECKPOINT_NAME",
    "HISTORY_NAME",
    "atomic_write",
    "save_history",
    "save_checkpoint",
    "load_checkpoint",
    "capture_params",
    "restore_params",
    "capture_rng",
    "restore_rng",
]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "ppl-vae checkpoint"
HISTORY_NAME = "history.csv"


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write ``payload`` with ``torch.save``, atomically, recorded in the folder's manifest
    (:mod:`ppl_vae.storage.files`): a kill never leaves half a checkpoint, a full disk keeps the
    previous one, and a later bit flip is detected when it is read."""
    buffer = io.BytesIO()
    torch.save({**payload, "format": CHECKPOINT_FORMAT}, buffer)
    write_bytes(Path(path), buffer.getbuffer(), manifest=True)


def save_history(folder: Path, records) -> None:
    """Write ``folder/history.csv`` (one row per epoch) atomically, recorded in the manifest."""
    frame = pd.DataFrame.from_records(list(records))
    write_bytes(Path(folder) / HISTORY_NAME, frame.to_csv(index=False).encode(), manifest=True)


def load_checkpoint(path: Path, *, map_location=None) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: it can never
    run code), after checking it against its folder's manifest.

    Raises
    ------
    FileNotFoundError
        When there is no file.
    ppl_vae.storage.files.CorruptFileError
        When the file does not match the manifest, or is truncated, empty or not a ppl-vae
        checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a folder, not a checkpoint file: name the "
                         "checkpoint.pt or final.pt in it")
    data = read_run_file(path)
    try:
        with warnings.catch_warnings():  # torch's warnings about a foreign pickle: ours follows
            warnings.simplefilter("ignore")
            payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, KeyError,
            TypeError, AttributeError, IndexError, zipfile.BadZipFile):
        payload = None  # torch's message suggests weights_only=False: never do that here
    if not isinstance(payload, dict) or "params" not in payload:
        raise CorruptFileError(f"{path.name} is not a ppl-vae checkpoint (truncated or "
                               f"corrupted): {path}")
    payload.pop("format", None)
    return payload


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
