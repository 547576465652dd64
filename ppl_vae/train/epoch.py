"""One epoch of ``fit``: its batches, its steps, the divergence check, and its history row."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

from ppl_vae.data.streaming import DiskData, EpochBatches, sampler_seed, sequential_batches
from ppl_vae.data.tensors import iter_batches
from ppl_vae.programs.modes import eval_mode
from ppl_vae.train.options import FitConfig
from ppl_vae.train.prepare import Prepared
from ppl_vae.train.result import TrainingDivergedError
from ppl_vae.train.state import TrainState, mean_loss, update

__all__ = ["Epochs", "epoch_generator", "check_divergence", "check_parameters",
           "check_validation", "validation_loss", "STEP_NOTE"]

#: How the note added to an exception raised by the programs during training begins.
STEP_NOTE = "raised while training, at epoch"


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of epoch ``epoch``'s in-memory batch order."""
    # The batch order of epoch e depends on (seed, e) only, so a run resumed at an epoch boundary
    # sees the same batches as an uninterrupted one; the same seed as DistributedSampler's, so a
    # data-parallel or streamed run cuts the same global batches.
    return torch.Generator().manual_seed(sampler_seed(seed) + int(epoch))


def validation_loss(loss_fn, data, batch_size, engine, device, dtype) -> torch.Tensor:
    """Mean validation loss over all rows; with an engine each process takes every W-th row and
    the per-process sums are added up (each row counted once, no sampler padding)."""
    rank, world = (0, 1) if engine is None else (engine.rank, engine.world_size)
    batches = sequential_batches(data, batch_size, rank=rank, world_size=world, device=device,
                                 dtype=dtype)
    if engine is None:
        return mean_loss(loss_fn, batches)
    rows = len(data) if isinstance(data, DiskData) else int(data[0].shape[0])
    local = len(range(rank, rows, world))
    return engine.sum(mean_loss(loss_fn, batches) * local) / rows


def check_divergence(losses: torch.Tensor, epoch_loss: torch.Tensor, epoch: int, records: list,
                     checkpoint: tuple[Path, int | None] | None) -> None:
    """Raise :class:`TrainingDivergedError` when the epoch's loss is not finite, naming the
    epoch, the first bad step of this process, and the last good checkpoint (or saying that none
    was written)."""
    if bool(torch.isfinite(epoch_loss)):
        return
    finite = torch.isfinite(losses)
    # Another process may hold the bad step; report ours when we have one.
    bad_step = int((~finite).nonzero()[0, 0]) + 1 if not bool(finite.all()) else 1
    where = _last_good(checkpoint)
    raise TrainingDivergedError(
        f"the loss became {float(losses[bad_step - 1])} at epoch {epoch}, step {bad_step} of "
        f"{len(losses)}: lower the learning rate or check the model's scales{where}",
        pd.DataFrame.from_records(records), epoch, bad_step,
    )


def _last_good(checkpoint: tuple[Path, int | None] | None) -> str:
    if checkpoint is None:
        return ""
    path, saved_epoch = checkpoint
    if saved_epoch is not None:
        return f"; the last good checkpoint is {path} (epoch {saved_epoch})"
    return f"; no checkpoint was written to {path.parent} (none before the first epoch ended)"


def check_parameters(params, epoch: int, steps: int, records: list,
                     checkpoint: tuple[Path, int | None] | None) -> None:
    """Raise :class:`TrainingDivergedError` when a trained tensor is not finite at the end of an
    epoch whose losses all were: a gradient or an update was (``torch.where`` over a NaN branch,
    an overflow in the backward pass). One pass over the parameters and one host read per
    epoch, before the epoch's checkpoint is written: the checkpoint on disk stays a good one."""
    if not params:
        return
    # A sum is finite exactly when every entry is (a NaN or an infinity propagates), and summing
    # in float64 cannot overflow float32 entries; a third of the cost of isfinite().all().
    # (MPS has no float64: there the float32 sum, whose overflow would need entries near 1e38.)
    total = torch.stack([p.detach().sum(dtype=torch.float32 if p.device.type == "mps"
                                        else torch.float64) for p in params]).sum()
    if bool(torch.isfinite(total)):
        return
    raise TrainingDivergedError(
        f"a parameter became non-finite at epoch {epoch} (by step {steps} of {steps}; every loss "
        f"of the epoch was finite, so a gradient or an update was not): lower the learning rate "
        f"or check the programs' gradients{_last_good(checkpoint)}",
        pd.DataFrame.from_records(records), epoch, steps)


def check_validation(value: float, epoch: int, records: list,
                     checkpoint: tuple[Path, int | None] | None) -> None:
    """Raise :class:`TrainingDivergedError` when the validation ELBO is not finite."""
    if math.isfinite(value):
        return
    raise TrainingDivergedError(
        f"the validation ELBO became {value} at epoch {epoch} (the training losses were finite): "
        f"check the programs on the validation data or lower the learning rate"
        f"{_last_good(checkpoint)}", pd.DataFrame.from_records(records), epoch, 0)


class Epochs:
    """The epochs of one run: ``epochs.train(state, epoch)`` takes one epoch of steps and
    returns its history row (train ELBO, validation ELBO, seconds, steps)."""

    def __init__(self, prepared: Prepared, config: FitConfig, engine, val_loss_fn,
                 objective=None):
        self.prepared, self.config, self.engine, self.val_loss_fn = prepared, config, engine, val_loss_fn
        # (clock, context): the loop sets the clock's step, the objective's terms read it.
        self.clock, self.context = objective if objective is not None else (None, None)
        rank, world = (0, 1) if engine is None else (engine.rank, engine.world_size)
        self.stream = EpochBatches(prepared.train, config.batch_size, seed=config.seed, rank=rank,
                                   world_size=world, device=prepared.device, dtype=prepared.dtype)

    def batches(self, epoch: int):
        if self.engine is None and not self.prepared.streaming:
            # A full batch is the data in its order, as plain Pyro's loop passes it: a guide with
            # one parameter per row learns row i's posterior from row i only.
            shuffle = self.config.batch_size < self.prepared.num_data
            return iter_batches(self.prepared.train, self.config.batch_size, shuffle=shuffle,
                                generator=epoch_generator(self.config.seed, epoch))
        if self.engine is not None:
            self.engine.seed_epoch(self.config.seed, epoch)
        return self.stream(epoch)

    def steps(self, state: TrainState, epoch: int) -> tuple[TrainState, list[torch.Tensor]]:
        """The epoch's steps: the state after them and their losses (0-dim tensors, not read
        on the host)."""
        losses = []
        with warnings.catch_warnings():
            # Pyro's eager ELBOs warn at every NaN step; the divergence check stops the run at
            # the epoch's end, naming the first bad step, with one error instead.
            warnings.filterwarnings("ignore", message="Encountered (NaN|[+-]?Inf)",
                                    category=UserWarning)
            for step, batch in enumerate(self.batches(epoch), start=1):
                if self.clock is not None:
                    self.clock.step = state.step
                try:
                    state, loss = update(state, batch)
                except Exception as error:
                    # Re-raised unchanged: the programs' own exception, told where training was.
                    error.add_note(f"{STEP_NOTE} {epoch}, step {step}")
                    raise
                losses.append(loss)
        return state, losses

    def train(self, state: TrainState, epoch: int, records: list,
              checkpoint: tuple[Path, int | None] | None) -> tuple[TrainState, dict]:
        """One epoch: the state after its steps, and its history row."""
        t0 = time.perf_counter()
        state, losses = self.steps(state, epoch)
        stacked = torch.stack(losses)
        epoch_loss = stacked.mean() if self.engine is None else self.engine.mean(stacked.mean())
        check_divergence(stacked, epoch_loss, epoch, records, checkpoint)
        check_parameters(state.params, epoch, len(losses), records, checkpoint)
        # Each step's loss estimates -ELBO of all N points; average, then per data point.
        record = {"epoch": epoch, "train_elbo": -float(epoch_loss) / self.prepared.num_data}
        if self.val_loss_fn is not None:
            p = self.prepared
            try:
                with eval_mode(self.val_loss_fn):  # dropout off, as evaluate; modes restored
                    val = validation_loss(self.val_loss_fn, p.validation, self.config.batch_size,
                                          self.engine, p.device, p.dtype)
            except Exception as error:
                error.add_note(f"{STEP_NOTE} {epoch}, on the validation data")
                raise
            record["val_elbo"] = -float(val) / p.num_validation
            check_validation(record["val_elbo"], epoch, records, checkpoint)
        record["seconds"] = time.perf_counter() - t0
        record["steps"] = len(losses)
        for term in self.config.objective.terms:
            # Say when train_elbo is not the ELBO (val_elbo always is).
            record.update(term.columns(self.context))
        if self.config.loop.lr_schedule is not None:
            record["lr"] = float(state.optimizer.param_groups[0]["lr"])
        return state, record
