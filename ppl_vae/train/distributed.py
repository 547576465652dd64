"""Data-parallel SVI on Lightning Fabric: ``fit(..., devices=N, strategy=..., num_nodes=M)``.

The engine itself (Lightning Fabric, and why Fabric) is :mod:`ppl_vae.parallel.engine`, shared
with the sharded diagnostics; this module holds what is particular to training.

Each process runs ``fit``'s loop on its shard of every batch. The loss module is Pyro's
``ELBOModule`` (``elbo(ScaledProgram(model), ScaledProgram(guide))``, built by ``init_state``),
wrapped in ``DistributedDataParallel``, whose all-reduce averages the gradients over processes.
Each process scales its data-plate sites by ``N / (B / W)`` with ``N`` the full data size, so each
process's loss is an unbiased estimate of the whole data set's negative ELBO, and so is their
average: for a deterministic loss, ``W`` processes with local batches ``B / W`` take exactly the
step that one process takes with batch ``B`` (see ``tests/test_distributed.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyro

from ppl_vae.parallel.engine import Engine, launch, make_fabric, wants_engine
from ppl_vae.train.checkpoint import load_checkpoint, restore_params, save_checkpoint
from ppl_vae.train.options import FitConfig
from ppl_vae.train.result import FitResult
from ppl_vae.train.state import TrainState

__all__ = ["check_data_parallel", "launch_fit", "setup_state", "wants_engine"]


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


def setup_state(engine: Engine, state: TrainState) -> TrainState:
    """A new :class:`TrainState` whose loss module and optimizer are wrapped for data-parallel
    training by ``engine`` (DDP averages the gradients between ``backward()`` and the
    optimizer's step, so there is no fused step). ``state`` itself is left as it was."""
    check_data_parallel(state)
    module, optimizer = engine.setup(state.loss_fn, state.optimizer)
    return replace(state, loss_fn=module, optimizer=optimizer, fused=None)


def _hand_over(result: FitResult, path: str) -> None:
    save_checkpoint(Path(path), {
        "history": result.history.to_dict("records"), "params": result.params,
        "settings": result.settings, "stopped_early": result.stopped_early,
    })


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
    fabric = make_fabric(par.devices, par.strategy, par.num_nodes, device)
    world = int(fabric.world_size)
    if config.batch_size % world:
        raise ValueError(
            f"batch_size={config.batch_size} (the global batch) must be divisible by the "
            f"number of processes ({world} = devices x num_nodes)"
        )
    worker_config = replace(config, device=None)
    out = launch(fabric, run, (model, guide, data, validation_data, worker_config),
                 hand_over=_hand_over, take_back=lambda path: load_checkpoint(Path(path)))
    if isinstance(out, FitResult):
        return out
    restore_params(out["params"], model, guide)
    return FitResult(
        model=model, guide=guide, history=pd.DataFrame.from_records(out["history"]),
        params=out["params"], settings=out["settings"], state=None,
        stopped_early=out["stopped_early"],
    )
