"""One recorded graph per run: the ragged last batch padded to the batch size with rows of
weight zero.

A recorded (and compiled) step is one graph per input shape, so the last batch of an epoch (N mod
B rows) would record and compile a second one. Instead every batch is passed with a per-row weight
vector: N / b for each of its b real rows and 0 for the rows that pad it to B (copies of real
rows, so that every term stays finite and 0 * term is exactly 0). :class:`RowWeights` multiplies
the scale of each site inside the data plate by that vector (the N / b that
:class:`~ppl_vae.programs.handlers.DataPlateScale` applies otherwise), so the objective and every
gradient are eager's on the ragged batch: the padded rows add exact zeros.

That holds only where the objective is a sum of per-row terms in the data plate. Padding is
refused (one reason, recorded in the run's settings; the last batch then records its own graph)
when the loss is not a row sum (:data:`ROW_SUM_LOSSES`), a plate subsamples the data itself, an
observed site lies outside the data plate, or the padded rows are seen at all: a check on the first
batch runs the padded step twice with different padding contents and the same random numbers and
requires the same loss and gradients (a batch norm, a statistic of the whole batch, free bits'
batch mean all fail it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import torch
from pyro.poutine.messenger import Messenger

from ppl_vae.programs.plates import frame_full_size, observed_outside
from ppl_vae.recording.compile import _close, _cuda_devices

__all__ = ["RowWeights", "PaddedProgram", "Padding", "ROW_SUM_LOSSES", "padding_refused",
           "padding_invisible"]

#: The recorded losses (:data:`ppl_vae.recording.jit.LOSSES`) that are sums of per-row terms
#: scaled by each site's scale. ``TraceEnum_ELBO`` contracts enumerated sites across plates,
#: where a per-row scale has not been checked: refused.
ROW_SUM_LOSSES = frozenset({"mc", "mean_field"})


class RowWeights(Messenger):
    """Scale every sample site inside the plate ``plate_name`` by ``weights`` (one per row,
    broadcast along the plate's dimension)."""

    def __init__(self, weights: torch.Tensor, plate_name: str):
        super().__init__()
        self.weights, self.plate_name = weights, plate_name

    def _process_message(self, msg):
        if msg["type"] != "sample":
            return
        for frame in msg["cond_indep_stack"]:
            if frame.name == self.plate_name:
                shape = (-1,) + (1,) * (-frame.dim - 1)
                msg["scale"] = self.weights.reshape(shape) * msg["scale"]
                return


class PaddedProgram(torch.nn.Module):
    """A Pyro program called as ``program(*batch, weights)``: its data-plate sites scaled by
    ``weights`` (:class:`RowWeights`) instead of N / batch size. A ``torch.nn.Module`` as
    :class:`~ppl_vae.programs.handlers.ScaledProgram`, so the ELBO module owns its parameters."""

    def __init__(self, program: Callable, plate_name: str):
        super().__init__()
        self.program = program
        self.plate_name = plate_name

    def forward(self, *args):
        *batch, weights = args
        with RowWeights(weights, self.plate_name):
            return self.program(*batch)


class Padding:
    """``padding(batch) -> (*padded batch, weights)``: a batch of ``b <= rows`` rows as ``rows``
    rows (copies of its own rows after the first ``b``) and the weights N / b, then 0.

    Parameters
    ----------
    rows : int
        The batch size B every step takes.
    num_data : int
        N, the rows of the data set the loss is scaled to.

    Attributes
    ----------
    padded_steps : int
        Steps taken on a padded batch so far.
    """

    def __init__(self, rows: int, num_data: int):
        self.rows, self.num_data = int(rows), int(num_data)
        self.padded_steps = 0
        self._weights: dict[tuple, torch.Tensor] = {}

    def weights(self, real: int, like: torch.Tensor) -> torch.Tensor:
        """The weight vector of a batch with ``real`` rows, in ``like``'s dtype and device."""
        key = (real, like.dtype, like.device)
        found = self._weights.get(key)
        if found is None:
            found = torch.zeros(self.rows, dtype=like.dtype, device=like.device)
            found[:real] = self.num_data / real
            self._weights[key] = found
        return found

    def __call__(self, batch: Sequence[torch.Tensor], like: torch.Tensor) -> tuple:
        if int(batch[0].shape[0]) < self.rows:
            self.padded_steps += 1
        return self.pad(batch, like)

    def pad(self, batch: Sequence[torch.Tensor], like: torch.Tensor) -> tuple:
        """:meth:`__call__` without counting the step."""
        real = int(batch[0].shape[0])
        if real > self.rows:
            raise ValueError(f"a batch of {real} rows is larger than the batch size {self.rows}")
        if real < self.rows:
            index = torch.arange(self.rows, device=batch[0].device) % real
            batch = [t.index_select(0, index.to(t.device)) for t in batch]
        return (*batch, self.weights(real, like))


def padding_refused(loss_name: str | None, model_trace, guide_trace, data_plate: str,
                    rows: int) -> str | None:
    """Why the ragged last batch cannot be padded for these programs (``None``: it can, subject
    to :func:`padding_invisible`). The traces are of both programs on a batch of ``rows`` rows."""
    if loss_name not in ROW_SUM_LOSSES:
        return "the estimator's loss is not a checked sum over rows"
    outside = observed_outside(model_trace, data_plate)
    if outside:
        return f"observed site(s) {outside} lie outside the data plate {data_plate!r}"
    for trace in (model_trace, guide_trace):
        for msg in trace.nodes.values():
            if msg["type"] != "sample":
                continue
            for frame in msg["cond_indep_stack"]:
                subsampled = frame.full_size not in (None, -1, frame.size)
                if frame.name == data_plate and (subsampled or frame_full_size(frame, msg) != rows):
                    return f"the plate {data_plate!r} subsamples the data itself"
    return None


def padding_invisible(loss_fn: Callable, batch: Sequence[torch.Tensor], params: list,
                      padding: Padding, like: torch.Tensor) -> str | None:
    """Why the padded rows change the step (``None``: they do not): the padded loss and its
    gradients, the same random numbers, with two different contents of the padding rows."""
    real = int(batch[0].shape[0]) - 1 if padding.rows == int(batch[0].shape[0]) else None
    if real is None or real < 2:
        return None  # nothing to compare on: the first padded batch is the check's own
    cut = [t[:real] for t in batch]
    outputs = []
    for shift in (0, 1):
        padded = list(padding.pad(cut, like))
        if shift:  # other rows as padding: the last row of the cut instead of its first
            padded[:-1] = [torch.cat([t[:real], t[real - 1:real].expand_as(t[real:])])
                           for t in padded[:-1]]
        try:
            with torch.random.fork_rng(devices=_cuda_devices(padded)), \
                    pyro.validation_enabled(False):
                loss = loss_fn(*padded)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
        except Exception as error:  # noqa: BLE001 - the programs refuse a padded batch
            return f"the programs failed on a padded batch ({type(error).__name__}: {error})"
        outputs.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = outputs
    if not _close(loss_b, loss_a):
        return "the padding rows change the loss (a statistic of the whole batch)"
    for a, b in zip(grads_a, grads_b, strict=True):
        if (a is None) != (b is None) or (a is not None and not _close(b, a)):
            return "the padding rows change a gradient (a statistic of the whole batch)"
    return None


def pad_programs(elbo, model_trace, guide_trace, scaled: tuple, batch: Sequence[torch.Tensor],
                 params: list, *, num_data: int, batch_size: int | None,
                 data_plate: str, pad: bool | None = None
                 ) -> tuple[tuple, Padding | None, str | None]:
    """The programs a recorded step trains with ``batch_size``-row batches: ``((model, guide),
    padding, note)``. ``scaled``: the :class:`~ppl_vae.programs.handlers.ScaledProgram` pair,
    returned with ``padding=None`` where no padding is needed or it is refused (``note`` says
    why); else :class:`PaddedProgram` versions of the programs they scale and a :class:`Padding`.
    ``pad``: ``None`` pads where the step is compiled at once (``jit="compile"``), ``True``
    wherever it can, ``False`` never.
    """
    from ppl_vae.recording.jit import LOSSES, TracedELBO

    if not isinstance(elbo, TracedELBO):
        return scaled, None, None
    if pad is False:
        return scaled, None, "not padded (pad=False)"
    if pad is None and elbo.mode != "compile":
        # jit="auto" keeps eager's sample path: unpadded batches draw exactly eager's random
        # numbers (a padded one draws for its padding rows too, which shifts every later draw:
        # same objective, another sample path). Its ragged last batch replays a second
        # recording, never compiled (one background compile per run), which costs milliseconds.
        return scaled, None, "not needed: the ragged last batch replays as recorded"
    if batch_size is None or batch_size >= num_data or num_data % batch_size == 0:
        return scaled, None, "not needed: every batch has the same rows"
    loss_name = next((k for k, f in LOSSES.items() if f is elbo.loss_function), None)
    rows = int(batch[0].shape[0])
    reason = "the first batch is not a full one" if rows != batch_size else padding_refused(
        loss_name, model_trace, guide_trace, data_plate, rows)
    if reason is None:
        padded = tuple(PaddedProgram(s.program, data_plate) for s in scaled)
        padding = Padding(batch_size, num_data)
        # Eagerly (the inner ELBO): a check, not a step to record.
        reason = padding_invisible(elbo.inner(*padded), batch, params, padding, params[0])
        if reason is None:
            return padded, padding, f"the last batch padded to {batch_size} rows"
    return scaled, None, f"not padded: {reason}; the last batch records a graph of its own"
