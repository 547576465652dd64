"""Data-parallel SVI on Lightning Fabric: ``fit(..., devices=N, strategy=..., num_nodes=M)``.

Why Fabric (the ``lightning-fabric`` package, ``lightning_fabric``) and not the Lightning ``Trainer`` or bare ``torch.distributed``:
``fit`` already has its training loop (``init_state`` / ``update``, checkpoints whose batch order
and RNG make resumption exact). The ``Trainer`` would bring a second loop with its own
optimisation, checkpoint and epoch logic; bare ``torch.distributed`` would leave process
launching and cluster detection (torchrun, SLURM, LSF, MPI) to us. Fabric gives exactly the
engine parts -- launchers, cluster environments, ``DistributedDataParallel`` wrapping, the
distributed sampler, collectives, accelerator placement -- around the one loop in ``fit``.

Each process runs ``fit``'s loop on its shard of every batch. The loss module is Pyro's
``ELBOModule`` (``elbo(ScaledProgram(model), ScaledProgram(guide))``, built by ``init_state``),
wrapped in ``DistributedDataParallel``, whose all-reduce averages the gradients over processes.
Each process scales its data-plate sites by ``N / (B / W)`` with ``N`` the full data size, so each
process's loss is an unbiased estimate of the whole data set's negative ELBO, and so is their
average: for a deterministic loss, ``W`` processes with local batches ``B / W`` take exactly the
step that one process takes with batch ``B`` (see ``tests/test_distributed.py``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import torch

from ppl_vae.train.checkpoint import load_checkpoint, restore_params, save_checkpoint
from ppl_vae.train.options import FitConfig
from ppl_vae.train.result import FitResult
from ppl_vae.train.state import TrainState

__all__ = ["Engine", "check_data_parallel", "launch_fit", "wants_engine"]


def wants_engine(devices, strategy, num_nodes) -> bool:
    """Whether ``fit`` runs through the distributed engine (any of the three arguments set to
    something other than one plain process)."""
    return (devices not in (None, 1, "1")) or strategy is not None or int(num_nodes or 1) > 1


def _accelerator(device) -> str:
    if device is None:
        return "cpu"
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: data-parallel runs support cpu, cuda and mps")
    return kind


def _fabric(devices, strategy, num_nodes, device):
    try:
        from lightning_fabric import Fabric
        from lightning_fabric.utilities.exceptions import MisconfigurationException
    except ImportError:  # pragma: no cover - lightning-fabric is the distributed extra
        raise ValueError(
            "devices/strategy/num_nodes need Lightning Fabric: pip install "
            "'ppl-vae[distributed]' (the lightning-fabric package)"
        ) from None
    try:
        return Fabric(
            accelerator=_accelerator(device), strategy=strategy or "auto",
            devices=list(devices) if isinstance(devices, tuple) else (devices or 1),
            num_nodes=int(num_nodes or 1),
        )
    except (ValueError, TypeError, RuntimeError, MisconfigurationException) as exc:
        # Lightning's own message, said about our arguments.
        raise ValueError(
            f"devices={devices!r}, strategy={strategy!r}, num_nodes={num_nodes!r}, "
            f"device={device!r}: {exc}"
        ) from None


def check_data_parallel(state: TrainState) -> None:
    """Raise ``ValueError`` when a trained tensor is not a parameter of the loss module (a
    ``pyro.param`` site or a ``pyro.module`` of a plain function): DDP would not all-reduce its
    gradient and the processes would drift apart silently."""
    owned = {id(p) for p in state.loss_fn.parameters()}
    loose = [n for n in state.param_names if id(pyro.param(n).unconstrained()) not in owned]
    if loose or any(id(p) not in owned for p in state.params):
        raise ValueError(
            "data-parallel training needs every trained tensor to be a parameter of the model "
            "or guide module (a PyroModule or torch.nn.Module passed as model/guide); these "
            f"pyro.param sites are not: {loose or 'parameters of a pyro.module call'}"
        )


class Engine:
    """One process's handle on a launched data-parallel run (a Lightning ``Fabric``).

    Attributes
    ----------
    rank, world_size : int
        Global rank of this process and the number of processes.
    device : torch.device
        Where this process trains (``cuda:<local rank>`` on GPUs, ``cpu`` otherwise).
    """

    def __init__(self, fabric):
        self.fabric = fabric
        self.rank = int(fabric.global_rank)
        self.world_size = int(fabric.world_size)
        self.device = fabric.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self, state: TrainState) -> TrainState:
        """Wrap the loss module in DDP (through Fabric) and its optimizer."""
        check_data_parallel(state)
        module, optimizer = self.fabric.setup(state.loss_fn, state.optimizer)
        # DDP averages the gradients between backward() and the optimizer's step: no fused step.
        state.loss_fn, state.optimizer, state.fused = module, optimizer, None
        return state

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """Seed this process's sampling for ``epoch`` from (seed, epoch, rank): processes draw
        independent noise, and a run resumed at an epoch boundary draws the same noise again
        without having to gather every process's RNG state into the checkpoint."""
        entropy = [int(seed), int(epoch), self.rank]
        pyro.set_rng_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        return self.fabric.all_reduce(value.detach().clone(), reduce_op="mean")

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        return self.fabric.all_reduce(value.detach().clone(), reduce_op="sum")

    def any(self, flag: bool) -> bool:
        value = torch.tensor(float(bool(flag)), device=self.device)
        return bool(self.sum(value) > 0)

    def barrier(self) -> None:
        self.fabric.barrier()


def _worker(fabric, run: Callable, args: tuple, config: FitConfig, parent_pid: int,
            handover: str):
    result = run(*args, config, engine=Engine(fabric))
    if os.getpid() == parent_pid:
        return result
    if fabric.local_rank == 0:  # the launcher returns local process 0's value to its parent
        # A worker of a spawn/fork launcher hands its result over in a file, as Lightning's
        # Trainer does: tensors on the launcher's return queue travel as shared-memory handles
        # that die with this process, and a large payload written into the queue's pipe would
        # block until the parent reads, which it only does once every worker has exited.
        save_checkpoint(Path(handover), {
            "history": result.history.to_dict("records"), "params": result.params,
            "settings": result.settings, "stopped_early": result.stopped_early,
        })
    return handover


def launch_fit(run: Callable, model, guide, data, validation_data, config: FitConfig, *,
               device) -> FitResult:
    """Run ``run(model, guide, data, validation_data, config, engine=...)`` (``fit``'s loop) in
    every process of a Fabric launch and return rank 0's ``FitResult``.

    ``device`` picks the accelerator; each worker trains on the device its engine gives it.
    With a spawn/fork strategy (``ddp_spawn``, ``ddp_fork``) this process starts the workers and
    afterwards holds the trained parameters in ``model`` / ``guide``; ``FitResult.state`` is then
    ``None`` (the training state lived in the workers). With ``ddp`` (Lightning re-runs the
    script for the other local ranks), torchrun or SLURM, every process returns its own
    ``FitResult``, state included.
    """
    par = config.parallel
    fabric = _fabric(par.devices, par.strategy, par.num_nodes, device)
    world = int(fabric.world_size)
    if config.batch_size % world:
        raise ValueError(
            f"batch_size={config.batch_size} (the global batch) must be divisible by the "
            f"number of processes ({world} = devices x num_nodes)"
        )
    worker_config = replace(config, device=None)
    with tempfile.TemporaryDirectory(prefix="ppl-vae-launch-") as folder:
        handover = os.path.join(folder, "rank0.pt")
        out = fabric.launch(_worker, run, (model, guide, data, validation_data), worker_config,
                            os.getpid(), handover)
        if isinstance(out, FitResult):
            return out
        out = load_checkpoint(Path(handover))
    restore_params(out["params"], model, guide)
    return FitResult(
        model=model, guide=guide, history=pd.DataFrame.from_records(out["history"]),
        params=out["params"], settings=out["settings"], state=None,
        stopped_early=out["stopped_early"],
    )
