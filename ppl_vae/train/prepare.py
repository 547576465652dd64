"""Everything ``fit`` does before the first epoch: data to tensors, checks of the data and the
validation data against the programs, the training state, the estimator's pre-flight warnings,
the recorded settings and the data fingerprint that a resumed run is compared with."""

from __future__ import annotations

import hashlib
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import torch

from ppl_vae.data.streaming import DiskData
from ppl_vae.data.tensors import as_tensors, check_finite, num_rows
from ppl_vae.estimators.pyro_elbos import build_elbo as make_elbo
from ppl_vae.estimators.pyro_elbos import estimator_preflight
from ppl_vae.programs.analysis import analyze_programs
from ppl_vae.programs.checks import check_autoguide_batches, check_support
from ppl_vae.programs.handlers import ScaledProgram
from ppl_vae.programs.rows import check_per_row_parameters
from ppl_vae.train.objective import TermContext
from ppl_vae.train.options import FitConfig, recorded_settings
from ppl_vae.train.state import TrainState, init_state

__all__ = ["Prepared", "prepare_data", "preflight", "make_settings", "fingerprint",
           "validation_loss_fn", "warn_user"]

# The data fingerprint hashes every value, this many rows at a time (a float64 copy of one
# chunk at most); FINGERPRINT_ROWS rows are also hashed alone, as earlier versions recorded.
FINGERPRINT_CHUNK = 8192
FINGERPRINT_ROWS = 256
# Rows of a stream read ahead of training for the checks (a stream cannot be checked whole).
STREAM_HEAD_ROWS = 1024
_TRAIN_DIR = str(Path(__file__).resolve().parent)


def warn_user(message: str) -> None:
    """``warnings.warn`` pointing at the first frame outside ``ppl_vae/train/`` (the user's
    ``fit`` call, or the CLI's)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_TRAIN_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


@dataclass
class Prepared:
    """The data of one ``fit`` call, on its device and in its dtype.

    Attributes
    ----------
    train : tuple of tensors or DiskData
        What the epochs cut batches from.
    head : tuple of tensors
        In-memory rows for the checks: all of ``train``, or a stream's first rows.
    validation, validation_head : same, optional
    num_data, num_validation : int
        Row counts ``N`` (the data plate is scaled by ``N / batch size``).
    """

    train: tuple[torch.Tensor, ...] | DiskData
    head: tuple[torch.Tensor, ...]
    validation: tuple[torch.Tensor, ...] | DiskData | None
    validation_head: tuple[torch.Tensor, ...] | None
    num_data: int
    num_validation: int | None
    device: torch.device
    dtype: torch.dtype

    @property
    def streaming(self) -> bool:
        return isinstance(self.train, DiskData)


def _rows(data) -> int:
    return len(data) if isinstance(data, DiskData) else num_rows(data)


def _check_like_training(validation, train) -> None:
    """Validation rows must look like training rows: same members, row shapes and dtypes."""
    if len(validation) != len(train):
        raise ValueError(f"validation_data has {len(validation)} member(s) but data has "
                         f"{len(train)}")
    for i, (v, t) in enumerate(zip(validation, train, strict=True)):
        label = "" if len(train) == 1 else f"[{i}]"
        if v.shape[1:] != t.shape[1:]:
            raise ValueError(f"validation_data{label} has rows of shape {tuple(v.shape[1:])} but "
                             f"data{label} has {tuple(t.shape[1:])}")
        if v.dtype != t.dtype:
            raise ValueError(f"validation_data{label} is {v.dtype} but data{label} is {t.dtype}; "
                             "pass both with the same dtype")


def _prepare_validation(validation_data, head, dtype, device):
    if validation_data is None:
        return None, None
    if isinstance(validation_data, DiskData):
        if len(validation_data.files) != len(head):
            raise ValueError(f"validation_data has {len(validation_data.files)} member(s) but "
                             f"data has {len(head)}")
        rows = validation_data.head(STREAM_HEAD_ROWS)
        val_head = as_tensors(rows, dtype=dtype, device=device, name="validation_data")
        _check_like_training(val_head, head)
        return validation_data, val_head
    val = as_tensors(validation_data, dtype=dtype, device=device, name="validation_data")
    _check_like_training(val, head)
    check_finite(val, name="validation_data")
    return val, val


def prepare_data(data, validation_data, config: FitConfig, device) -> Prepared:
    """Convert and check the data (and the batch size against it).

    ``device`` is the engine's device in a data-parallel worker, else ``config.device``.
    """
    if isinstance(data, DiskData):
        # A stream is checked for NaNs batch by batch as it is read, and its support on a head.
        device = device if device is not None else torch.device("cpu")
        dtype = config.compute.dtype if config.compute.dtype is not None else data.dtype
        n = len(data)
        head = as_tensors(data.head(max(config.batch_size, STREAM_HEAD_ROWS)), dtype=dtype,
                          device=device, name="data")
        train = data
    else:
        head = train = as_tensors(data, dtype=config.compute.dtype, device=device, name="data")
        device = head[0].device
        dtype = next((t.dtype for t in head if t.is_floating_point()), torch.get_default_dtype())
        n = num_rows(head)
    if not 1 <= config.batch_size <= n:
        raise ValueError(f"batch_size must lie in [1, {n}] (the number of data rows), got "
                         f"{config.batch_size}")
    check_finite(head, name="data")
    val, val_head = _prepare_validation(validation_data, head, dtype, device)
    num_val = None if val is None else _rows(val)
    return Prepared(train, head, val, val_head, n, num_val, device, dtype)


def preflight(model, guide, prepared: Prepared, config: FitConfig, world: int,
              clock: Callable[[], int | None]) -> tuple[TrainState, TermContext]:
    """Analyse the programs on the data (:func:`~ppl_vae.programs.analysis.analyze_programs`:
    the data plate every later step uses), run them on the data and the validation data
    (support, sites, shapes), build the training state, and warn about what the estimator will
    do with these programs. The training loss runs the programs under the objective's terms,
    which read the step from ``clock`` (the checks use the programs as given). Returns the
    state and the terms' context."""
    pyro.set_rng_seed(config.seed)
    objective = config.objective
    for program in (model, guide):
        if isinstance(program, torch.nn.Module):
            program.to(device=prepared.device, dtype=prepared.dtype)
    try:
        elbo = make_elbo(config.estimator, num_particles=objective.num_particles,
                         vectorize_particles=objective.vectorize_particles,
                         jit=config.compute.jit, **objective.elbo_options)
    except TypeError as exc:
        if not objective.elbo_options:
            raise
        raise TypeError(f"elbo_options {sorted(objective.elbo_options)}: the {config.estimator!r} "
                        f"estimator's ELBO does not take them ({exc})") from exc
    first = tuple(t[: max(config.batch_size // world, 1)] for t in prepared.head)
    # Before anything calls an autoguide: its first call fixes the rows it has parameters for.
    check_autoguide_batches(model, guide, first, prepared.num_data, objective.data_plate)
    # The one analysis of the programs on this data (cached: evaluate, to_arviz, the diagnostics
    # and the report of the fitted programs on the same data read it without running them).
    analysis = analyze_programs(model, guide, prepared.head, data_plate=objective.data_plate,
                                num_data=prepared.num_data)
    plate = analysis.data_plate.name
    # Mini-batches and one parameter per row: refused before the first step (nothing would fail).
    check_per_row_parameters(model, guide, first, prepared.num_data, plate)
    check_rows = max(config.batch_size, 1024)
    check_support(model, guide, prepared.head, batch_size=check_rows, plate_name=plate)
    if prepared.validation_head is not None:
        try:
            with warnings.catch_warnings():  # said once, for the training data
                warnings.filterwarnings("ignore", message="the model has no observed site")
                check_support(model, guide, prepared.validation_head, batch_size=check_rows,
                              plate_name=plate)
        except ValueError as exc:
            raise ValueError(f"validation_data: {exc}") from exc
    # Pyro's per-step validation runs once here, on the first batch; the loop runs without it.
    context = TermContext(data_plate=plate, step=clock,
                          steps_per_epoch=math.ceil(prepared.num_data / config.batch_size))
    for term in objective.terms:
        model, guide = term.programs(model, guide, context)
    # Before init_state runs the loss: an estimator refuses what it cannot train (a guide
    # factor, a site without rsample) by name, not by an error from inside its loss.
    messages = estimator_preflight(config.estimator, model, guide, first)
    state = init_state(model, guide, elbo, first, num_data=prepared.num_data,
                       data_plate=plate, optimizer=config.optimizer, lr=config.lr,
                       # one process: its ragged last batch padded (one recorded graph per run)
                       batch_size=config.batch_size if world == 1 else None)
    for message in messages:
        warn_user(message)
    if config.loop.patience is not None and not config.auto and prepared.validation is None:
        warn_user("patience with an integer number of epochs (early stopping) has no effect "
                  "without validation_data")
    return state, context


def validation_loss_fn(model, guide, prepared: Prepared, config: FitConfig):
    """The validation loss module (scaled to the validation set's size), or None."""
    if prepared.validation is None:
        return None
    objective = config.objective
    elbo = make_elbo(config.estimator, num_particles=objective.num_particles,
                     vectorize_particles=objective.vectorize_particles, **objective.elbo_options)
    n = prepared.num_validation
    return elbo(ScaledProgram(model, n, objective.data_plate),
                ScaledProgram(guide, n, objective.data_plate))


def fingerprint(data) -> list[dict]:
    """Per member: its shape and the sha256 of its dtype and every byte of its values
    (``"rows": "all"``); a stream is read in chunks of rows. ``sample_sha256`` (a fixed sample
    of rows, as float64) is what run folders of earlier versions recorded as ``sha256``, and is
    compared with those."""
    n = _rows(data)
    sample = np.sort(np.random.default_rng(0).choice(n, size=min(n, FINGERPRINT_ROWS),
                                                     replace=False))
    out = []
    for i, rows in enumerate(_rows_of(data, sample)):
        legacy = rows.detach().to("cpu")
        legacy = legacy.to(torch.float64) if legacy.is_floating_point() else legacy
        out.append({"shape": [n, *rows.shape[1:]], "sha256": _digest(data, i), "rows": "all",
                    "sample_sha256": hashlib.sha256(_bytes(legacy)).hexdigest()})
    return out


def _digest(data, member: int) -> str:
    """sha256 of member ``member``'s dtype and values, without a copy of an in-memory tensor
    on the CPU (60,000 x 784 float32: about 0.5 s, what sha256 takes for 188 MB)."""
    n = _rows(data)
    if isinstance(data, DiskData) or data[member].device.type != "cpu":
        chunks = (_rows_of(data, np.arange(start, min(n, start + FINGERPRINT_CHUNK)))[member]
                  for start in range(0, n, FINGERPRINT_CHUNK))
    else:
        chunks = (data[member],)
    hasher = None
    for chunk in chunks:
        chunk = chunk.detach().to("cpu")
        if hasher is None:
            hasher = hashlib.sha256(str(chunk.dtype).encode())
        hasher.update(_bytes(chunk))
    return hasher.hexdigest()


def _rows_of(data, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
    """Rows ``idx`` of every member of ``data`` (tensors or a stream)."""
    if isinstance(data, DiskData):
        return data.__getitems__(idx)
    return tuple(t.index_select(0, torch.from_numpy(idx).to(t.device)) for t in data)


def _bytes(values: torch.Tensor) -> memoryview:
    return memoryview(values.contiguous().numpy()).cast("B")


def make_settings(config: FitConfig, prepared: Prepared, world: int, rank: int) -> dict:
    """What the run used (JSON-serialisable): saved in the checkpoint and ``config.json``, and
    compared with the checkpoint's when a run resumes."""
    return {
        **recorded_settings(config), "device": str(prepared.device),
        "dtype": str(prepared.dtype).replace("torch.", ""),
        "num_data": prepared.num_data, "num_validation": prepared.num_validation,
        "world_size": world, "global_rank": rank,
        "fingerprint": {
            "data": fingerprint(prepared.train),
            "validation": None if prepared.validation is None else fingerprint(prepared.validation),
        },
    }
