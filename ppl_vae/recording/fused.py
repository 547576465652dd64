"""``jit="compile"`` with Adam: the loss, its gradient and the optimizer step as one compiled
graph.

Unfused, a compiled step still runs the optimizer as a separate kernel, hands the gradients to
autograd's engine so that ``loss.backward()`` can write them into ``.grad``, and clears them
again: on the bundled digits (a 64-dim VAE at batch 128, one CPU thread) that is about a
fifth of the step. :class:`FusedAdamStep` instead records the Adam update of every trained
tensor *after* the recorded loss-and-gradient graph (``torch.fx``'s ``make_fx``) and compiles
the two together with Inductor: one call per step, the gradients never leave the graph, and
parameters and optimizer state are updated in place, so checkpoints, ``load_state_dict`` and
learning-rate schedules see the optimizer exactly as torch's own Adam keeps it.

The first two steps of each batch shape run unfused (they are where the recording is checked
against the eager programs). The first fused step is checked too: against the recorded graph
followed by torch's own ``torch.optim.adam.adam`` on copies, same random numbers. A failure to
compile or a mismatch restores the parameters and state, warns once
(:class:`~ppl_vae.recording.compile.JitFallbackWarning`) and trains unfused from then on.
"""

from __future__ import annotations

import importlib
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from ppl_vae.recording import background
from ppl_vae.recording.background import Job
from ppl_vae.recording.compile import (
    MAX_BACKGROUND,
    JitFallbackWarning,
    TraceOnce,
    _close,
    background_after,
)
from ppl_vae.recording.portable import PortableGraph, portable, rebuild
from ppl_vae.recording.private import adam_step_dtype, compile_cache, compile_fx, record_fake

__all__ = ["FusedAdamStep", "fusable"]

# torch.optim.adam is shadowed by the class torch.optim.Adam in attribute access.
_adam = importlib.import_module("torch.optim.adam")
_HYPER = ("betas", "eps", "weight_decay", "decoupled_weight_decay")


def fusable(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> str | None:
    """Why ``optimizer`` cannot be fused into a compiled step (``None``: it can).

    Fused: torch's ``Adam`` / ``AdamW`` with one parameter group, on the CPU, without
    ``amsgrad``, ``maximize``, ``capturable`` or ``differentiable`` (CUDA keeps the unfused
    step, whose graph replays as a CUDA graph).
    """
    # Exactly torch's classes: a subclass may step differently from the update fused here.
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return f"{type(optimizer).__name__} is not torch.optim.Adam or AdamW"
    if len(optimizer.param_groups) != 1:
        return "more than one parameter group"
    group = optimizer.param_groups[0]
    for flag in ("amsgrad", "maximize", "capturable", "differentiable"):
        if group.get(flag):
            return f"{flag}=True"
    if any(p.device.type != "cpu" for p in params):
        return "parameters are not on the CPU"
    return None


class FusedAdamStep:
    """One training step, ``step(batch) -> loss`` (0-dim, detached), Adam fused into it.

    Parameters
    ----------
    recorder : TraceOnce
        Records the loss and gradient per batch signature, uncompiled
        (:meth:`ppl_vae.recording.jit.TracedELBO.step_recorder`).
    optimizer : torch.optim.Adam
        Checked by :func:`fusable`; its state tensors are the ones updated.
    max_entries : int
        Compiled steps kept (one per batch signature), least recently used dropped.
    background : bool
        Build each fused step in a worker thread (``jit="auto"``): the unfused recorded step
        trains meanwhile, and the first fused step is checked when the build is ready
        (:mod:`ppl_vae.recording.background`); a failure is a note (``eager_reason``), not a
        warning. ``False`` (``jit="compile"``): built on the spot.

    Attributes
    ----------
    eager_reason : str or None
        Why this step runs unfused from now on (``None`` while it fuses).
    compile_seconds : float
        Recording and compilation time of the fused steps so far.
    """

    def __init__(self, recorder: TraceOnce, optimizer: torch.optim.Adam, *, max_entries: int = 8,
                 background: bool = False):
        self.recorder = recorder
        self.background = bool(background)
        self.background_seconds = 0.0
        self._jobs: dict[tuple, Job] = {}
        self._started = 0  # background builds started (MAX_BACKGROUND per run)
        # Seconds of training left (None: unknown), set by the training loop: a build that
        # finishes too late to pay back is not switched to (background.switch_pays).
        self.time_left: Callable[[], float | None] | None = None
        self._unfused_steps: dict[tuple, int] = {}
        self.optimizer = optimizer
        self.max_entries = int(max_entries)
        self.eager_reason: str | None = None
        self.compile_seconds = 0.0
        self.num_built = 0  # fused steps compiled (kept or since evicted)
        self._steps: OrderedDict[tuple, tuple] = OrderedDict()
        # Per recorded graph, its prepared inputs (_Plan): building them walks every tensor and
        # its optimizer state, which costs a tenth of a small model's step. Loading a state
        # dict replaces the state tensors: forget the plans then.
        self._plans: dict[int, _Plan] = {}
        self._current: _Plan | None = None  # the plan whose step counts are up to date
        optimizer.register_load_state_dict_post_hook(lambda _: self._forget())

    @property
    def compile_pending(self) -> bool:
        """Whether a background build is still under way."""
        return bool(self._jobs)

    @property
    def background_started(self) -> int:
        """Background builds started so far (at most one per run)."""
        return self._started

    @property
    def num_compiled(self) -> int:
        """Fused steps compiled and kept (one per batch signature)."""
        return len(self._steps)

    def __call__(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        found = None if self.eager_reason is not None else self.recorder.recorded(*batch)
        if found is None:
            return self._unfused(batch)
        graph, leaves = found
        group = self.optimizer.param_groups[0]
        plan = self._plans.get(id(graph))
        if plan is None or not plan.fits(graph, leaves, batch, group):
            plan, loss = self._plan(graph, leaves, batch, group)
            if plan is None:
                return self._unfused(batch) if loss is None else loss
        if self._current is not plan:  # another signature (or an unfused step) stepped since
            plan.counts = torch.cat(plan.steps).tolist() if plan.steps else []
            self._current = plan
        inputs = plan.inputs(batch, _coefficients(plan.counts, group, leaves[0]))
        plan.counts = [c + 1 for c in plan.counts]
        # In-place updates of leaves that require grad: no autograd. No guards are evaluated:
        # the plan pins what they would check (shapes, strides, dtypes and devices of every
        # input), and on a small model they cost a tenth of the step.
        with torch.no_grad():
            return plan.step(*inputs)[0]

    def wait_for_compiles(self, timeout: float | None = None) -> bool:
        """Block until the background builds under way finished (benchmarks and tests)."""
        return all(job.wait(timeout) for job in list(self._jobs.values()))

    def _forget(self) -> None:
        self._plans.clear()
        self._current = None

    def _plan(self, graph, leaves, batch, group):
        """(plan, None) with a compiled step for these inputs; (None, loss) after compiling and
        taking the first fused step; (None, None) when fusing failed."""
        inputs = self._inputs(leaves, batch, group)
        key = (id(graph), tuple(id(p) for p in leaves), tuple(self._trained),
               tuple(_hyper(group)), tuple(_layout(t) for part in inputs[:5] for t in part))
        found = self._steps.get(key)
        if found is None or found[0] is not graph:  # (an id can be reused after eviction)
            if self.background:
                return None, self._in_background(key, graph, leaves, inputs, group)
            return None, self._first(key, graph, leaves, inputs, group)
        self._steps.move_to_end(key)
        plan = _Plan(graph, list(leaves), [_layout(t) for t in inputs[1]], _hyper(group),
                     inputs, found[1])
        self._plans[id(graph)] = plan
        while len(self._plans) > self.max_entries:
            self._plans.pop(next(iter(self._plans)))
        return plan, None

    def _in_background(self, key, graph, leaves, inputs, group) -> torch.Tensor | None:
        """Start building the fused step for ``key`` in a worker thread (after
        :func:`~ppl_vae.recording.compile.background_after` unfused steps), or, once built, take
        its checked first step; ``None``: take an unfused step."""
        job = self._jobs.get(key)
        if job is None:
            seen = self._unfused_steps[key] = self._unfused_steps.get(key, 0) + 1
            if seen > background_after() and self._started < MAX_BACKGROUND:
                missing = background.inductor_unavailable()
                if missing is not None:  # no compiler here: the recorded step, as it was
                    self.eager_reason = missing
                    return None
                # Copies made here, in the training thread: the worker never reads a live tensor.
                shapes, trained = [tuple(p.shape) for p in leaves], list(self._trained)
                copies = (*([t.detach().clone() for t in part] for part in inputs[:5]),
                          inputs[5].clone())
                hyper = {k: group[k] for k in ("betas", "eps", "weight_decay")}
                hyper["decoupled_weight_decay"] = group.get("decoupled_weight_decay", False)
                # The graph as its node list: a pickled GraphModule is re-traced when unpickled,
                # which runs (and freezes) its random draws (ppl_vae.recording.portable).
                # The worker records graph-then-Adam too, and returns it: training then only
                # loads the compiled step (no recording on the training thread).
                self._jobs[key] = Job((__name__, "_build_in_worker"),
                                      (portable(graph), trained, shapes, hyper, copies),
                                      load=(__name__, "_load_built"))
                self._started += 1
            return None
        if not job.ready():
            return None
        del self._jobs[key]
        pays, note = background.switch_pays(self.time_left)
        if not pays:
            job.discard()
            self.background_seconds += job.seconds
            self.eager_reason = note
            return None
        job.finish()  # the build again, here: a load from the cache the worker filled
        self.background_seconds += job.seconds
        self.compile_seconds += job.load_seconds
        if job.error is not None:
            self.eager_reason = f"the background compile failed ({job.error})"
            return None
        return self._first(key, graph, leaves, inputs, group, built=job.result)

    def _unfused(self, batch) -> torch.Tensor:
        self._current = None  # torch's Adam moves the step counts
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.recorder(*batch)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _inputs(self, leaves, batch, group) -> tuple:
        """(leaves, tensors, exp_avgs, exp_avg_sqs, steps, coefficients) with the optimizer's
        own state (created as torch's Adam creates it for a tensor that has none yet), every
        0-dim tensor as a 1-element view of itself (:func:`_flat`)."""
        trained = {id(p) for p in group["params"]}
        states = []
        for p in leaves:
            if id(p) not in trained:
                states.append(None)
                continue
            state = self.optimizer.state[p]
            if not state:
                # What torch's fused Adam keeps its step counter in, on the parameter's device.
                state["step"] = torch.zeros((), dtype=adam_step_dtype(),
                                            device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            states.append(state)
        kept = [s for s in states if s is not None]
        self._trained = [s is not None for s in states]
        steps = [s["step"] for s in kept]
        return ([_flat(p) for p in leaves], [t for t in batch if isinstance(t, torch.Tensor)],
                [_flat(s["exp_avg"]) for s in kept], [_flat(s["exp_avg_sq"]) for s in kept],
                [_flat(t) for t in steps],
                _coefficients(torch.stack(steps).tolist() if steps else [], group, leaves[0]))

    def _first(self, key, graph, leaves, inputs, group, built=None) -> torch.Tensor | None:
        """Record, compile (unless ``built``) and check the fused step; its loss, or ``None``
        after a failure."""
        t0 = time.perf_counter()
        parts = (inputs[0], *inputs[2:5])
        snapshot = [[t.detach().clone() for t in part] for part in parts]
        rng = torch.random.get_rng_state()  # CPU only: fusable() refuses other devices
        try:
            shapes = [tuple(p.shape) for p in leaves]
            reference = _reference(graph, self._trained, shapes, group, inputs)
            step = built if built is not None else _build(graph, self._trained, shapes, group,
                                                          inputs)
            with torch.no_grad():
                loss = step(*inputs)[0]
            reason = _compare(loss, reference, inputs)
        except Exception as error:  # noqa: BLE001 - any compiler failure: train unfused
            reason = f"the fused step failed ({type(error).__name__}: {str(error)[:200]})"
        self.compile_seconds += time.perf_counter() - t0
        self._current = None
        if reason is None:
            self.num_built += 1
            self._steps[key] = (graph, step)
            while len(self._steps) > self.max_entries:
                self._steps.popitem(last=False)
            return loss.detach()
        # Undo the attempt: parameters, moments, step counts and the random numbers it drew, so
        # that the unfused step taken instead is the one an unfused run takes here.
        with torch.no_grad():
            for part, saved in zip(parts, snapshot, strict=True):
                for t, s in zip(part, saved, strict=True):
                    t.copy_(s)
        torch.random.set_rng_state(rng)
        self.eager_reason = reason
        if not self.background:  # in the background an optimisation that did not happen
            warnings.warn(f"jit='compile': {reason}; the optimizer runs as a separate step",
                          JitFallbackWarning, stacklevel=4)
        return None


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A 0-dim tensor as a 1-element view (same storage). Inductor (torch 2.13, CPU) drops the
    in-place update of a 0-dim graph input that the graph also reads: a scalar ``pyro.param``
    would silently never be trained. Updates of 1-element views are written back."""
    return t.view(1) if t.dim() == 0 else t


def _graph_leaves(leaves, shapes) -> list:
    """The leaves as the recorded graph takes them (0-dim ones viewed back from _flat)."""
    return [p.view(shape) for p, shape in zip(leaves, shapes, strict=True)]


def _layout(t: torch.Tensor) -> tuple:
    return (tuple(t.shape), t.stride(), t.dtype, t.device)


def _hyper(group) -> list:
    return [group.get(k) for k in _HYPER]


def _coefficients(counts: list, group, like: torch.Tensor) -> torch.Tensor:
    """Per trained tensor, Adam's lr / (1 - beta1^t), 1 / sqrt(1 - beta2^t) at the coming step
    t = count + 1 and the decoupled decay 1 - lr * weight_decay, as one (3 x tensors,) tensor.
    Computed on the host from the step counts (which live on the CPU): the compiled loops only
    load them instead of evaluating two powers per element, and a learning-rate schedule
    changes an input, not the graph."""
    beta1, beta2 = group["betas"]
    lr, decay = float(group["lr"]), float(group["weight_decay"])
    values, last = [], None
    for t in counts:
        if t != last:  # the counts are almost always all equal: compute the powers once
            last, triple = t, [lr / (1 - beta1 ** (t + 1)), (1 - beta2 ** (t + 1)) ** -0.5,
                               1 - lr * decay]
        values += triple
    return torch.tensor(values, dtype=like.dtype, device=like.device)


@dataclass(eq=False)
class _Plan:
    """The prepared inputs of one compiled fused step: the leaves and optimizer state it
    updates (flat views), checked cheaply on each call, with the step counts mirrored on the
    host (the graph adds one to each per call)."""

    graph: torch.fx.GraphModule
    leaves: list
    batch_layout: list
    hyper: list
    parts: tuple
    step: Callable
    counts: list = field(default_factory=list)

    @property
    def steps(self) -> list:
        return self.parts[4]

    def fits(self, graph, leaves, batch, group) -> bool:
        # A leaf whose storage was swapped (``p.data = ...``) would leave a cached 1-element
        # view (:func:`_flat`) updating the old storage: compare where the views point.
        return (graph is self.graph and len(leaves) == len(self.leaves)
                and all(a is b for a, b in zip(leaves, self.leaves, strict=True))
                and all(v is p or v.data_ptr() == p.data_ptr()
                        for v, p in zip(self.parts[0], leaves, strict=True))
                and _hyper(group) == self.hyper
                and [_layout(t) for t in batch if isinstance(t, torch.Tensor)] == self.batch_layout)

    def inputs(self, batch, coefficients) -> tuple:
        leaves, _, exp_avgs, exp_avg_sqs, steps, _ = self.parts
        return (leaves, [t for t in batch if isinstance(t, torch.Tensor)], exp_avgs, exp_avg_sqs,
                steps, coefficients)


def _adam_update(params, grads, exp_avgs, exp_avg_sqs, steps, coefficients, group) -> None:
    """Adam (Kingma & Ba 2015) in place, as torch's fused kernel computes it, one tensor at a
    time so that Inductor fuses each into one loop; a tensor whose gradient is ``None`` is
    skipped, as torch's Adam skips it (no step, no state change)."""
    beta1, beta2 = group["betas"]
    eps, wd = group["eps"], group["weight_decay"]
    decoupled = group.get("decoupled_weight_decay", False)
    for i, (p, g, m, v, s) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, steps,
                                            strict=True)):
        if g is None:
            continue
        s.add_(1)
        if wd and decoupled:
            p.mul_(coefficients[3 * i + 2])
        elif wd:
            g = g + wd * p
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        p.sub_(coefficients[3 * i] * m / (v.sqrt() * coefficients[3 * i + 1] + eps))


def _pick(items, mask) -> list:
    return [item for item, ok in zip(items, mask, strict=True) if ok]


def _build(graph, trained, shapes, group, inputs):
    """make_fx of graph-then-Adam (on copies: recording runs the ops), compiled by Inductor.
    ``trained[i]``: whether the i-th leaf is one of the optimizer's tensors; ``shapes[i]``: its
    shape as the recorded graph takes it. The compiled graph takes its tensors flat, so that no
    pytree is flattened on each call; the step returned takes them as ``inputs`` lays them out."""
    recorded, copies = _record_fused(graph, trained, shapes, group, inputs, fake=False)
    return _stepper(_compile(recorded, copies))


def _build_in_worker(graph: PortableGraph, trained, shapes, group, inputs) -> PortableGraph:
    """In the background compile's worker process: :func:`_build` on fake tensors, the recorded
    graph-then-Adam compiled (into the cache) as it is rebuilt from its node list, and returned
    as that list, for :func:`_load_built` in the training process."""
    recorded, copies = _record_fused(graph, trained, shapes, group, inputs, fake=True)
    data = portable(recorded)
    _compile(rebuild(data), copies)
    return data


def _load_built(data: PortableGraph, graph, trained, shapes, group, inputs):
    """In the training process: the worker's graph rebuilt and compiled again, the same graph
    so the same cache key (a load, not a compile)."""
    copies = [t.detach().clone() for part in inputs[:5] for t in part] + [inputs[5].clone()]
    return _stepper(_compile(rebuild(data), copies))


def _stepper(compiled):
    def step(leaves, tensors, exp_avgs, exp_avg_sqs, steps, coefficients):
        return compiled(*leaves, *tensors, *exp_avgs, *exp_avg_sqs, *steps, coefficients)

    return step


def _record_fused(graph, trained, shapes, group, inputs, fake: bool):
    """(recorded graph-then-Adam taking its tensors flat, example copies of the inputs)."""
    sizes = [len(part) for part in inputs[:5]]
    if isinstance(graph, PortableGraph):  # from the training process: rebuilt flat
        flat_graph = rebuild(graph)

        def graph(leaves, tensors):
            return flat_graph(*leaves, *tensors)

    def fused(*flat):
        parts, start = [], 0
        for size in sizes:
            parts.append(list(flat[start:start + size]))
            start += size
        leaves, tensors, exp_avgs, exp_avg_sqs, steps = parts
        outputs = graph(_graph_leaves(leaves, shapes), tensors)
        _adam_update(_pick(leaves, trained), _pick(outputs[1:], trained), exp_avgs, exp_avg_sqs,
                     steps, flat[start], group)
        return [outputs[0]]

    copies = [t.detach().clone() for part in inputs[:5] for t in part] + [inputs[5].clone()]
    if fake:  # in the worker: no op runs, no random number is drawn
        with torch.no_grad():
            recorded = record_fake(fused, copies)
    else:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            recorded = make_fx(fused)(*copies)
    # Compiled with torch's generator for random ops (fallback_random), as the unfused compiled
    # step: the fused step draws the numbers eager draws, which the first-step check relies on.
    return recorded, copies


# cpp_wrapper: the kernels and their calls in one C++ library, one compiler run instead of one
# per kernel (digits VAE, fresh cache: 7 s instead of 10 s) and no Python between kernels.
_OPTIONS = {"fallback_random": True, "cpp_wrapper": True}


def _compile_direct(recorded: torch.fx.GraphModule, example: list) -> Callable:
    for node in recorded.graph.nodes:
        node.meta.clear()  # make_fx's recorded values: compile_fx traces its own
    with compile_cache():
        return compile_fx(recorded, example, _OPTIONS)


def _compile(recorded: torch.fx.GraphModule, example: list) -> Callable:
    """Inductor on the recorded ATen graph. Directly (``compile_fx``, what ``torch.compile``'s
    Inductor backend calls once dynamo has traced a program): the graph is already ATen ops, so
    re-tracing it buys nothing, and dynamo's frame evaluation costs 0.08 ms of a 0.9 ms digits
    step. Where this torch's ``compile_fx`` does not take the graph, ``torch.compile`` with its
    guards skipped (the plan pins what they check); the first fused step checks either."""
    try:
        return _compile_direct(recorded, example)
    except Exception:  # noqa: BLE001 - a private entry point; the public one below
        pass
    compiled = torch.compile(recorded, backend="inductor", fullgraph=True, dynamic=False,
                             options=dict(_OPTIONS))
    calls = 0

    def run(*inputs):
        nonlocal calls
        calls += 1
        if calls == 1:  # compiles
            return compiled(*inputs)
        with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
            return compiled(*inputs)

    return run


def _reference(graph, trained, shapes, group, inputs) -> dict:
    """The recorded graph, then torch's own Adam, on copies (the random state restored after, so
    that the fused step draws the same numbers): what the fused step must give."""
    leaves, tensors, exp_avgs, exp_avg_sqs, steps, _ = inputs
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        outputs = graph(_graph_leaves(leaves, shapes), list(tensors))
    grads = _pick(outputs[1:], trained)
    updated = [g is not None for g in grads]
    params = [p.detach().clone() for p in _pick(leaves, trained)]
    state = [[t.clone() for t in part] for part in (exp_avgs, exp_avg_sqs, steps)]
    beta1, beta2 = group["betas"]
    _adam.adam(_pick(params, updated), _pick(grads, updated),
               *(_pick(s, updated) for s in state[:2]), [], _pick(state[2], updated),
               foreach=False, amsgrad=False, beta1=beta1, beta2=beta2, lr=float(group["lr"]),
               weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
               decoupled_weight_decay=group.get("decoupled_weight_decay", False))
    return {"loss": outputs[0], "trained": trained,
            "params": params, "exp_avgs": state[0], "exp_avg_sqs": state[1]}


def _compare(loss, reference, inputs) -> str | None:
    """Why the fused step's result differs from the reference (``None``: it agrees)."""
    if not _close(loss.detach(), reference["loss"].detach()):
        return (f"the fused step's loss ({float(loss):.6g}) differs from the recorded graph's "
                f"({float(reference['loss']):.6g})")
    trained = _pick(inputs[0], reference["trained"])
    for what, got, want in (("parameter", trained, reference["params"]),
                            ("first moment", inputs[2], reference["exp_avgs"]),
                            ("second moment", inputs[3], reference["exp_avg_sqs"])):
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            if not _close(g.detach(), w):
                return (f"the fused step's update of the {what} of tensor {i} (shape "
                        f"{tuple(g.shape)}) differs from torch's Adam")
    return None
