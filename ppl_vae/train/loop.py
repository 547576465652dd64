"""``fit``: train any Pyro model/guide pair by SVI on a data set."""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import pyro
import torch
from tqdm.auto import tqdm

from ppl_vae.data.streaming import DiskData, EpochBatches, sampler_seed, sequential_batches
from ppl_vae.data.tensors import as_tensors, check_finite, iter_batches, num_rows, resolve_device
from ppl_vae.estimators.registry import make_elbo, preflight_warnings
from ppl_vae.programs.checks import check_support
from ppl_vae.programs.handlers import ScaledProgram
from ppl_vae.train.checkpoint import (
    CHECKPOINT_NAME,
    capture_params,
    capture_rng,
    load_checkpoint,
    restore_params,
    restore_rng,
    save_checkpoint,
)
from ppl_vae.train.distributed import check_data_parallel, launch_fit, wants_engine
from ppl_vae.train.result import FitResult, TrainingDivergedError
from ppl_vae.train.state import init_state, mean_loss, update

__all__ = ["fit"]

Callback = Callable[[dict, object], bool | None]


def _prepare_programs(model, guide, device, dtype):
    for program in (model, guide):
        if isinstance(program, torch.nn.Module):
            program.to(device=device, dtype=dtype)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # The batch order of epoch e depends on (seed, e) only, so a run resumed at an epoch boundary
    # sees the same batches as an uninterrupted one; the same seed as DistributedSampler's, so a
    # data-parallel or streamed run cuts the same global batches.
    return torch.Generator().manual_seed(sampler_seed(seed) + int(epoch))


def _rows(data) -> int:
    return len(data) if isinstance(data, DiskData) else num_rows(data)


def _validation_loss(loss_fn, data, batch_size, engine, device, dtype) -> torch.Tensor:
    """Mean validation loss over all rows; with an engine each process takes every W-th row and
    the per-process sums are added up (each row counted once, no sampler padding)."""
    rank, world = (0, 1) if engine is None else (engine.rank, engine.world_size)
    batches = sequential_batches(data, batch_size, rank=rank, world_size=world, device=device,
                                 dtype=dtype)
    if engine is None:
        return mean_loss(loss_fn, batches)
    local = len(range(rank, _rows(data), world))
    return engine.sum(mean_loss(loss_fn, batches) * local) / _rows(data)


def fit(
    model: Callable,
    guide: Callable,
    data,
    *,
    validation_data=None,
    estimator: str = "analytic",
    num_particles: int = 1,
    vectorize_particles: bool = False,
    jit: bool = False,
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer="adam",
    device=None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    data_plate: str = "data",
    callbacks: Sequence[Callback] = (),
    early_stopping_patience: int | None = None,
    elbo_options: dict | None = None,
    devices=None,
    strategy: str | None = None,
    num_nodes: int = 1,
    _engine=None,
) -> FitResult:
    """Train ``model`` and ``guide`` by stochastic variational inference.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``model(*batch)``: plain functions using ``pyro.param`` /
        ``pyro.module``, ``PyroModule``s, or ``torch.nn.Module``s.
    data : tensor, ndarray, DataFrame, or tuple of these
        ``N`` rows, one per data point. A tuple is passed to the programs as several arguments
        (for example ``(x, y)``), each cut into the same batches.
    validation_data : same form as ``data``, optional
        Its ELBO is reported per epoch and drives early stopping.
    estimator : str
        ELBO estimator name (see :func:`ppl_vae.make_elbo`).
    num_particles, vectorize_particles, jit : see :func:`ppl_vae.make_elbo`.
    epochs, batch_size, lr : training budget. ``batch_size`` must lie in ``[1, N]``.
    optimizer : str or optimizer class
        ``"adam"`` (default), ``"adamw"``, ``"sgd"``, ``"rmsprop"``, ``"adagrad"`` or a
        ``torch.optim.Optimizer`` class.
    device : str or torch.device, optional
        Where data, parameters and every sample site live. Default: the data's device.
    dtype : torch.dtype, optional
        Floating dtype of data and parameters. Default: the data's (float32 for NumPy/pandas).
    seed : int
        Seeds Pyro, torch, NumPy and the batch order: the same seed gives the same history.
    progress : bool
        tqdm bar over epochs (shown only on a terminal).
    checkpoint_dir : path, optional
        Write ``checkpoint.pt`` (atomically) and ``history.csv`` there after every epoch.
    resume : bool
        Continue from ``checkpoint_dir``'s checkpoint when there is one.
    data_plate : str
        Name of the plate over data points; its sites are scaled by N / batch size so that the
        mini-batch ELBO is unbiased for the whole data set. Sites outside it are global.
    callbacks : sequence of callables
        ``callback(record, state)`` after each epoch, with the history row as a dict; returning
        ``True`` stops training.
    early_stopping_patience : int, optional
        With validation data, stop after this many epochs without a better validation ELBO and
        restore the best parameters.
    elbo_options : dict, optional
        Extra keyword arguments for the ELBO constructor (for example ``max_plate_nesting``).
    devices : int, list or "auto", optional
        Data-parallel training on this many devices per node (Lightning Fabric, DDP). Default:
        one process, no engine. ``batch_size`` stays the global batch: each of the ``W``
        processes takes ``batch_size / W`` rows of every batch, and the data plate is still
        scaled by the full ``N``. See ``docs/scaling.md``.
    strategy : str, optional
        Fabric strategy: ``"ddp"`` (re-runs the script per device; also under torchrun/SLURM),
        ``"ddp_spawn"``, ``"ddp_fork"``. Default ``"auto"`` when ``devices`` > 1.
    num_nodes : int
        Number of machines (launched by torchrun or SLURM, see ``docs/scaling.md``).

    Returns
    -------
    FitResult
    """
    arguments = dict(locals())  # handed unchanged to every process of a distributed launch
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    dev = resolve_device(device) if _engine is None else _engine.device
    rank, world = (0, 1) if _engine is None else (_engine.rank, _engine.world_size)
    streaming = isinstance(data, DiskData)
    if streaming:
        # A stream is checked for NaNs batch by batch as it is read, and its support on a head.
        dev = dev if dev is not None else torch.device("cpu")
        float_dtype = dtype if dtype is not None else data.dtype
        n = len(data)
        tensors = as_tensors(data.head(max(int(batch_size), 1024)), dtype=float_dtype,
                             device=dev, name="data")
    else:
        tensors = as_tensors(data, dtype=dtype, device=dev, name="data")
        dev = tensors[0].device
        float_dtype = next((t.dtype for t in tensors if t.is_floating_point()),
                           torch.get_default_dtype())
        n = num_rows(tensors)
    if not 1 <= int(batch_size) <= n:
        raise ValueError(f"batch_size must lie in [1, {n}] (the number of data rows), got {batch_size}")
    batch_size = int(batch_size)
    check_finite(tensors, name="data")
    val_tensors = None
    if isinstance(validation_data, DiskData):
        val_tensors = validation_data
        if len(val_tensors.files) != len(tensors):
            raise ValueError(f"validation_data has {len(val_tensors.files)} member(s) but "
                             f"data has {len(tensors)}")
    elif validation_data is not None:
        val_tensors = as_tensors(validation_data, dtype=float_dtype, device=dev, name="validation_data")
        check_finite(val_tensors, name="validation_data")
        if len(val_tensors) != len(tensors):
            raise ValueError(
                f"validation_data has {len(val_tensors)} member(s) but data has {len(tensors)}"
            )
    num_val = None if val_tensors is None else _rows(val_tensors)

    settings = {
        "estimator": estimator, "num_particles": int(num_particles),
        "vectorize_particles": bool(vectorize_particles), "jit": bool(jit),
        "epochs": int(epochs), "batch_size": batch_size, "lr": float(lr),
        "optimizer": optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", str(optimizer)),
        "device": str(dev), "dtype": str(float_dtype).replace("torch.", ""), "seed": int(seed),
        "data_plate": data_plate, "num_data": n,
        "num_validation": num_val,
        "early_stopping_patience": early_stopping_patience,
        "devices": devices, "strategy": strategy, "num_nodes": int(num_nodes or 1),
        "world_size": world, "global_rank": rank,
    }
    elbo = make_elbo(
        estimator, num_particles=num_particles, vectorize_particles=vectorize_particles,
        jit=jit, **(elbo_options or {}),
    )

    pyro.set_rng_seed(seed)
    _prepare_programs(model, guide, dev, float_dtype)
    first = tuple(t[: max(batch_size // world, 1)] for t in tensors)
    check_support(model, guide, tensors, batch_size=max(batch_size, 1024), plate_name=data_plate)
    # Pyro's per-step validation runs once here, on the first batch; the loop runs without it.
    state = init_state(
        model, guide, elbo, first, num_data=n, data_plate=data_plate, optimizer=optimizer, lr=lr
    )
    for message in preflight_warnings(estimator, model, guide, first):
        warnings.warn(message, stacklevel=2)
    if _engine is None and wants_engine(devices, strategy, num_nodes):
        # Checked and initialised here, so errors are raised in this process, not in a worker.
        check_data_parallel(state)
        arguments["device"] = device if device is not None else dev
        return launch_fit(fit, **arguments)
    if _engine is not None:
        state = _engine.setup(state)
    val_loss_fn = None
    if val_tensors is not None:
        val_elbo = make_elbo(estimator, num_particles=num_particles,
                             vectorize_particles=vectorize_particles, **(elbo_options or {}))
        val_loss_fn = val_elbo(
            ScaledProgram(model, num_val, data_plate), ScaledProgram(guide, num_val, data_plate)
        )

    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    records: list[dict] = []
    start_epoch = 1
    best = (float("-inf"), None, 0)  # (val elbo, params snapshot, epoch)
    if resume and ckpt_path is not None and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, map_location=dev)
        restore_params(ckpt["params"], model, guide)
        state.optimizer.load_state_dict(ckpt["optimizer"])
        state.step = int(ckpt["step"])
        records = list(ckpt["history"])
        restore_rng(ckpt["rng"])
        start_epoch = int(ckpt["epoch"]) + 1
    elif resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    else:
        pyro.set_rng_seed(seed)  # the preflight consumed random numbers; start the loop fresh

    stream = EpochBatches(data if streaming else tensors, batch_size, seed=seed, rank=rank,
                          world_size=world, device=dev, dtype=float_dtype)
    show = progress and sys.stderr.isatty()
    bar = tqdm(range(start_epoch, int(epochs) + 1), desc="ppl-vae fit", unit="epoch",
               disable=not show, initial=start_epoch - 1, total=int(epochs))
    stopped_early = False
    with pyro.validation_enabled(False):
        for epoch in bar:
            t0 = time.perf_counter()
            losses = []
            if _engine is None and not streaming:
                batches = iter_batches(tensors, batch_size, shuffle=True,
                                       generator=_epoch_generator(seed, epoch))
            else:
                if _engine is not None:
                    _engine.seed_epoch(seed, epoch)
                batches = stream(epoch)
            for batch in batches:
                state, loss = update(state, batch)
                losses.append(loss)
            stacked = torch.stack(losses)
            finite = torch.isfinite(stacked)
            epoch_loss = stacked.mean() if _engine is None else _engine.mean(stacked.mean())
            if not bool(torch.isfinite(epoch_loss)):
                # Another process may hold the bad step; report ours when we have one.
                bad_step = int((~finite).nonzero()[0, 0]) + 1 if not bool(finite.all()) else 1
                history = pd.DataFrame.from_records(records)
                where = f"; the last good checkpoint is {ckpt_path}" if ckpt_path else ""
                raise TrainingDivergedError(
                    f"the loss became {float(stacked[bad_step - 1])} at epoch {epoch}, step "
                    f"{bad_step} of {len(losses)}: lower the learning rate or check the model's "
                    f"scales{where}", history, epoch, bad_step,
                )
            # Each step's loss estimates -ELBO of all N points; average, then per data point.
            record = {"epoch": epoch, "train_elbo": -float(epoch_loss) / n}
            if val_loss_fn is not None:
                val = _validation_loss(val_loss_fn, val_tensors, batch_size, _engine, dev,
                                       float_dtype)
                record["val_elbo"] = -float(val) / num_val
            record["seconds"] = time.perf_counter() - t0
            record["steps"] = len(losses)
            records.append(record)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k.endswith("elbo")})

            if val_loss_fn is not None and early_stopping_patience is not None:
                if record["val_elbo"] > best[0]:
                    best = (record["val_elbo"], capture_params(model, guide, state.param_names), epoch)
                elif epoch - best[2] >= int(early_stopping_patience):
                    stopped_early = True
            if ckpt_path is not None and (_engine is None or _engine.is_main):
                save_checkpoint(ckpt_path, {
                    "epoch": epoch, "step": state.step, "history": records,
                    "params": capture_params(model, guide, state.param_names),
                    "optimizer": state.optimizer.state_dict(), "rng": capture_rng(),
                    "settings": settings,
                })
                pd.DataFrame.from_records(records).to_csv(Path(checkpoint_dir) / "history.csv", index=False)
            stop = any(cb(record, state) for cb in callbacks)
            if stop if _engine is None else _engine.any(stop):
                break
            if stopped_early:
                break
    bar.close()
    if stopped_early and best[1] is not None:
        restore_params(best[1], model, guide)
    if val_loss_fn is None and early_stopping_patience is not None:
        warnings.warn("early_stopping_patience has no effect without validation_data", stacklevel=2)
    return FitResult(
        model=model, guide=guide, history=pd.DataFrame.from_records(records),
        params=capture_params(model, guide, state.param_names), settings=settings,
        state=state, stopped_early=stopped_early,
    )
