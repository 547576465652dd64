"""``fit``: train any Pyro model/guide pair by SVI on a data set.

``fit`` is a thin loop in the style of NumPyro's ``SVI.run``: check the arguments
(:mod:`~ppl_vae.train.arguments`), prepare the data and the training state
(:mod:`~ppl_vae.train.prepare`), launch the data-parallel workers when asked
(:mod:`~ppl_vae.train.distributed`), resume (:mod:`~ppl_vae.train.resume`), then one epoch at a
time (:mod:`~ppl_vae.train.epoch`) with the built-in callbacks, early stopping and checkpoints
(:mod:`~ppl_vae.train.callbacks`), and the user's callbacks.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyro
import torch
from tqdm.auto import tqdm

from ppl_vae.train.arguments import FitConfig, check_arguments
from ppl_vae.train.callbacks import Checkpointer, EarlyStopping
from ppl_vae.train.checkpoint import capture_params
from ppl_vae.train.distributed import check_data_parallel, launch_fit, wants_engine
from ppl_vae.train.epoch import Epochs
from ppl_vae.train.prepare import make_settings, preflight, prepare_data, validation_loss_fn
from ppl_vae.train.result import FitResult
from ppl_vae.train.resume import resume as resume_run
from ppl_vae.train.storage import lock_run
from ppl_vae.train.threads import choose_threads, intra_op_threads

__all__ = ["fit", "run_fit"]

Callback = Callable[[dict, object], bool | None]


def fit(
    model: Callable,
    guide: Callable,
    data,
    *,
    validation_data=None,
    estimator: str = "analytic",
    num_particles: int = 1,
    vectorize_particles: bool = False,
    jit: bool | str = "auto",
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer="adam",
    device=None,
    dtype: torch.dtype | None = None,
    threads="auto",
    seed: int = 0,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    data_plate: str | None = None,
    callbacks: Sequence[Callback] = (),
    early_stopping_patience: int | None = None,
    elbo_options: dict | None = None,
    devices=None,
    strategy: str | None = None,
    num_nodes: int = 1,
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
    num_particles, vectorize_particles, jit : see :func:`ppl_vae.make_elbo`. ``jit="auto"``
        (default) records the step once per batch shape and replays it where the programs are
        static, and trains eagerly with one warning where they are not; ``"compile"`` also
        compiles it (Inductor); ``False`` is Pyro's eager step.
    epochs, batch_size, lr : training budget. ``batch_size`` must lie in ``[1, N]``.
    optimizer : str or optimizer class
        ``"adam"`` (default), ``"adamw"``, ``"sgd"``, ``"rmsprop"``, ``"adagrad"`` or a
        ``torch.optim.Optimizer`` class.
    device : str or torch.device, optional
        Where data, parameters and every sample site live. Default: the data's device.
    dtype : torch.dtype, optional
        Floating dtype of data and parameters. Default: the data's (float32 for NumPy/pandas).
    threads : "auto", int or None
        Intra-op CPU threads while training (restored afterwards). ``"auto"``: as many as the
        step's size can use, at most the idle cores (small models: one; extra threads only wait
        on each other, and spin on a busy machine); ``None``: torch's setting. See
        :func:`ppl_vae.train.threads.choose_threads`.
    seed : int
        Seeds Pyro, torch, NumPy and the batch order: the same seed gives the same history.
    progress : bool
        tqdm bar over epochs (shown only on a terminal).
    checkpoint_dir : path, optional
        Write ``checkpoint.pt`` (atomically) and ``history.csv`` there after every epoch.
    resume : bool
        Continue from ``checkpoint_dir``'s checkpoint when there is one. The run must be the
        checkpoint's run: other settings or other data (compared by shape and a content
        fingerprint) are a ``ValueError`` listing each difference; more ``epochs`` are allowed
        and recorded in ``settings["epochs_extended"]``.
    data_plate : str, optional
        Name of the plate over data points; its sites are scaled by N / batch size so that the
        mini-batch ELBO is unbiased for the whole data set. Sites outside it are global. None
        (default): the one plate of model or guide whose size is the batch's; the name used is
        ``settings["data_plate"]``. An error lists the plates when none or several fit.
    callbacks : sequence of callables
        ``callback(record, state)`` after each epoch (and its checkpoint), with the history row
        as a dict; returning ``True`` stops training.
    early_stopping_patience : int, optional
        With validation data, stop after this many epochs without a better validation ELBO and
        restore the best parameters. Its state is part of the checkpoint.
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

    Raises
    ------
    TypeError, ValueError
        Before the first epoch, naming the argument: a value of the wrong type (``epochs=1.7``,
        ``batch_size=True``), out of range (``lr=0``), data or validation data the programs
        cannot take, an unwritable ``checkpoint_dir``, a resume that is not the same run.
    TrainingDivergedError
        When the loss becomes NaN or infinite (naming the epoch, the step and the last good
        checkpoint).
    """
    config = check_arguments(
        estimator=estimator, num_particles=num_particles,
        vectorize_particles=vectorize_particles, jit=jit, epochs=epochs, batch_size=batch_size,
        lr=lr, optimizer=optimizer, device=device, dtype=dtype, seed=seed, threads=threads,
        progress=progress,
        checkpoint_dir=checkpoint_dir, resume=resume, data_plate=data_plate, callbacks=callbacks,
        early_stopping_patience=early_stopping_patience, elbo_options=elbo_options,
        devices=devices, strategy=strategy, num_nodes=num_nodes,
    )
    return run_fit(model, guide, data, validation_data, config)


def run_fit(model, guide, data, validation_data, config: FitConfig, engine=None) -> FitResult:
    """``fit`` with checked arguments; in a data-parallel run, what every worker runs (with its
    :class:`~ppl_vae.train.distributed.Engine`)."""
    rank, world = (0, 1) if engine is None else (engine.rank, engine.world_size)
    device = config.device if engine is None else engine.device
    prepared = prepare_data(data, validation_data, config, device)
    state = preflight(model, guide, prepared, config, world)
    config = replace(config, data_plate=state.data_plate)  # the plate init_state found
    if engine is None and wants_engine(config.devices, config.strategy, config.num_nodes):
        # Checked and initialised here, so errors are raised in this process, not in a worker.
        check_data_parallel(state)
        return launch_fit(run_fit, model, guide, data, validation_data, config,
                          device=config.device if config.device is not None else prepared.device)
    if engine is not None:
        state = engine.setup(state)
    settings = make_settings(config, prepared, world, rank)
    stopper = None
    if config.early_stopping_patience is not None and prepared.validation is not None:
        stopper = EarlyStopping(config.early_stopping_patience)
    # One writer per run folder: a second process (or a second fit) training into it is refused
    # while this one runs. Data-parallel workers run under their launcher's lock.
    held = lock_run(config.checkpoint_dir) if config.checkpoint_dir is not None and engine is None \
        else contextlib.nullcontext()
    with held:
        records, settings = _resume_and_train(model, guide, state, prepared, config, engine,
                                              settings, stopper)
    return FitResult(
        model=model, guide=guide, history=pd.DataFrame.from_records(records),
        params=capture_params(model, guide, state.param_names), settings=settings,
        state=state, stopped_early=stopper is not None and stopper.stopped,
    )


def _resume_and_train(model, guide, state, prepared, config: FitConfig, engine, settings: dict,
                      stopper):
    """Resume from the checkpoint when asked, train the remaining epochs, restore the best
    parameters when early stopping kept them. Returns the history rows and the settings."""
    saver = None
    if config.checkpoint_dir is not None:
        saver = Checkpointer(config.checkpoint_dir, is_main=engine is None or engine.is_main)
    resumed = resume_run(saver, settings, model, guide, state, stopper, prepared.device) \
        if config.resume else None
    if resumed is None:
        records, start = [], 1
        pyro.set_rng_seed(config.seed)  # the preflight consumed random numbers; start afresh
    else:
        records, start, settings = resumed
    epochs = Epochs(prepared, config, engine, validation_loss_fn(model, guide, prepared, config))
    if stopper is None or not stopper.stopped:
        _train(model, guide, state, epochs, range(start, config.epochs + 1), records, settings,
               stopper, saver)
    if stopper is not None:
        stopper.restore_best(model, guide)
    return records, settings


def _train(model, guide, state, epochs: Epochs, todo: range, records: list, settings: dict,
           stopper: EarlyStopping | None, saver: Checkpointer | None) -> None:
    """The epochs ``todo``: each one's steps, its history row, early stopping, the checkpoint,
    the user's callbacks; stops when early stopping or a callback says so."""
    config, engine = epochs.config, epochs.engine
    show = config.progress and sys.stderr.isatty()
    bar = tqdm(todo, desc="ppl-vae fit", unit="epoch", disable=not show, initial=todo.start - 1,
               total=config.epochs)
    batch = max(config.batch_size // (1 if engine is None else engine.world_size), 1)
    threads = choose_threads(state.params, batch, config.threads)
    with pyro.validation_enabled(False), intra_op_threads(threads):
        for epoch in bar:
            record = epochs.train(state, epoch, records, None if saver is None else saver.where)
            records.append(record)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k.endswith("elbo")})
            stop_early = stopper is not None and stopper.update(record, model, guide, state)
            if saver is not None:
                saver.save(epoch, records, model, guide, state, settings, stopper)
            stop = any(callback(record, state) for callback in config.callbacks)
            if (stop if engine is None else engine.any(stop)) or stop_early:
                break
    bar.close()
