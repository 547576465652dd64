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

from ppl_vae.programs.digest import program_digests
from ppl_vae.recording.summary import step_summary
from ppl_vae.storage.files import lock_run
from ppl_vae.train.callbacks import Checkpointer, EarlyStopping
from ppl_vae.train.checkpoint import CHECKPOINT_NAME, capture_params
from ppl_vae.train.distributed import check_data_parallel, launch_fit, setup_state, wants_engine
from ppl_vae.train.epoch import Epochs
from ppl_vae.train.keywords import fit_config
from ppl_vae.train.loggers import EpochLoggers
from ppl_vae.train.options import (
    Checkpoint,
    Compute,
    FitConfig,
    Loop,
    Objective,
    Parallel,
)
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
    epochs: int | str = 30,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer="adam",
    seed: int = 0,
    device=None,
    progress: bool | None = None,
    callbacks: Sequence[Callback] = (),
    loggers: Sequence = (),
    objective: Objective | None = None,
    loop: Loop | None = None,
    checkpoint: Checkpoint | str | Path | None = None,
    parallel: Parallel | None = None,
    compute: Compute | None = None,
    **deprecated,
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
    estimator : str or pyro.infer.ELBO
        ELBO estimator name (see :func:`ppl_vae.make_elbo`), or a Pyro ELBO instance: mapped to
        its registered estimator with its options, or used as given (``docs/estimators.md``).
    epochs : int or "auto"
        An integer: that many epochs. ``"auto"``: train until the validation ELBO (without
        validation data, the training ELBO smoothed over epochs) has not improved by more than
        ``loop.tolerance`` nats per data point for ``loop.patience`` epochs, at most
        ``loop.max_epochs`` epochs and, when given, ``loop.time_budget`` seconds of training;
        the best epoch's parameters are kept (``settings["stopped_by"]`` says what ended it).
    batch_size, lr : ``batch_size`` must lie in ``[1, N]``.
    optimizer : str, optimizer class or pyro.optim optimizer
        ``"adam"`` (default), ``"adamw"``, ``"sgd"``, ``"rmsprop"``, ``"adagrad"``, a
        ``torch.optim.Optimizer`` class, or ``pyro.optim.Adam({...})`` / ``ClippedAdam`` /
        per-parameter callables (:mod:`~ppl_vae.train.optimizers`; its own ``lr`` wins).
    seed : int
        Seeds Pyro, torch, NumPy and the batch order: the same seed gives the same history.
    device : str or torch.device, optional
        Where data, parameters and every sample site live. Default: the data's device.
    progress : bool, optional
        A ``tqdm.auto`` bar over epochs (a widget in Jupyter) and one summary line at the end.
        None (default): shown on a terminal and in a notebook; True: always; False: never.
    callbacks : sequence of callables
        ``callback(record, state)`` after each epoch (and its checkpoint), with the history row
        as a dict; returning ``True`` stops training.
    loggers : sequence of lightning.fabric.loggers.Logger
        Experiment loggers (:mod:`~ppl_vae.train.loggers`): per epoch ``train_elbo``,
        ``val_elbo``, ``kl``, ``lr``, ``kl_weight``, ``seconds``; the settings as
        hyperparameters.
    objective : Objective, optional
        ``num_particles``, ``vectorize_particles``, ``elbo_options``, ``data_plate`` (the plate
        over data points, scaled by N / batch size; default: the one plate of the batch's size)
        and training-only ``terms``: :class:`~ppl_vae.train.objective.KLWarmup` (Bowman et al.
        2016), :class:`~ppl_vae.train.objective.FreeBits` (Kingma et al. 2016) or a term of
        your own. A term changes training only: the history's ``kl_weight`` / ``free_bits``
        columns say when ``train_elbo`` is not the ELBO; validation and evaluation use the ELBO.
    loop : Loop, optional
        ``patience`` (``epochs="auto"``: convergence, default 20; integer epochs: early stopping
        on the validation ELBO, restoring the best parameters), ``max_epochs``, ``time_budget``
        (also bounds an integer ``epochs``), ``tolerance``, ``lr_schedule="plateau"``.
    checkpoint : Checkpoint or path, optional
        ``Checkpoint(dir, resume=False)`` (a path alone: the folder). ``checkpoint.pt`` and
        ``history.csv`` are written there after every epoch; the folder is a run folder that
        ``ppl_vae.load`` reads. A folder holding a checkpoint is refused unless ``resume``,
        which continues the same run (other settings or data: a ``ValueError`` listing them).
    parallel : Parallel, optional
        ``devices``, ``strategy``, ``num_nodes``: data-parallel training (Lightning Fabric,
        DDP); ``batch_size`` stays the global batch. See ``docs/scaling.md``.
    compute : Compute, optional
        ``dtype`` (default: the data's), ``threads`` (``"auto"``: what the step's size can use),
        ``jit`` (``"auto"``: record the step where the programs are static; ``"compile"``;
        ``False``: Pyro's eager step).
    **deprecated
        The keywords of the previous release (``num_particles=``, ``kl_warmup_epochs=``,
        ``early_stopping_patience=``, ...) still work, with a ``FutureWarning`` naming the new
        spelling; ``docs/options.md`` lists every option.

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
    config = fit_config(
        estimator=estimator, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
        seed=seed, device=device, progress=progress, callbacks=callbacks, loggers=loggers,
        groups={"objective": objective, "loop": loop, "checkpoint": checkpoint,
                "parallel": parallel, "compute": compute}, legacy=deprecated)
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
    :class:`~ppl_vae.parallel.engine.Engine`)."""
    rank, world = (0, 1) if engine is None else (engine.rank, engine.world_size)
    device = config.device if engine is None else engine.device
    prepared = prepare_data(data, validation_data, config, device)
    clock = _Clock()
    state, terms = preflight(model, guide, prepared, config, world, clock)
    config = replace(config, objective=replace(config.objective, data_plate=state.data_plate))
    par = config.parallel
    if engine is None and wants_engine(par.devices, par.strategy, par.num_nodes):
        # Checked and initialised here, so errors are raised in this process, not in a worker.
        check_data_parallel(state)
        return launch_fit(run_fit, model, guide, data, validation_data, config,
                          device=config.device if config.device is not None else prepared.device)
    if engine is not None:
        state = setup_state(engine, state)
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
    folder, resume = config.checkpoint.dir, config.checkpoint.resume
    held = lock_run(folder) if folder is not None and engine is None else contextlib.nullcontext()
    with held:
        # A new run into a folder with a checkpoint is refused in _resume_and_train.
        owns_folder = folder is not None and main and (
            resume or not (folder / CHECKPOINT_NAME).exists()) and \
            start_fit_folder(folder, model, guide, prepared.dtype, resume=resume)
        records, settings, state = _resume_and_train(model, guide, state, prepared, config,
                                                     engine, settings, stopper, (clock, terms))
        settings["compile"] = step_summary(state.recorder, state.fused, state.padding_note)
        result = FitResult(
            model=model, guide=guide, history=pd.DataFrame.from_records(records),
            params=capture_params(model, guide, state.param_names), settings=settings,
            state=state, stopped_early=stopper is not None and stopper.stopped,
        )
        if owns_folder:
            finish_fit_folder(folder, result)
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
                      stopper, objective=None):
    """Resume from the checkpoint when asked, train the remaining epochs, restore the best
    parameters when early stopping kept them. Returns the history rows, the settings and the
    last state."""
    saver, folder = None, config.checkpoint.dir
    if folder is not None:
        saver = Checkpointer(folder, is_main=engine is None or engine.is_main)
        if not config.checkpoint.resume and saver.is_main and saver.path.exists():
            # A new run would replace the checkpoint (and history) of the run already there.
            raise FileExistsError(
                f"checkpoint_dir {str(folder)!r} already holds a run's "
                f"{saver.path.name}: pass resume=True to continue that run, or another "
                "checkpoint_dir (or remove the file) to start a new one")
    resumed = resume_run(saver, settings, model, guide, state, stopper, prepared.device) \
        if config.checkpoint.resume else None
    if resumed is None:
        records, start = [], 1
        pyro.set_rng_seed(config.seed)  # the preflight consumed random numbers; start afresh
    else:
        records, start, settings, state = resumed
    epochs = Epochs(prepared, config, engine, validation_loss_fn(model, guide, prepared, config),
                    objective)
    if stopper is None or not stopper.stopped:
        state = _train(model, guide, state, epochs, range(start, config.max_epochs + 1), records,
                       settings, stopper, saver)
    settings["stopped_by"] = _stopped_by(config, records, stopper, settings)
    kept = stopper.restore_best(model, guide) if stopper is not None else None
    # The epoch whose parameters the result holds (the report and `ppl-vae report` show it).
    settings["kept_epoch"] = kept if kept is not None else (
        records[-1]["epoch"] if records else None)
    return records, settings, state


def _stopper(config: FitConfig, prepared, state) -> EarlyStopping | None:
    """Early stopping (``loop.patience`` with integer epochs), the convergence rule of
    ``epochs="auto"``, and the plateau schedule, which all watch the same ELBO."""
    with_val, loop = prepared.validation is not None, config.loop
    if not (config.auto or loop.lr_schedule or (loop.patience is not None and with_val)):
        return None
    schedule = None
    if loop.lr_schedule == "plateau":
        schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(
            state.optimizer, mode="max", factor=0.5, patience=max(2, config.patience // 4),
            threshold=loop.tolerance, threshold_mode="abs")
    if config.auto:
        patience = config.patience
    else:
        patience = loop.patience if with_val else None
    return EarlyStopping(patience, tolerance=loop.tolerance if config.auto else 0.0,
                         monitor="val_elbo" if with_val else "train_elbo",
                         smoothing=None if with_val else 0.3, warmup=config.warmup_epochs,
                         keep_best=config.auto, lr_schedule=schedule)


def _stopped_by(config, records, stopper, settings) -> str:
    if settings.get("stopped_by") == "time_budget":
        return "time_budget"
    if stopper is not None and stopper.stopped:
        return "patience"
    if records and records[-1]["epoch"] >= config.max_epochs:
        return "max_epochs" if config.auto else "epochs"
    return "callback"


def _train(model, guide, state, epochs: Epochs, todo: range, records: list, settings: dict,
           stopper: EarlyStopping | None, saver: Checkpointer | None):
    """The epochs ``todo``: each one's steps, its history row, early stopping, the checkpoint,
    the user's callbacks; stops when early stopping or a callback says so. Returns the last
    state."""
    config, engine = epochs.config, epochs.engine
    show = show_progress(config.progress) and (engine is None or engine.is_main)
    bar = tqdm(todo, desc="ppl-vae fit", unit="epoch", disable=not show, initial=todo.start - 1,
               total=config.max_epochs)
    batch = max(config.batch_size // (1 if engine is None else engine.world_size), 1)
    threads = choose_threads(state.params, batch, config.compute.threads)
    spent = sum(r.get("seconds", 0.0) for r in records)
    step = state.fused if state.fused is not None else state.recorder
    if step is not None:  # a background compile switches in only where it pays back
        step.time_left = _time_left(config, records, stopper, todo.start - 1)
    with pyro.validation_enabled(False), intra_op_threads(threads):
        for epoch in bar:
            state, record = epochs.train(state, epoch, records,
                                         None if saver is None else saver.where)
            records.append(record)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k.endswith("elbo")})
            stop_early = stopper is not None and stopper.update(record, model, guide, state)
            if saver is not None:
                saver.save(epoch, records, model, guide, state, settings, stopper)
            stop = any(callback(record, state) for callback in config.callbacks)
            spent += record["seconds"]
            if config.loop.time_budget is not None and spent >= config.loop.time_budget:
                settings["stopped_by"] = "time_budget"
                stop_early = True
            if (stop if engine is None else engine.any(stop)) or stop_early:
                break
    bar.close()
    return state


def _time_left(config, records: list, stopper: EarlyStopping | None, resumed: int):
    """Seconds of training the run has left, as the default step's background compile weighs a
    switch (``None`` before an epoch of this run ended): the epochs left at the mean epoch time
    so far, counting, where patience may stop the run, only the epochs it surely still trains
    (patience minus the epochs since the best one), and at most the time budget left."""
    def time_left() -> float | None:
        ours = [r for r in records if r["epoch"] > resumed]
        if not ours:
            return None
        per_epoch = sum(r.get("seconds", 0.0) for r in ours) / len(ours)
        last = ours[-1]["epoch"]
        left = config.max_epochs - last
        if stopper is not None and stopper.patience is not None:
            # (patience counts from the best epoch, and not within the warm-up epochs)
            left = min(left, stopper.patience - (last - max(stopper.best_epoch, stopper.warmup)))
        seconds = max(left, 0) * per_epoch
        if config.loop.time_budget is not None:
            spent = sum(r.get("seconds", 0.0) for r in records)
            seconds = min(seconds, max(config.loop.time_budget - spent, 0.0))
        return seconds

    return time_left


class _Clock:
    """The optimizer step the next loss is for, as the objective's terms read it
    (:class:`~ppl_vae.train.objective.TermContext`): None outside training. The loop sets it
    before each step; the terms' weights are functions of it."""

    def __init__(self):
        self.step: int | None = None

    def __call__(self) -> int | None:
        return self.step
