"""Training as state-in, state-out: ``init_state`` builds a :class:`TrainState`, ``update`` takes
one step, and ``fit`` is a thin loop over epochs around them (after numpyro's ``infer/svi.py``).

The loss is Pyro's ELBO as a ``torch.nn.Module`` (``elbo(model, guide)``), minimised by a plain
torch optimizer over every parameter the programs own. Validation of the programs and the data
happens once, before the first step; the step itself never synchronises with the host.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import pyro
import torch
from pyro import poutine

from ppl_vae.programs.checks import check_sites_agree, trace_pair
from ppl_vae.programs.handlers import ScaledProgram
from ppl_vae.programs.plates import choose_data_plate, observed_outside, program_plates
from ppl_vae.programs.util import trainable_parameters
from ppl_vae.recording.compile import TraceOnce, background_after
from ppl_vae.recording.fused import FusedAdamStep, fusable
from ppl_vae.recording.jit import TracedELBO
from ppl_vae.recording.padding import Padding, pad_programs
from ppl_vae.train.optimizers import OPTIMIZERS, make_optimizer  # noqa: F401 (moved there)

__all__ = ["TrainState", "init_state", "update", "collect_params", "make_optimizer"]

@dataclass(frozen=True)
class TrainState:
    """Everything a training step needs (frozen: a step returns a new state).

    What a step changes in place, and only this: the values of the tensors in ``params`` (the
    optimizer's step, through ``optimizer`` or ``fused``), the optimizer's own state (moments,
    step counts, learning rate), and the ``.grad`` of the parameters. The state object itself is
    never changed: ``update`` returns a new one with ``step`` advanced, so a state kept from
    before a step still says how many steps had been taken then (but not the parameter values,
    which are shared: copy them with ``capture_params`` to keep them).

    Attributes
    ----------
    loss_fn : torch.nn.Module
        ``elbo(scaled_model, scaled_guide)``; ``loss_fn(*batch)`` is the negative ELBO of the
        whole data set estimated from the batch (a 0-dim tensor).
    optimizer : torch.optim.Optimizer
    params : list of torch.Tensor
        The leaf tensors being trained (unconstrained).
    param_names : list of str
        Names of the ``pyro.param`` sites among them (saved in checkpoints).
    step : int
        Number of steps taken.
    data_plate : str
        The plate whose sites are scaled by N / batch size (resolved by ``init_state``).
    fused : FusedAdamStep or None
        With ``jit="compile"`` and Adam on the CPU, the step with the optimizer compiled into
        it (:mod:`ppl_vae.recording.fused`); ``None``: loss, ``backward()`` and ``optimizer.step()``.
    padding : Padding or None
        With a recorded step and a ragged last batch, pads every batch to the batch size with
        rows of weight zero (:mod:`ppl_vae.recording.padding`): one graph per run.
    padding_note : str or None
        Whether the last batch is padded, or why not.
    recorder : TraceOnce or None
        The recorded step of ``loss_fn`` (``jit != False``): its graphs, compiles and notes
        (:func:`ppl_vae.recording.summary.step_summary`).
    """

    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    params: list[torch.Tensor]
    param_names: list[str] = field(default_factory=list)
    step: int = 0
    data_plate: str = "data"
    fused: FusedAdamStep | None = None
    padding: Padding | None = None
    padding_note: str | None = None
    recorder: TraceOnce | None = None


def collect_params(model, guide, elbo: pyro.infer.ELBO, batch: Sequence[torch.Tensor]):
    """Run one loss evaluation and return (leaf tensors, pyro.param names) it touches.

    Includes ``pyro.param`` / ``pyro.module`` sites, ``PyroModule`` parameters, and the
    parameters of a ``torch.nn.Module`` model or guide even when it never called ``pyro.module``
    (see :func:`~ppl_vae.programs.util.trainable_parameters`).
    """
    with poutine.trace(param_only=True) as capture:
        elbo.differentiable_loss(model, guide, *batch)
    return trainable_parameters((model, guide), capture.trace)


def _move_pyro_params(names, device, dtype) -> None:
    """Put ``pyro.param`` leaves on the data's device/dtype (they are created where the user's
    initial value lived, often the CPU in float32)."""
    with torch.no_grad():
        for name in names:
            leaf = pyro.param(name).unconstrained()
            want_dtype = dtype if leaf.is_floating_point() else leaf.dtype
            if leaf.device != device or leaf.dtype != want_dtype:
                leaf.data = leaf.data.to(device=device, dtype=want_dtype)


def init_state(
    model: Callable,
    guide: Callable,
    elbo: pyro.infer.ELBO,
    batch: Sequence[torch.Tensor],
    *,
    num_data: int,
    data_plate: str | None = None,
    optimizer="adam",
    lr: float = 1e-3,
    batch_size: int | None = None,
    pad: bool | None = None,
) -> TrainState:
    """Check the programs on ``batch``, create their parameters, and build the optimizer.

    ``data_plate`` names the plate over data points; None finds it (the one plate whose size is
    the batch's, see :func:`~ppl_vae.programs.checks.resolve_data_plate`). The name used is
    ``state.data_plate``. ``batch_size``: the rows of the batches training takes. ``pad``:
    whether a recorded step (``jit != False``) pads the ragged last batch to ``batch_size`` rows
    of weight zero (``state.padding``) so that one graph serves the run; ``None``: where the step
    is compiled at once (``jit="compile"``). The default ``jit="auto"`` does not pad: a padded
    batch draws for its padding rows too, another sample path than eager's.

    Raises
    ------
    ValueError
        If model or guide fail on the batch, their latent sites disagree, the data plate cannot
        be resolved, or there is nothing to train.
    """
    model_trace, guide_trace = trace_pair(model, guide, batch)
    check_sites_agree(model_trace, guide_trace)
    rows = batch[0].shape[0]
    data_plate = choose_data_plate(program_plates(model_trace, guide_trace), rows, data_plate,
                                   num_data)
    if rows != num_data and (outside := observed_outside(model_trace, data_plate)):
        warnings.warn(
            f"observed site(s) {outside} lie outside the data plate {data_plate!r}: they are not "
            f"scaled by N / batch size and count once per step, as global terms; if they hold "
            f"one value per data point, put them inside pyro.plate({data_plate!r}, ...)",
            stacklevel=3,
        )
    scaled_model = ScaledProgram(model, num_data, data_plate)
    scaled_guide = ScaledProgram(guide, num_data, data_plate)
    params, names = collect_params(scaled_model, scaled_guide, elbo, batch)
    ref = batch[0]
    _move_pyro_params(names, ref.device, ref.dtype if ref.is_floating_point() else None)
    if not params:
        raise ValueError(
            "nothing to train: the model and guide own no parameters (use pyro.param, "
            "pyro.module, a PyroModule, or pass a torch.nn.Module as model or guide)"
        )
    (scaled_model, scaled_guide), padding, note = pad_programs(
        elbo, model_trace, guide_trace, (scaled_model, scaled_guide), batch, params,
        num_data=num_data, batch_size=batch_size, data_plate=data_plate, pad=pad)
    loss_fn = elbo(scaled_model, scaled_guide)
    optim = make_optimizer(optimizer, params, lr)
    recorder = elbo.recorder(scaled_model, scaled_guide) if isinstance(elbo, TracedELBO) else None
    fused = None
    # jit="compile": Adam fused into the compiled step at once. jit="auto": the same step built
    # in a worker process while the recorded step trains, switched to once its first step
    # agrees (ppl_vae.recording.background); it steps through the recorder that validation uses
    # (one recording, one fallback to eager), whose own background compile it replaces. Other
    # optimizers: the recorded loss-and-gradient graph alone compiles in the background.
    if recorder is not None and fusable(optim, params) is None:
        if elbo.mode == "compile":
            fused = FusedAdamStep(elbo.step_recorder(scaled_model, scaled_guide), optim)
        elif recorder.background and not math.isinf(background_after()):
            recorder.background = False
            fused = FusedAdamStep(recorder, optim, background=True)
    return TrainState(loss_fn, optim, params, names, data_plate=data_plate, fused=fused,
                      padding=padding, padding_note=note, recorder=recorder)


def update(state: TrainState, batch: Sequence[torch.Tensor]) -> tuple[TrainState, torch.Tensor]:
    """One gradient step: ``(new_state, loss)``, ``loss`` a 0-dim tensor (no host sync).

    ``state`` itself is left as it was; the one side effect is the optimizer's step on the
    parameters (and on its own moments), see :class:`TrainState`.
    """
    if state.padding is not None:
        batch = state.padding(batch, state.params[0])
    if state.fused is not None:
        loss = state.fused(batch)
        return replace(state, step=state.step + 1), loss
    state.optimizer.zero_grad(set_to_none=True)
    loss = state.loss_fn(*batch)
    loss.backward()
    state.optimizer.step()
    return replace(state, step=state.step + 1), loss.detach()


def mean_loss(loss_fn: torch.nn.Module, batches) -> torch.Tensor:
    """Weighted mean of ``loss_fn`` over batches (each already scaled to the whole data set)."""
    total, count = None, 0
    for batch in batches:
        n = batch[0].shape[0]
        # Not under no_grad: TraceEnum_ELBO's differentiable_loss raises when its result does not
        # require grad. Each batch's graph is dropped at once by detach().
        value = loss_fn(*batch).detach() * n
        total = value if total is None else total + value
        count += n
    return total / count
