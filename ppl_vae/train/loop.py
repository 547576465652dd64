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
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyro
import torch
from tqdm.auto import tqdm

from ppl_vae.programs.digest import program_digests
from ppl_vae.recording.summary import step_summary
from ppl_vae.train.arguments import FitConfig, check_arguments
from ppl_vae.train.callbacks import Checkpointer, EarlyStopping
from ppl_vae.train.checkpoint import CHECKPOINT_NAME, capture_params
from ppl_vae.train.distributed import check_data_parallel, launch_fit, wants_engine
from ppl_vae.train.epoch import Epochs
from ppl_vae.train.loggers import EpochLoggers
from ppl_vae.train.objective import FreeBits, KLWarmup
from ppl_vae.train.prepare import (
    make_settings,
    preflight,
    prepare_data,
    validation_loss_fn,
    warn_user,
)
from ppl_vae.train.result import FitResult
from ppl_vae.train.resume import resume as resume_run
from ppl_vae.train.saving import finish_fit_folder, start_fit_folder
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
    epochs: int | str = 30,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer="adam",
    device=None,
    dtype: torch.dtype | None = None,
    threads="auto",
    seed: int = 0,
    progress: bool | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    data_plate: str | None = None,
    callbacks: Sequence[Callback] = (),
    early_stopping_patience: int | None = None,
    elbo_options: dict | None = None,
    devices=None,
    strategy: str | None = None,
    num_nodes: int = 1,
    patience: int = 20,
    max_epochs: int = 500,
    time_budget: float | None = None,
    tolerance: float = 0.01,
    lr_schedule: str | None = None,
    kl_warmup_epochs: int = 0,
    free_bits: float | None = None,
    free_bits_per: str = "dim",
    loggers: Sequence = (),
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
    epochs : int or "auto"
        An integer: that many epochs. ``"auto"``: train until the validation ELBO (without
        validation data, the training ELBO smoothed over epochs) has not improved by more than
        ``tolerance`` nats per data point for ``patience`` epochs, at most ``max_epochs``
        epochs and, when given, ``time_budget`` seconds of training; the best epoch's
        parameters are kept (``settings["stopped_by"]`` says what ended it).
    batch_size, lr : ``batch_size`` must lie in ``[1, N]``.
    patience, max_epochs, time_budget, tolerance
        See ``epochs="auto"``; ``time_budget`` also bounds an integer ``epochs``.
    lr_schedule : {None, "plateau"}
        ``"plateau"``: halve the learning rate when the monitored ELBO has not improved for
        ``max(2, patience // 4)`` epochs (``torch.optim.lr_scheduler.ReduceLROnPlateau``); the
        history's ``lr`` column records it.
    kl_warmup_epochs : int
        KL warm-up (Bowman et al. 2016; Sønderby et al. 2016): the latent sites' terms are
        scaled by a weight rising linearly from 0 to 1 over these epochs
        (:mod:`~ppl_vae.train.objective`), against posterior collapse. The objective changes
        during training only: the history's ``kl_weight`` column says when ``train_elbo`` is
        not the ELBO; validation and every evaluation use the true ELBO.
    free_bits, free_bits_per : float or None, {"dim", "site"}
        Free bits (Kingma et al. 2016): no group (a latent dimension, or a latent site) is
        pushed below ``free_bits`` nats of batch-mean KL (:class:`~ppl_vae.train.objective.
        FreeBits`). Training objective only, like the warm-up: the history's ``free_bits``
        column marks ``train_elbo`` as that objective.
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
    progress : bool, optional
        A ``tqdm.auto`` bar over epochs (a widget in Jupyter) and one summary line at the end
        (epochs, final ELBOs, seconds, what stopped training). None (default): shown on a
        terminal and in a notebook; True: always; False: never.
    checkpoint_dir : path, optional
        Write ``checkpoint.pt`` (atomically) and ``history.csv`` there after every epoch. A
        folder that holds a checkpoint already is refused unless ``resume=True``. The folder is
        a run folder (``config.json``, and ``final.pt`` at the end): ``ppl_vae.load`` reads it
        (with ``data=``: it keeps no copy of the data).
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
    loggers : sequence of lightning.fabric.loggers.Logger
        Experiment loggers (``CSVLogger``, ``TensorBoardLogger``, MLflow, W&B): per epoch
        ``train_elbo``, ``val_elbo``, ``kl``, ``lr``, ``kl_weight``, ``seconds``; the settings
        as hyperparameters (:mod:`~ppl_vae.train.loggers`).

    Returns
    -------
    FitResult
        Training runs in an empty Pyro param store: each fit trains its own parameters (fresh
        networks under an earlier fit's ``pyro.module`` names do not start from its weights);
        the trained ones then replace those of the same names in Pyro's store, with a warning
        when it held others. ``settings["programs"]`` holds the digests of the programs'
        source (:mod:`ppl_vae.programs.digest`), compared by a resume and by ``load_run``.

    Raises
    ------
    TypeError, ValueError
        Before the first epoch, naming the argument: a value of the wrong type (``epochs=1.7``,
        ``batch_size=True``), out of range (``lr=0``), data or validation data the programs
        cannot take, an unwritable ``checkpoint_dir``, a resume that is not the same run.
    FileExistsError
        Before the first epoch, when ``checkpoint_dir`` already holds a checkpoint and
        ``resume`` is False (a new run would replace that run's checkpoint).
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
        devices=devices, strategy=strategy, num_nodes=num_nodes, patience=patience,
        max_epochs=max_epochs, time_budget=time_budget, tolerance=tolerance,
        lr_schedule=lr_schedule, kl_warmup_epochs=kl_warmup_epochs, free_bits=free_bits,
        free_bits_per=free_bits_per, loggers=loggers,
    )
    with _own_param_store():
        return run_fit(model, guide, data, validation_data, config)


@contextlib.contextmanager
def _own_param_store():
    """Train in an empty Pyro param store, then put this fit's parameters into the caller's.

    ``pyro.module`` / ``pyro.param`` return the value already stored under a name, so fresh
    networks registered under an earlier fit's names would start from that fit's weights (a
    notebook's second run would depend on its first). Each fit trains its own parameters; once
    it ends they replace those of the same names in the caller's store (where ``evaluate`` and
    the programs find them), with one warning when the store held other values under them. A
    fit that fails leaves the caller's store as it was.
    """
    store = pyro.get_param_store()
    before = dict(store.named_parameters())
    with store.scope() as trained:
        yield
    replaced = sorted(n for n, value in trained["params"].items()
                      if n in before and before[n] is not value)
    store.set_state(trained)
    if replaced:
        warn_user(f"fit trained its own parameters: Pyro's param store held {len(replaced)} "
                  f"under this fit's names (e.g. {replaced[0]!r}, from an earlier fit or set by "
                  "hand) that this fit did not start from; they are replaced by the trained ones")


def run_fit(model, guide, data, validation_data, config: FitConfig, engine=None) -> FitResult:
    """``fit`` with checked arguments; in a data-parallel run, what every worker runs (with its
    :class:`~ppl_vae.train.distributed.Engine`)."""
    rank, world = (0, 1) if engine is None else (engine.rank, engine.world_size)
    device = config.device if engine is None else engine.device
    prepared = prepare_data(data, validation_data, config, device)
    warmup = None
    if config.kl_warmup_epochs:
        steps_per_epoch = math.ceil(prepared.num_data / config.batch_size)
        warmup = KLWarmup(config.kl_warmup_epochs * steps_per_epoch)
    bits = None if config.free_bits is None else FreeBits(config.free_bits, config.free_bits_per)
    state = preflight(model, guide, prepared, config, world, warmup, bits)
    if bits is not None:
        bits.data_plate = state.data_plate  # the correction starts with the first step
    config = replace(config, data_plate=state.data_plate)  # the plate init_state found
    if engine is None and wants_engine(config.devices, config.strategy, config.num_nodes):
        # Checked and initialised here, so errors are raised in this process, not in a worker.
        check_data_parallel(state)
        return launch_fit(run_fit, model, guide, data, validation_data, config,
                          device=config.device if config.device is not None else prepared.device)
    if engine is not None:
        state = engine.setup(state)
    settings = make_settings(config, prepared, world, rank)
    settings["programs"] = program_digests(model, guide)  # a resume or evaluate compares it
    stopper = _stopper(config, prepared, state)
    main = engine is None or engine.is_main
    logs = None
    if config.loggers and main:
        logs = EpochLoggers(config.loggers, model, guide, _kl_rows(prepared, config))
        logs.start(settings)
        config = replace(config, callbacks=(*config.callbacks, logs.epoch))
    # One writer per run folder: a second process (or a second fit) training into it is refused
    # while this one runs. Data-parallel workers run under their launcher's lock.
    held = lock_run(config.checkpoint_dir) if config.checkpoint_dir is not None and engine is None \
        else contextlib.nullcontext()
    with held:
        # A new run into a folder with a checkpoint is refused in _resume_and_train.
        owns_folder = config.checkpoint_dir is not None and main and (
            config.resume or not (config.checkpoint_dir / CHECKPOINT_NAME).exists()) and \
            start_fit_folder(config.checkpoint_dir, model, guide, prepared.dtype,
                             resume=config.resume)
        records, settings = _resume_and_train(model, guide, state, prepared, config, engine,
                                              settings, stopper, warmup)
        settings["compile"] = step_summary(state.recorder, state.fused, state.padding_note)
        result = FitResult(
            model=model, guide=guide, history=pd.DataFrame.from_records(records),
            params=capture_params(model, guide, state.param_names), settings=settings,
            state=state, stopped_early=stopper is not None and stopper.stopped,
        )
        if owns_folder:
            finish_fit_folder(config.checkpoint_dir, result)
    if logs is not None:
        logs.finish()
    if main and show_progress(config.progress):
        print(f"ppl-vae fit: {result._line()}", flush=True)
    return result


def show_progress(progress: bool | None) -> bool:
    """Whether to show the bar and the summary: ``progress``, or when None, on a terminal or
    in a Jupyter kernel (where ``sys.stderr.isatty()`` is False)."""
    if progress is not None:
        return progress
    if sys.stderr.isatty():
        return True
    shell = sys.modules.get("IPython")
    shell = shell.get_ipython() if shell is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def _kl_rows(prepared, config: FitConfig):
    """The fixed rows the loggers' ``kl`` is measured on: a batch of validation rows (else of
    training rows), in memory."""
    rows = prepared.validation_head if prepared.validation_head is not None else prepared.head
    return tuple(t[:config.batch_size] for t in rows)


def _resume_and_train(model, guide, state, prepared, config: FitConfig, engine, settings: dict,
                      stopper, warmup=None):
    """Resume from the checkpoint when asked, train the remaining epochs, restore the best
    parameters when early stopping kept them. Returns the history rows and the settings."""
    saver = None
    if config.checkpoint_dir is not None:
        saver = Checkpointer(config.checkpoint_dir, is_main=engine is None or engine.is_main)
        if not config.resume and saver.is_main and saver.path.exists():
            # A new run would replace the checkpoint (and history) of the run already there.
            raise FileExistsError(
                f"checkpoint_dir {str(config.checkpoint_dir)!r} already holds a run's "
                f"{saver.path.name}: pass resume=True to continue that run, or another "
                "checkpoint_dir (or remove the file) to start a new one")
    resumed = resume_run(saver, settings, model, guide, state, stopper, prepared.device) \
        if config.resume else None
    if resumed is None:
        records, start = [], 1
        pyro.set_rng_seed(config.seed)  # the preflight consumed random numbers; start afresh
    else:
        records, start, settings = resumed
    epochs = Epochs(prepared, config, engine, validation_loss_fn(model, guide, prepared, config),
                    warmup)
    if stopper is None or not stopper.stopped:
        _train(model, guide, state, epochs, range(start, config.epochs + 1), records, settings,
               stopper, saver)
    settings["stopped_by"] = _stopped_by(config, records, stopper, settings)
    kept = stopper.restore_best(model, guide) if stopper is not None else None
    # The epoch whose parameters the result holds (the report and `ppl-vae report` show it).
    settings["kept_epoch"] = kept if kept is not None else (
        records[-1]["epoch"] if records else None)
    return records, settings


def _stopper(config: FitConfig, prepared, state) -> EarlyStopping | None:
    """Early stopping (``early_stopping_patience``), the convergence rule of ``epochs="auto"``,
    and the plateau schedule, which all watch the same ELBO."""
    with_val = prepared.validation is not None
    if not (config.auto or config.lr_schedule or
            (config.early_stopping_patience is not None and with_val)):
        return None
    schedule = None
    if config.lr_schedule == "plateau":
        schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(
            state.optimizer, mode="max", factor=0.5, patience=max(2, config.patience // 4),
            threshold=config.tolerance, threshold_mode="abs")
    if config.auto:
        patience = config.patience
    else:
        patience = config.early_stopping_patience if with_val else None
    return EarlyStopping(patience, tolerance=config.tolerance if config.auto else 0.0,
                         monitor="val_elbo" if with_val else "train_elbo",
                         smoothing=None if with_val else 0.3, warmup=config.kl_warmup_epochs,
                         keep_best=config.auto, lr_schedule=schedule)


def _stopped_by(config, records, stopper, settings) -> str:
    if settings.get("stopped_by") == "time_budget":
        return "time_budget"
    if stopper is not None and stopper.stopped:
        return "patience"
    if records and records[-1]["epoch"] >= config.epochs:
        return "max_epochs" if config.auto else "epochs"
    return "callback"


def _train(model, guide, state, epochs: Epochs, todo: range, records: list, settings: dict,
           stopper: EarlyStopping | None, saver: Checkpointer | None) -> None:
    """The epochs ``todo``: each one's steps, its history row, early stopping, the checkpoint,
    the user's callbacks; stops when early stopping or a callback says so."""
    config, engine = epochs.config, epochs.engine
    show = show_progress(config.progress) and (engine is None or engine.is_main)
    bar = tqdm(todo, desc="ppl-vae fit", unit="epoch", disable=not show, initial=todo.start - 1,
               total=config.epochs)
    batch = max(config.batch_size // (1 if engine is None else engine.world_size), 1)
    threads = choose_threads(state.params, batch, config.threads)
    spent = sum(r.get("seconds", 0.0) for r in records)
    with pyro.validation_enabled(False), intra_op_threads(threads):
        for epoch in bar:
            record = epochs.train(state, epoch, records, None if saver is None else saver.where)
            records.append(record)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k.endswith("elbo")})
            stop_early = stopper is not None and stopper.update(record, model, guide, state)
            if saver is not None:
                saver.save(epoch, records, model, guide, state, settings, stopper)
            stop = any(callback(record, state) for callback in config.callbacks)
            spent += record["seconds"]
            if config.time_budget is not None and spent >= config.time_budget:
                settings["stopped_by"] = "time_budget"
                stop_early = True
            if (stop if engine is None else engine.any(stop)) or stop_early:
                break
    bar.close()
