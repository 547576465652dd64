"""Train into a run folder: the folder's lifecycle around ``fit``, shared by ``ppl-vae train``,
``ppl-vae run``, the benchmarks and Python callers.

The writer lock and ``--overwrite``'s set-aside (:func:`writing`), a refused or resumed folder,
seeding and an empty param store before the programs are built, ``config.json`` written once
the first epoch has trained (:class:`ConfigOnce`), the process's threads (:func:`use_threads`),
the plan table (:func:`print_plan`), and the rank exit of a data-parallel launch (only rank 0
writes the folder).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pandas as pd
import pyro
import torch

from ppl_vae.data.tensors import as_tensors, resolve_device
from ppl_vae.estimators.explain import explain
from ppl_vae.parallel.engine import wants_engine
from ppl_vae.runs.folder import check_same_run, prepare_run_folder, replacing_run, save_run
from ppl_vae.storage.files import lock_run
from ppl_vae.train.flags import fit_options_from_args
from ppl_vae.train.loop import fit
from ppl_vae.train.run_dir import build_programs, fit_data, load_data, write_config
from ppl_vae.train.threads import choose_threads

__all__ = ["ConfigOnce", "first_rows", "is_writer", "print_plan", "train_into", "use_threads",
           "writing"]


def is_writer(devices=None, strategy=None, num_nodes=1) -> bool:
    """Whether this process writes the run folder: always, except the non-zero ranks of a
    data-parallel launch (torchrun, SLURM, Lightning's re-run of the script per device).

    Parameters
    ----------
    devices, strategy, num_nodes
        The job's data-parallel options (see :func:`ppl_vae.parallel.engine.wants_engine`).
    """
    if not wants_engine(devices, strategy, num_nodes):
        return True
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var]) == 0
    return True


@contextlib.contextmanager
def writing(folder, *, devices=None, strategy=None, num_nodes=1, overwrite: bool = False):
    """Hold the run folder's writer lock in the process that writes it (no lock in the other
    ranks of a data-parallel launch, which only compute); with ``overwrite``, set the run files
    already there aside while the job runs (restored when it fails before writing a file, see
    :func:`ppl_vae.runs.folder.replacing_run`)."""
    folder = Path(folder)
    writer = is_writer(devices, strategy, num_nodes)
    with lock_run(folder) if writer else contextlib.nullcontext(), \
            replacing_run(folder, overwrite and writer):
        yield


class ConfigOnce:
    """``fit`` callback: write the run's ``config.json`` after the first epoch it trains.

    Parameters
    ----------
    out : Path
        The run folder.
    config : dict
        What ``config.json`` records (programs, data, options, first settings).
    """

    def __init__(self, out: Path, config: dict):
        self.out, self.config, self.done = out, config, False

    def __call__(self, record, state) -> None:
        if not self.done:
            write_config(self.out, self.config)
            self.done = True


def use_threads(model, guide, batch_size: int, threads) -> None:
    """Run the whole job (training, evaluation, diagnostics, report) on the intra-op threads
    that suit the model (``threads``: ``"auto"`` or a number; see
    :mod:`ppl_vae.train.threads`): a job owns its process, and on a busy machine torch's
    default of one thread per core made the digits job 3x slower."""
    params = [p for program in (model, guide) if isinstance(program, torch.nn.Module)
              for p in program.parameters()]
    chosen = choose_threads(params, batch_size, threads)
    if chosen is not None:
        torch.set_num_threads(chosen)


def first_rows(data, rows: int, device=None, dtype=None) -> tuple:
    """The first ``rows`` rows of every tensor of ``data`` (on ``device``, in ``dtype``)."""
    tensors = as_tensors(data, dtype=dtype, device=device, name="data")
    return tuple(t[:rows] for t in tensors)


def print_plan(model, guide, data, estimator: str, device=None) -> pd.DataFrame:
    """Print :func:`ppl_vae.explain`'s table for the first rows of ``data``; return it. Module
    programs are moved to ``device`` (they are expected in the data's dtype already)."""
    dev = resolve_device(device)
    if dev is not None:
        for program in (model, guide):
            if isinstance(program, torch.nn.Module):
                program.to(device=dev)
    # Enough rows that the data plate (the plate of the batch's size) is rarely ambiguous.
    plan = explain(model, guide, first_rows(data, 64, device=dev), estimator=estimator)
    print(f"plan for the {estimator!r} estimator (one row per latent site):")
    print(plan.to_string(index=False))
    plate = plan.attrs["data_plate"]
    print(f"data plate (scaled by N / batch size): {plate!r}" if plate is not None
          else f"data plate: none found: {plan.attrs['data_plate_error']}", flush=True)
    return plan


def train_into(out, args, *, config: dict, loggers=()):
    """Train as ``args`` say and write the run folder ``out``.

    Call it inside :func:`writing` (the folder's lock). An existing run in ``out`` is refused
    unless ``args.resume`` (same programs, data and options required) or ``args.overwrite``.

    Parameters
    ----------
    out : str or Path
        The run folder.
    args : argparse.Namespace
        The training options as ``ppl-vae train`` parses them (any object with those
        attributes: ``model``, ``guide``, ``data``, ``estimator``, ``epochs``, ...).
    config : dict
        What ``config.json`` records: the programs and data by name (zoo) or path and sha256
        (user files), their options (the CLI's ``config_from_args``).
    loggers : sequence, optional
        Lightning loggers (used by the writing process only).

    Returns
    -------
    (config, FitResult, Dataset) or None
        None in a data-parallel worker other than rank 0 (rank 0 writes and evaluates).
    """
    out = Path(out)
    writer = is_writer(args.devices, args.strategy, args.num_nodes)
    if writer:
        prepare_run_folder(out, resume=args.resume, overwrite=args.overwrite)
        if args.resume:
            check_same_run(out, config)
    dtype = getattr(torch, args.dtype)
    dataset = load_data(args.data).to(dtype)
    # Seed before building: the networks' initial weights come from torch's global RNG, and a
    # resumed or data-parallel run must start from the same ones. A run starts from an empty
    # param store: pyro.module would otherwise hand a rebuilt network another run's tensors.
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    model, guide = build_programs(config, dataset)
    for program in (model, guide):  # the plan below runs them: in the data's dtype already
        if isinstance(program, torch.nn.Module):
            program.to(dtype=dtype)
    # A killed run's folder says what it was from its first epoch on; written once fit has
    # checked everything (a refused --resume leaves the folder as it was) and never over the
    # config.json of a run being resumed (its settings and data fingerprint stay recorded).
    callbacks = ()
    if writer and not (args.resume and (out / "config.json").exists()):
        first = {**config, "settings": {"dtype": args.dtype}}
        if wants_engine(args.devices, args.strategy, args.num_nodes):
            write_config(out, first)  # the workers run the callbacks, not this process
        else:
            callbacks = (ConfigOnce(out, first),)
    use_threads(model, guide, args.batch_size, args.threads)
    print(f"training {args.model} / {args.guide} on {dataset.name} "
          f"({dataset.train.shape[0]} train, {dataset.test.shape[0]} test rows) "
          f"with the {args.estimator!r} estimator -> {out}", flush=True)

    print_plan(model, guide, fit_data(config, dataset, "train"), args.estimator, args.device)
    result = fit(model, guide, fit_data(config, dataset, "train"),
                 validation_data=fit_data(config, dataset, "test"), **fit_options_from_args(
                     args, batch_size=min(args.batch_size, dataset.train.shape[0]),
                     checkpoint_dir=out, callbacks=callbacks,
                     loggers=tuple(loggers) if writer else ()))
    if result.settings.get("global_rank", 0) != 0:
        return None  # a data-parallel worker: rank 0 writes and evaluates the run
    save_run(out, config, result)
    return config, result, dataset
