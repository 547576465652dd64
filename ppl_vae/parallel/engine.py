"""One process's handle on a data-parallel launch (Lightning Fabric), public to every stage.

Why Fabric (the ``lightning-fabric`` package, ``lightning_fabric``) and not the Lightning
``Trainer`` or bare ``torch.distributed``: ``fit`` already has its training loop and
``diagnose`` its chunked passes. The ``Trainer`` would bring a second loop with its own
optimisation, checkpoint and epoch logic; bare ``torch.distributed`` would leave process
launching and cluster detection (torchrun, SLURM, LSF, MPI) to us. Fabric gives exactly the
engine parts -- launchers, cluster environments, ``DistributedDataParallel`` wrapping, the
distributed sampler, collectives, accelerator placement.

Training (:mod:`ppl_vae.train.distributed`) and the sharded diagnostics
(:mod:`ppl_vae.diagnostics.distributed`) both start their processes with :func:`launch` and
talk to the others through :class:`Engine`; neither reaches into the other's module.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import numpy as np
import pyro
import torch

__all__ = ["Engine", "launch", "make_fabric", "wants_engine"]


def wants_engine(devices, strategy, num_nodes) -> bool:
    """Whether a job runs through the engine: any of the three arguments set to something
    other than one plain process.

    Parameters
    ----------
    devices : int, str, tuple or None
        Processes per node (``None``, ``1`` or ``"1"``: one process).
    strategy : str or None
        A Lightning Fabric strategy name (``ddp``, ``ddp_spawn``, ...).
    num_nodes : int or None
        Machines.
    """
    return (devices not in (None, 1, "1")) or strategy is not None or int(num_nodes or 1) > 1


def _accelerator(device) -> str:
    if device is None:
        return "cpu"
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: data-parallel runs support cpu, cuda and mps")
    return kind


def make_fabric(devices, strategy, num_nodes, device):
    """A Lightning ``Fabric`` for ``devices`` processes per node on ``num_nodes`` machines.

    ``device`` (``None``: the CPU) picks the accelerator. Lightning's own refusals become one
    ``ValueError`` naming these arguments; a missing ``lightning-fabric`` package is a
    ``ValueError`` saying what to install.
    """
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


class Engine:
    """One process's handle on a launched data-parallel job (a Lightning ``Fabric``).

    Parameters
    ----------
    fabric : lightning_fabric.Fabric
        The launched Fabric of this process.

    Attributes
    ----------
    rank, world_size : int
        Global rank of this process and the number of processes.
    device : torch.device
        Where this process computes (``cuda:<local rank>`` on GPUs, ``cpu`` otherwise).
    """

    def __init__(self, fabric):
        self.fabric = fabric
        self.rank = int(fabric.global_rank)
        self.world_size = int(fabric.world_size)
        self.device = fabric.device

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the process that writes and reports)."""
        return self.rank == 0

    def setup(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple:
        """``(module, optimizer)`` wrapped for data-parallel training (DDP through Fabric):
        the returned module all-reduces (averages) the gradients between ``backward()`` and
        the returned optimizer's step. The arguments are returned anew, never overwritten
        where the caller keeps them."""
        wrapped_module, wrapped_optimizer = self.fabric.setup(module, optimizer)
        return wrapped_module, wrapped_optimizer

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """Seed this process's sampling for ``epoch`` from (seed, epoch, rank): processes draw
        independent noise, and a run resumed at an epoch boundary draws the same noise again
        without having to gather every process's RNG state into the checkpoint."""
        entropy = [int(seed), int(epoch), self.rank]
        pyro.set_rng_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over the processes (a new tensor)."""
        return self.fabric.all_reduce(value.detach().clone(), reduce_op="mean")

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of ``value`` over the processes (a new tensor)."""
        return self.fabric.all_reduce(value.detach().clone(), reduce_op="sum")

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true in any process."""
        value = torch.tensor(float(bool(flag)), device=self.device)
        return bool(self.sum(value) > 0)

    def barrier(self) -> None:
        """Wait until every process has arrived here."""
        self.fabric.barrier()


def _worker(fabric, work: Callable, args: tuple, kwargs: dict, parent_pid: int,
            handover: str, hand_over: Callable):
    result = work(*args, **kwargs, engine=Engine(fabric))
    if os.getpid() == parent_pid:
        return result
    if fabric.local_rank == 0:  # the launcher returns local process 0's value to its parent
        # A worker of a spawn/fork launcher hands its result over in a file, as Lightning's
        # Trainer does: tensors on the launcher's return queue travel as shared-memory handles
        # that die with this process, and a large payload written into the queue's pipe would
        # block until the parent reads, which it only does once every worker has exited.
        hand_over(result, handover)
    return handover


def launch(fabric, work: Callable, args: tuple = (), kwargs: dict | None = None, *,
           hand_over: Callable, take_back: Callable):
    """Run ``work(*args, **kwargs, engine=Engine(fabric))`` in every process of ``fabric``.

    Returns this process's own result when it ran ``work`` itself (``ddp``, where Lightning
    re-runs the script per local rank; torchrun; SLURM). With a spawn/fork strategy
    (``ddp_spawn``, ``ddp_fork``) rank 0 writes its result with ``hand_over(result, path)`` and
    this process returns ``take_back(path)``.
    """
    with tempfile.TemporaryDirectory(prefix="ppl-vae-launch-") as folder:
        handover = os.path.join(folder, "rank0")
        out = fabric.launch(_worker, work, tuple(args), dict(kwargs or {}), os.getpid(),
                            handover, hand_over)
        if not (isinstance(out, str) and out == handover):
            return out
        return take_back(handover)
