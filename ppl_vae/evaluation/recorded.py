"""A long per-point pass through one recorded, compiled graph of the guide and the model.

A pass over N points draws and scores one chunk at a time (:func:`~ppl_vae.evaluation.chunks.
chunk_draws`): K draws of the guide, the model on them, the log-densities. At 60,000 784-dim
rows that is about 1,100 chunks of the same shape, each of them Pyro's effect handlers, torch's
distributions and one unfused kernel per operation (the decoder's bias add, its activation, the
likelihood's ``softplus``, its sum). :class:`ChunkDrawer` runs the whole chunk as one graph:

1. the first chunk runs eagerly, timed;
2. where the rest of the pass is long enough for a compile to pay back (:func:`worth_recording`),
   :class:`~ppl_vae.recording.compile.TraceOnce` records the chunk's :func:`~ppl_vae.evaluation.
   pointwise.draw` as a forward graph of its tensors, with the guards of the training step (the
   programs' Python values, host reads, impure calls: any of them keeps the pass eager), and
   checks its first two replays against the eager pass on the same random numbers, every output;
3. Inductor compiles the graph in a worker process (:mod:`ppl_vae.recording.background`) while
   the chunks replay the recorded graph, on a core the pass leaves free; once it is ready it is
   checked against the recorded graph on a chunk and switched to, if enough of the pass is left
   to repay the switch. Where the pass's processes and threads hold every core (``--devices``
   as many as cores, or torch's default of one thread per core), a worker beside them would
   only slow them down: the pass waits for the compile instead, where that pays back, and
   otherwise stays eager.

The random numbers are the eager pass's: each chunk is seeded as before, and the recorded and
compiled graphs draw from torch's generator in the same order (Inductor's ``fallback_random``),
so a point's draws, k-hat and weights are the eager ones up to rounding, whichever path computed
them. A chunk of another shape (the ragged last one) runs eagerly: one graph per pass.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from ppl_vae.evaluation import fastpath
from ppl_vae.evaluation.chunks import PointPlan, chunk_draws
from ppl_vae.evaluation.pointwise import Draws, draw
from ppl_vae.programs.random import chunk_seed, seeded
from ppl_vae.recording.background import SWITCH_COST_S
from ppl_vae.recording.compile import TraceOnce, background_after
from ppl_vae.recording.inductor import inductor_unavailable

__all__ = ["ChunkDrawer", "spare_core", "worth_recording", "PASS_SAVED_SHARE",
           "COMPILE_GUESS_S"]

#: Share of an eager chunk's time the compiled graph saves, at least (measured on the 784-dim
#: VAE, 200 draws x 53 points per chunk, one thread: 95 ms eager, 65-77 ms compiled).
PASS_SAVED_SHARE = 0.2
#: Seconds a cold background compile of a chunk's graph takes, at most as measured (7-10 s on
#: the 784-dim VAE beside a busy core); a warm one loads from the cache in about 3 s.
COMPILE_GUESS_S = 15.0
#: Eager chunks' worth of time the recording and its two checks cost (an eager run, the
#: recording run, two checked replays with eager beside them).
RECORDING_CHUNKS = 5


def worth_recording(chunk_seconds: float, chunks_left: int, *, waits: bool = False) -> bool:
    """Whether recording and compiling the pass pays back: the chunks left after the compile
    (:data:`COMPILE_GUESS_S`, during which they replay at eager speed beside it, or, with
    ``waits``, the pass waits for it) save :data:`PASS_SAVED_SHARE` of their time, more than
    the switch and the recording cost."""
    left = chunk_seconds * chunks_left
    cost = SWITCH_COST_S + RECORDING_CHUNKS * chunk_seconds
    if waits:
        return left * PASS_SAVED_SHARE > COMPILE_GUESS_S + cost
    return (left - COMPILE_GUESS_S) * PASS_SAVED_SHARE > cost


def spare_core(processes: int = 1) -> bool:
    """Whether this machine has a core that ``processes`` processes of torch's current thread
    count leave free (for a background compile)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return cores > processes * torch.get_num_threads()


@dataclass(frozen=True)
class _Layout:
    """The Python side of a chunk's :class:`Draws` (names, dimensions, scales): what a recorded
    graph, which returns tensors only, does not return."""

    latents: tuple
    observed: tuple
    lik_sites: tuple
    rest: dict

    @classmethod
    def of(cls, d: Draws) -> _Layout:
        return cls(tuple(d.latents), tuple(d.observed), tuple(d.log_lik_sites),
                   dict(local_sites=d.local_sites, global_sites=d.global_sites,
                        data_dims=d.data_dims, observed_dims=d.observed_dims, rank=d.rank,
                        scales=d.scales))

    def unflatten(self, flat) -> Draws:
        flat = list(flat)
        a, b = len(self.latents), len(self.latents) + len(self.observed)
        latents = dict(zip(self.latents, flat[:a], strict=True))
        observed = dict(zip(self.observed, flat[a:b], strict=True))
        log_lik, log_prior, log_q, prior_g, q_g = flat[b:b + 5]
        sites = dict(zip(self.lik_sites, flat[b + 5:], strict=True))
        return Draws(latents=latents, observed=observed, log_lik=log_lik, log_prior=log_prior,
                     log_q=log_q, log_prior_global=prior_g, log_q_global=q_g,
                     log_lik_sites=sites, **self.rest)


def _flatten(d: Draws) -> tuple:
    return (*d.latents.values(), *d.observed.values(), d.log_lik, d.log_prior, d.log_q,
            d.log_prior_global, d.log_q_global, *d.log_lik_sites.values())


class ChunkDrawer:
    """``chunk_draws(plan, model, guide, tensors, start, ...)`` for the chunks of one pass, the
    long ones through a recorded and compiled graph (see the module's notes).

    Parameters
    ----------
    plan : PointPlan
    model, guide : callable
    tensors : sequence of tensors
        All rows.
    num_draws, seed, globals_, key
        As :func:`~ppl_vae.evaluation.chunks.chunk_draws`.
    num_chunks : int
        Chunks of the pass (this process draws its share: to decide whether recording pays).
    engine : ppl_vae.parallel.engine.Engine, optional
        The processes sharing the pass's chunks (``--devices``), also to tell whether a core
        is free for the compile.

    Attributes
    ----------
    recorder : TraceOnce or None
        The chunk's recorded graph, once the pass has decided to record.
    note : str or None
        Why the pass stayed eager after deciding to record (a guard, a check, the compiler).
    """

    def __init__(self, plan: PointPlan, model, guide, tensors, *, num_draws: int, seed,
                 globals_=None, key=0, num_chunks: int, engine=None):
        self.plan, self.model, self.guide, self.tensors = plan, model, guide, tensors
        self.num_draws, self.seed, self.globals_, self.key = num_draws, seed, globals_, key
        processes = 1 if engine is None else int(engine.world_size)
        self.chunks_left = -(-int(num_chunks) // processes)  # map_chunks' share, rounded up
        self.recorder: TraceOnce | None = None
        self._layout: _Layout | None = None
        self._decided = not _can_compile(plan, tensors)
        self._waits = not self._decided and not spare_core(processes)
        self._seconds: list[float] = []
        self._shapes: list | None = None  # the recorded chunks' tensor shapes

    @property
    def note(self) -> str | None:
        return None if self.recorder is None else self.recorder.eager_reason

    @property
    def path(self) -> str:
        """How the pass's chunks ran: ``eager``, ``recorded`` (with why no compiled graph took
        over, where one was tried), ``compiled`` (from some chunk on), or ``eager: <why the
        recording was not used>``."""
        r = self.recorder
        if r is None or (r.num_traces == 0 and r.eager_reason is None):
            return "eager"  # not decided to record, or no full chunk came after
        if r.eager_reason is not None:
            return f"eager: {r.eager_reason}"
        if r.num_compiled:
            return "compiled"
        return "recorded" + (f" ({r.background_note})" if r.background_note else "")

    def __call__(self, start: int) -> Draws:
        self.chunks_left -= 1
        if self.recorder is None:
            t0 = time.perf_counter()
            d = chunk_draws(self.plan, self.model, self.guide, self.tensors, start,
                            num_draws=self.num_draws, seed=self.seed, globals_=self.globals_,
                            key=self.key)
            self._decide(start, time.perf_counter() - t0)
            return d
        batch, subsample = self.plan.chunk(self.tensors, start)
        shapes = [tuple(t.shape) for t in (*batch, subsample) if t is not None]
        if self._shapes is None:
            self._shapes = shapes
        if shapes != self._shapes:  # the ragged last chunk: eager (one graph per pass)
            return chunk_draws(self.plan, self.model, self.guide, self.tensors, start,
                               num_draws=self.num_draws, seed=self.seed,
                               globals_=self.globals_, key=self.key)
        t0 = time.perf_counter()
        with seeded(chunk_seed(self.seed, "points", self.key, start)), torch.no_grad():
            flat = self.recorder(*batch, subsample)
        if self._waits and self.recorder.compile_pending:
            self.recorder.wait_for_compiles()  # no core to compile beside: the next switches
        self._seconds.append(time.perf_counter() - t0)
        return self._layout.unflatten(flat)

    def _decide(self, start: int, seconds: float) -> None:
        """After the first full chunk: record the rest where that pays back."""
        if self._decided or self.plan.stop(start) - start != self.plan.chunk_size:
            return
        self._decided = True
        if not worth_recording(seconds, self.chunks_left, waits=self._waits):
            return
        self._seconds = [seconds]
        self.recorder = TraceOnce(self._flat, (self.model, self.guide), fallback=self._flat,
                                  background=True, start_after=0, warn=False)
        self.recorder.time_left = self._time_left

    def _time_left(self) -> float:
        recent = self._seconds[-8:]
        return sum(recent) / len(recent) * max(self.chunks_left, 0)

    def _flat(self, *args) -> tuple:
        """The chunk's draws as a flat tuple of tensors (``args``: the batch, the subsample)."""
        *batch, subsample = args
        d = draw(self.model, self.guide, tuple(batch), num_samples=self.num_draws,
                 subsample=subsample, globals_=self.globals_, num_points=self.plan.num_points,
                 **self.plan.draw_options())
        self._layout = _Layout.of(d)
        return _flatten(d)


def _can_compile(plan: PointPlan, tensors) -> bool:
    """Whether a pass could end compiled: draws in one vectorized pass (programs drawn one
    draw at a time would record K copies of themselves), the fast path and background compiles
    on, a compiler for the data's device."""
    if not plan.vectorized or not fastpath.enabled() or background_after(0) == float("inf"):
        return False
    device = tensors[0].device
    return device.type != "cpu" or inductor_unavailable() is None
