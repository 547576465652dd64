"""Trace a Pyro loss once per input signature and replay it as one flat graph of tensor ops.

A Pyro step spends most of its Python time in effect handlers, trace bookkeeping and
distribution objects, not in tensor arithmetic. :class:`TraceOnce` runs the loss *and its
gradient* once under ``torch.fx``'s ``make_fx`` (tracing at the ATen level, so the backward pass
is recorded too), drops dead code, and afterwards calls the recorded graph directly: no handlers,
no ``Trace`` objects, no autograd graph to build. :class:`_Replay` hands the recorded gradients
to autograd, so ``loss.backward()`` and any torch optimizer work unchanged. With
``backend="inductor"`` the recorded graph (forward *and* backward) is compiled by
``torch.compile`` into fused C++/OpenMP loops on the CPU (Triton kernels and CUDA graphs on a GPU).

Why not the alternatives: ``torch.jit.trace`` (which Pyro's ``JitTrace*_ELBO`` use) is
deprecated in current torch, and Pyro 1.9.2's ``JitTraceMeanField_ELBO`` re-traces on every
step and leaks memory. ``torch.compile`` of a Pyro program itself breaks the graph at every
effect handler; compiling the recorded graph sees one flat program.

Contract (the same as Pyro's JIT ELBOs): the programs must have a static structure for a given
input signature; no Python control flow on tensor values, no ``.item()`` that changes what is
computed. Two checks guard it: the first call of every signature compares the recorded loss and
gradients with an eager evaluation on the same random numbers, and the second (the first on a
batch other than the recorded one) compares the loss again. A mismatch raises ``ValueError``,
or, given a ``fallback``, warns once (:class:`JitFallbackWarning`) and runs the fallback from
then on; with a fallback, a program that reads a tensor's value on the host is not recorded.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence

import pyro
import torch
from pyro import poutine

from ppl_vae.programs.util import module_parameters
from ppl_vae.recording.background import compile_in_background, switch_pays
from ppl_vae.recording.graph_rewrites import fold_constants, merge_duplicates, simplify
from ppl_vae.recording.guards import Watch, python_rng_kept
from ppl_vae.recording.inductor import _compiled, _first_line, inductor_unavailable
from ppl_vae.recording.private import record
from ppl_vae.recording.value_reads import ValueReads

__all__ = ["TraceOnce", "JitFallbackWarning", "simplify", "inductor_unavailable"]


class JitFallbackWarning(UserWarning):
    """``jit="auto"`` could not record a step (or the recording disagreed with eager) and trains
    that model and guide eagerly instead."""


def _signature(value) -> tuple:
    if isinstance(value, torch.Tensor):
        return ("T", tuple(value.shape), value.dtype, value.device, value.requires_grad)
    return ("V", type(value), repr(value))


class _Replay(torch.autograd.Function):
    """Autograd node whose forward runs a recorded loss-and-gradient graph.

    The gradients are already computed in the forward; backward only scales them by the
    incoming gradient (1 for ``loss.backward()``).
    """

    @staticmethod
    def forward(ctx, graph, num_leaves, *inputs):
        outputs = graph(list(inputs[:num_leaves]), list(inputs[num_leaves:]))
        ctx.grads = outputs[1:]
        ctx.num_args = len(inputs) - num_leaves
        return outputs[0]

    @staticmethod
    def backward(ctx, grad_loss):
        grads, ctx.grads = ctx.grads, None
        # loss.backward() seeds 1. Skipping the product saves a full pass (and, on the CPU, a
        # fresh allocation per gradient); reading the seed costs nothing on the CPU, where it
        # lives, while on an accelerator the product is cheaper than a synchronisation.
        if grad_loss.device.type == "cpu" and bool(grad_loss == 1):
            return (None, None, *grads, *([None] * ctx.num_args))
        scaled = [None if g is None else g * grad_loss for g in grads]
        return (None, None, *scaled, *([None] * ctx.num_args))


class _Entry:
    """One recorded graph, the parameter names it reads, and how often it has been replayed
    (the first two calls are checked against eager)."""

    def __init__(self, graph, names, module_params, with_grad, compiled, guards=None,
                 expected=None, single=True):
        self.graph = graph
        self.single = single  # fn returns one tensor (else a tuple of them, without gradients)
        self.guards, self.expected = guards, expected  # Python values read, as recorded
        self.names = names
        self.module_params = module_params
        self.with_grad = with_grad
        self.compiled = compiled
        self.calls = 0
        self.job = None  # a background compile under way (ppl_vae.recording.background)
        self.background_done = False  # tried: compiled, refused or failed


class TraceOnce:
    """Record ``fn(*args)`` (a 0-dim loss built from Pyro programs) once per input signature.

    Parameters
    ----------
    fn : callable
        ``fn(*args) -> torch.Tensor`` (0-dim), or, called without gradients, a tuple of tensors
        (a forward pass: the diagnostics' per-chunk draws); it may read ``pyro.param`` sites, ``PyroModule``
        and ``torch.nn.Module`` parameters, and draw random numbers (recorded as ops, so every
        replay draws fresh ones from torch's generator).
    programs : sequence of callables
        The model and guide ``fn`` runs. Parameters of those that are ``torch.nn.Module``s are
        graph inputs even when they never pass through the param store.
    max_entries : int
        At most this many graphs are kept (least recently used dropped), so a stream of new
        shapes cannot grow memory without bound.
    backend : str, optional
        ``torch.compile`` backend for the recorded graph (``"inductor"``: C++/OpenMP on the CPU,
        Triton plus CUDA graphs on a GPU); ``None`` replays the graph as recorded.
    background : bool
        Compile each graph with Inductor in a worker thread once its checks passed, replaying
        the recorded graph meanwhile, and switch when the compiled one is ready and agrees with
        it on a step (:mod:`ppl_vae.recording.background`); ``jit="auto"``'s default.
    start_after : int, optional
        Replays before the background compile starts (default :data:`BACKGROUND_AFTER`, or
        ``PPL_VAE_BACKGROUND_COMPILE``'s number; its ``off`` wins over this).
    warn : bool
        With a ``fallback``: warn when falling back (training); ``False`` only keeps the
        reason in ``eager_reason`` (an optimisation of a diagnostics pass that did not apply).
    fallback : callable, optional
        The eager loss, ``fallback(*args)``. When given, a step that cannot be recorded, reads
        a tensor value on the host, or disagrees with eager makes this recorder warn once
        (:class:`JitFallbackWarning`, naming why) and call ``fallback`` from then on. Without
        it the same cases raise ``ValueError`` (reads are allowed and left to the checks).

    Attributes
    ----------
    num_traces : int
        Graphs recorded so far.
    eager_reason : str or None
        Why this recorder runs ``fallback`` instead of a graph (``None`` while it records).
    compile_seconds : float
        Wall time of each signature's first call: recording, compiling (``torch.compile`` runs
        lazily, on that call) and the checks against eager.
    num_compiled : int
        Graphs compiled so far (with ``backend``, or in the background and switched to).
    background_seconds : float
        Wall time of the background compiles (spent beside training, not in it).
    background_note : str or None
        Why a background compile was not used (no compiler, a failure, a mismatch).

    Notes
    -----
    Calls made while a Pyro effect handler is active (``poutine.trace``, ``poutine.condition``,
    ...) run ``fn`` eagerly: a recorded graph would bypass the handler.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], programs: Sequence, *,
                 max_entries: int = 8, backend: str | None = None,
                 fallback: Callable[..., torch.Tensor] | None = None, max_rerecords: int = 8,
                 background: bool = False, start_after: int | None = None, warn: bool = True):
        self.fn = fn
        self.programs = list(programs)
        self.max_entries = int(max_entries)
        self.backend = backend
        self.fallback = fallback
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self.num_traces = 0
        self.eager_reason: str | None = None
        self.compile_seconds = 0.0
        self.max_rerecords = int(max_rerecords)
        self.rerecords = 0
        self.background = bool(background) and backend is None
        self.start_after = start_after
        self.warn = bool(warn)
        self.num_compiled = 0
        self.background_seconds = 0.0
        self.background_note: str | None = None
        self.background_started = 0  # background compiles started (MAX_BACKGROUND per run)
        # Seconds of training left (None: unknown), set by the training loop: a compile that
        # finishes too late to pay back is not switched to (background.switch_pays).
        self.time_left: Callable[[], float | None] | None = None

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        if self.eager_reason is not None:
            return self.fallback(*args, **kwargs)
        if poutine.runtime.am_i_wrapped() or any(
            isinstance(v, torch.Tensor) for v in kwargs.values()
        ):
            return self.fn(*args, **kwargs)
        with_grad = torch.is_grad_enabled()
        key = (with_grad, tuple(_signature(a) for a in args),
               tuple((k, _signature(v)) for k, v in sorted(kwargs.items())))
        entry = self._entries.get(key)
        if entry is None:
            t0 = time.perf_counter()
            entry = self._record(args, kwargs, with_grad)
            self.compile_seconds += time.perf_counter() - t0
            if isinstance(entry, str):
                return self._give_up(entry, args, kwargs)
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
            changed = entry.guards.changed(entry.expected) if entry.guards else None
            if changed is not None:
                return self._record_again(key, changed, args, kwargs)
        leaves = _leaves(entry.names, entry.module_params)
        if leaves is None:  # a parameter was deleted or renamed: record again
            del self._entries[key]
            return self(*args, **kwargs)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        entry.calls += 1
        if entry.calls > 2:
            if self.background and not entry.background_done and (
                    entry.job is not None or (entry.calls > background_after(self.start_after)
                                              and self.background_started < MAX_BACKGROUND)):
                switched = self._switch(entry, leaves, tensors, args)
                if switched is not None:
                    return switched
            return self._replay(entry, leaves, tensors)
        t0 = time.perf_counter()
        loss = self._checked_replay(entry, leaves, args, kwargs, tensors)
        if entry.calls == 1:  # where torch.compile compiles (lazily, on the first call)
            self.compile_seconds += time.perf_counter() - t0
        return self._give_up(loss, args, kwargs) if isinstance(loss, str) else loss

    @property
    def compile_pending(self) -> bool:
        """Whether a background compile is still under way."""
        return any(entry.job is not None for entry in self._entries.values())

    def wait_for_compiles(self, timeout: float | None = None) -> bool:
        """Block until the background compiles under way finished (benchmarks and tests:
        training never waits); whether they all did within ``timeout`` seconds each. The next
        step checks and switches to what finished."""
        return all(entry.job.wait(timeout) for entry in list(self._entries.values())
                   if entry.job is not None)

    def recorded(self, *args) -> tuple[torch.fx.GraphModule, list[torch.Tensor]] | None:
        """The recorded loss-and-gradient graph for ``args`` and the leaves it takes, once both
        of its checked replays against eager have passed; ``None`` before that, for a signature
        not recorded yet, or when this recorder runs eagerly or compiles its graphs.

        The graph is called as ``graph(leaves, tensors)`` (``tensors``: the tensor arguments in
        order) and returns ``[loss, *grads]`` (``None`` for a leaf the loss does not reach).
        """
        if self.eager_reason is not None or self.backend is not None:
            return None
        key = (torch.is_grad_enabled(), tuple(_signature(a) for a in args), ())
        entry = self._entries.get(key)
        if entry is None or entry.calls < 2 or not entry.with_grad:
            return None
        if entry.guards and entry.guards.changed(entry.expected) is not None:
            return None  # the caller's unfused step records again
        leaves = _leaves(entry.names, entry.module_params)
        return None if leaves is None else (entry.graph, leaves)

    def _record_again(self, key, changed: str, args, kwargs) -> torch.Tensor:
        """A value the programs read changed since ``key`` was recorded: record it again, up to
        ``max_rerecords`` times (as torch.compile's recompile limit), then give up."""
        del self._entries[key]
        self.rerecords += 1
        if self.rerecords > self.max_rerecords:
            return self._give_up(
                f"{changed} changed again ({self.rerecords} recordings for changed Python values, "
                "a schedule the programs read); recording the step for every value costs more "
                "than it saves", args, kwargs)
        return self(*args, **kwargs)

    def _give_up(self, reason: str, args, kwargs) -> torch.Tensor:
        if self.fallback is None:
            raise ValueError(f"jit=True: {reason}; use jit=False for these programs")
        self.eager_reason = reason
        self._entries.clear()
        if self.warn:
            warnings.warn(f"jit='auto': {reason}; training these programs eagerly (jit=False)",
                          JitFallbackWarning, stacklevel=4)
        return self.fallback(*args, **kwargs)

    # -- recording -------------------------------------------------------------------------
    def _record(self, args, kwargs, with_grad: bool) -> _Entry | str:
        """The recorded entry, or (with a fallback) a one-line reason why it cannot be."""
        # One eager run (random state restored afterwards) creates lazily built parameters,
        # lets the ELBO guess max_plate_nesting, and names the param sites the graph reads.
        # Same grad mode as the call: some ELBOs (TraceEnum_ELBO) refuse a loss without grad.
        reads, watch = ValueReads(), Watch()
        with torch.random.fork_rng(devices=_cuda_devices(args)), _grad_mode(with_grad), \
                python_rng_kept():
            with poutine.trace(param_only=True) as capture, pyro.validation_enabled(False):
                with reads if self.fallback is not None else contextlib.nullcontext(), watch:
                    single = isinstance(self.fn(*args, **kwargs), torch.Tensor)
        if reads.sites:
            return (f"the programs read a tensor's value on the host ({reads.sites[0]}), so what "
                    "they compute may depend on the batch; a recording would freeze it")
        # The Python values they read, as they are now: a replay checks them first (guards).
        guards = watch.guards()
        expected = guards.snapshot()
        names = list(dict.fromkeys(capture.trace.nodes))
        # Torch modules' parameters are looked up once (walking the modules costs more than a
        # small model's step); load_state_dict and optimizers update them in place.
        module_params = list(module_parameters(*self.programs).values())
        leaves = _leaves(names, module_params)
        with_grad = with_grad and bool(leaves)  # nothing to differentiate: a forward graph
        if with_grad and not single:
            raise TypeError("TraceOnce: with gradients, fn must return one 0-dim loss tensor")
        tensor_positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

        def loss_and_grads(leaves, tensors):
            call_args = list(args)
            for i, t in zip(tensor_positions, tensors, strict=True):
                call_args[i] = t
            loss = self.fn(*call_args, **kwargs)
            if not with_grad:
                return (loss.detach(),) if single else tuple(t.detach() for t in loss)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            return (loss.detach(), *grads)

        tensors = [args[i] for i in tensor_positions]
        # Pyro's ELBOs read .item() for the *reported* loss value in places; that value is
        # not what the recorded graph returns (see ppl_vae.recording.jit), so data-dependent
        # reads are allowed while recording and the first replays are checked instead.
        try:
            with pyro.validation_enabled(False), _grad_mode(with_grad), torch.random.fork_rng(
                devices=_cuda_devices(args)
            ), python_rng_kept():
                graph = record(loss_and_grads, leaves, tensors)
        except Exception as error:  # noqa: BLE001 - the eager run above succeeded: a tracing limit
            if self.fallback is None:
                raise
            return f"torch.fx could not record the step ({type(error).__name__}: {_first_line(error)})"
        changed = guards.changed(expected)
        if changed is not None:  # the recording run changed it: the programs keep state
            watch.restore(guards, expected)  # as if the two trial runs had not happened
            return (f"the programs change {changed} each time they run (a counter or other "
                    "state they keep), which a replay of a recording would never change")
        if watch.impure is not None:
            return (f"the programs call {watch.impure}, whose values a recording would freeze "
                    "(draw random numbers with torch or pyro.sample)")
        graph.graph.eliminate_dead_code()
        fold_constants(graph, (leaves, tensors))
        # A rewrite can expose another (a dropped view, then two equal ops on its source).
        while simplify(graph.graph) + merge_duplicates(graph.graph):
            pass
        graph.graph.eliminate_dead_code()
        graph.recompile()
        compiled = self.backend is not None
        if compiled:
            graph = _compiled(graph, self.backend, tensors[0].device if tensors else None)
            self.num_compiled += 1
        self.num_traces += 1
        return _Entry(graph, names, module_params, with_grad, compiled, guards, expected, single)

    # -- background compile ----------------------------------------------------------------
    def _switch(self, entry: _Entry, leaves, tensors, args) -> torch.Tensor | None:
        """Start the entry's background compile, or, once it is ready, check it on this step and
        switch to it. The step's loss (the check's), or ``None``: replay as recorded."""
        if entry.job is None:
            job = compile_in_background(entry.graph, leaves, tensors,
                                        tensors[0].device if tensors else None)
            if isinstance(job, str):  # no compiler here: the recorded step, as it was
                entry.background_done = True
                self.background_note = job
            else:
                entry.job = job
                self.background_started += 1
            return None
        if not entry.job.ready():
            return None
        job, entry.job, entry.background_done = entry.job, None, True
        pays, note = switch_pays(self.time_left)
        if not pays:
            job.discard()
            self.background_seconds += job.seconds
            self.background_note = note
            return None
        job.finish()  # the compile again, here: a load from the cache the worker filled
        self.background_seconds += job.seconds
        if job.error is not None:
            self.background_note = f"the background compile failed ({job.error})"
            return None
        compiled = job.result
        self.compile_seconds += job.load_seconds

        def run(leaves, tensors):
            return list(compiled(*leaves, *tensors))

        # The first compiled step, checked against the recorded graph on the same inputs and
        # random numbers; the step's outputs are the compiled ones when they agree.
        with torch.no_grad():
            with torch.random.fork_rng(devices=_cuda_devices(args)):
                want = entry.graph(list(leaves), list(tensors))
            try:
                got = run(list(leaves), list(tensors))
            except Exception as error:  # noqa: BLE001 - the artifact does not run here
                self.background_note = f"the compiled step failed ({_first_line(error)})"
                got = None
        reason = None if got is None else _disagree(got, want, entry.with_grad)
        if reason is not None:
            self.background_note = f"the compiled step disagreed with the recorded one ({reason})"
        if got is None or reason is not None:
            got = want
        else:
            entry.graph, entry.compiled = run, True
            self.num_compiled += 1
        if not entry.with_grad:
            return _forward_result(entry, got)
        return _Replay.apply(lambda *_: got, len(leaves), *leaves, *tensors)

    # -- replay ----------------------------------------------------------------------------
    def _replay(self, entry: _Entry, leaves, tensors) -> torch.Tensor:
        if entry.with_grad:
            return _Replay.apply(entry.graph, len(leaves), *leaves, *tensors)
        return _forward_result(entry, entry.graph(leaves, tensors))

    def _checked_replay(self, entry: _Entry, leaves, args, kwargs, tensors):
        """Replay, checked against eager on the same random numbers: loss and gradients on the
        first call, the loss on the second. Returns the loss, or a reason for a mismatch."""
        first = entry.calls == 1
        with torch.random.fork_rng(devices=_cuda_devices(args)), _grad_mode(entry.with_grad):
            with pyro.validation_enabled(False):
                eager = self.fn(*args, **kwargs)
                eager_grads = (torch.autograd.grad(eager, leaves, allow_unused=True)
                               if first and entry.with_grad else None)
        if entry.single:
            eager = eager.detach()
        # fork_rng restored the generator: the replay draws the same numbers as the eager run.
        try:
            # Without autograd, as _Replay.forward calls it: the graph already holds the backward
            # pass, and torch.compile then builds one inference graph (not a training graph
            # with a backward of its own, then another one for the replays' grad mode).
            with torch.no_grad():
                outputs = entry.graph(list(leaves), list(tensors))
        except Exception as error:  # noqa: BLE001 - e.g. the compiler is missing or failed
            if self.fallback is None and not entry.compiled:
                raise
            what = f"torch.compile(backend={self.backend!r})" if entry.compiled else "the replay"
            reason = f"{what} failed ({type(error).__name__}: {_first_line(error)})"
            if self.fallback is None:
                raise RuntimeError(f"{reason}; use jit=True (not compiled) or jit=False") from error
            return reason
        where = "the recorded batch" if first else "a new batch of the same shape"
        if not entry.single:
            for i, (got, want) in enumerate(zip(outputs, eager, strict=True)):
                if not _close(got, want.detach()):
                    return (f"the recorded graph's output {i} (shape {tuple(want.shape)}) differs "
                            f"from the eager program's on {where}")
            return _forward_result(entry, outputs)
        if not _close(outputs[0], eager):
            return (f"the recorded graph gave a different loss than the eager program on {where} "
                    f"({float(outputs[0]):.6g} vs {float(eager):.6g}); the programs must have a "
                    "static structure (no Python branches on tensor values)")
        if eager_grads is not None:
            for i, (got, want) in enumerate(zip(outputs[1:], eager_grads, strict=True)):
                if (got is None) != (want is None) or (got is not None and not _close(got, want)):
                    return (f"the recorded gradient of parameter {i} (shape "
                            f"{tuple(leaves[i].shape)}) differs from eager's on {where}")
        if not entry.with_grad:
            return outputs[0]
        return _Replay.apply(lambda *_: outputs, len(leaves), *leaves, *tensors)


#: Replays of a graph before its background compile starts: a compile costs seconds and a
#: replayed step milliseconds, so a run shorter than this gains nothing from one.
BACKGROUND_AFTER = 50
#: Background compiles per step (per recorder, per fused step): one compiled graph per run. The
#: ragged last batch, or a graph recorded again after a guarded Python value changed, replays
#: as recorded (milliseconds) instead of compiling again (seconds of a core, each).
MAX_BACKGROUND = 1
#: ``PPL_VAE_BACKGROUND_COMPILE``: ``0``/``off`` switches ``jit="auto"``'s background compile off
#: (the recorded step only); a number of replays before the compile starts changes
#: :data:`BACKGROUND_AFTER`; unset or ``on``: on, after :data:`BACKGROUND_AFTER` replays.
BACKGROUND_ENV = "PPL_VAE_BACKGROUND_COMPILE"


def background_after(default: int | None = None) -> float:
    """Replays before a background compile starts (infinite when switched off): the
    environment's number, else ``default``, else :data:`BACKGROUND_AFTER`."""
    value = os.environ.get(BACKGROUND_ENV, "").strip().lower()
    if value in ("0", "off", "false", "no"):
        return math.inf
    if value.isdigit():
        return int(value)
    return BACKGROUND_AFTER if default is None else default


def _forward_result(entry: _Entry, outputs):
    """A forward graph's outputs as ``fn`` returns them: its one tensor, or the tuple."""
    return outputs[0] if entry.single else tuple(outputs)


def _disagree(got: list, want: list, with_grad: bool = True) -> str | None:
    """Which output of a step differs (loss, then gradient i; output i of a forward graph),
    or ``None``."""
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if (g is None) != (w is None) or (g is not None and not _close(g, w)):
            if not with_grad:
                return f"output {i}"
            return "the loss" if i == 0 else f"the gradient of parameter {i - 1}"
    return None


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Same computation up to rounding: |got - want| within 1000 ulps of the scale of ``want``
    (the norm of a gradient, not each entry, so that near-cancelling entries do not fail)."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return False
    eps = torch.finfo(want.dtype).eps if want.is_floating_point() else 0.0
    got, want = got.detach().double(), want.detach().double()
    # NaN or infinity where eager has the same: agreement (training then stops on it as eager).
    same = (got == want) | (got.isnan() & want.isnan())
    got, want = got.masked_fill(same, 0.0), want.masked_fill(same, 0.0)
    if not bool(torch.isfinite(got).all() and torch.isfinite(want).all()):
        return False
    rms = max(want.numel(), 1) ** 0.5
    return bool((got - want).norm() / rms <= 1e3 * eps * (1.0 + want.norm() / rms))


def _grad_mode(enabled: bool):
    return torch.enable_grad() if enabled else torch.no_grad()


def _leaves(names, module_params) -> list[torch.Tensor] | None:
    """The trainable tensors a recorded graph takes, in recording order: the param store's
    current tensors for ``names`` (looked up on every call, so a replaced entry is seen), then
    the torch modules' parameters. ``None`` when a name has disappeared from the store."""
    store = dict(pyro.get_param_store().named_parameters())
    leaves: dict[int, torch.Tensor] = {}
    for name in names:
        leaf = store.get(name)
        if leaf is None:
            return None
        if leaf.requires_grad:
            leaves.setdefault(id(leaf), leaf)
    for p in module_params:
        leaves.setdefault(id(p), p)
    return list(leaves.values())


def _cuda_devices(args) -> list:
    return sorted({a.device.index or 0 for a in args
                   if isinstance(a, torch.Tensor) and a.device.type == "cuda"})
