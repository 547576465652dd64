"""Compiling in the background: ``jit="auto"`` trains on the recorded step while Inductor
compiles it in a worker thread, and switches once the compiled step is ready and has passed the
first-step check.

Thread safety: the worker only sees copies (a deep copy of the recorded graph, clones of its
inputs) and never touches the param store, the optimizer or a random generator: it re-records the
graph with fake tensors (no op runs, no random number is drawn) and Inductor compiles from fake
tensors too. The training thread reads the artifact only after the worker has finished with it
(:class:`Job`'s event), and checks it before using it. A daemon thread: a run that ends first
abandons it (nothing joins it at exit), and a compile that fails leaves the recorded step as it
was, with the reason in the run's settings (no warning: it is an optimisation that did not
happen).

Determinism: the compiled step draws its random numbers with torch's generator, as the recorded
one (``fallback_random``), so the same seed gives the same history up to the rounding difference
between the compiled and the recorded kernels (the first-step check bounds it: 1000 ulps of the
scale of each gradient); when the switch happens depends on the machine's speed, so two runs of
one seed agree to float tolerance, not bit for bit.
"""

from __future__ import annotations

import atexit
import copy
import threading
import time
import warnings
from collections.abc import Callable

import torch

from ppl_vae.recording.inductor import _first_line, inductor_unavailable
from ppl_vae.recording.private import compile_cache, compile_fx, raise_in_thread, record_fake

__all__ = ["Job", "compile_in_background", "detached_copy", "OPTIONS"]

# Torch's generator for random ops (fallback_random): the compiled step draws eager's numbers.
# cpp_wrapper: the kernels and their calls in one C++ library (one compiler run, no Python
# between kernels).
OPTIONS = {"fallback_random": True, "cpp_wrapper": True}


class Abandoned(BaseException):
    """Raised in a compile thread still running at exit (:func:`_abandon`)."""


_RUNNING: set = set()  # the jobs whose threads are alive


def _abandon() -> None:
    """At exit, stop the compile threads still running: a thread left inside Inductor while
    the interpreter finalises aborts the process (``terminate called without an active
    exception``). Each gets :class:`Abandoned` raised at its next Python instruction; a thread
    waiting on the C++ compiler ends when that run ends."""
    jobs = list(_RUNNING)
    for job in jobs:
        raise_in_thread(job._thread, Abandoned)
    for job in jobs:
        job._thread.join()


atexit.register(_abandon)


class Job:
    """A build run in a daemon thread: ``ready()`` once it finished, then ``result`` (or
    ``error``, a one-line reason). ``seconds``: its wall time."""

    def __init__(self, build: Callable[[], object], *, name: str = "ppl-vae compile"):
        self.result = None
        self.error: str | None = None
        self.seconds = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(build,), name=name, daemon=True)
        _RUNNING.add(self)
        self._thread.start()

    def _run(self, build) -> None:
        t0 = time.perf_counter()
        try:
            self.result = build()
        except Exception as error:  # noqa: BLE001 - any compiler failure: keep the recorded step
            self.error = f"{type(error).__name__}: {_first_line(error)}"
        except Abandoned:
            self.error = "abandoned at exit"
        finally:
            self.seconds = time.perf_counter() - t0
            _RUNNING.discard(self)
            self._done.set()

    def ready(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job finished (tests and benchmarks; training never waits)."""
        return self._done.wait(timeout)


def detached_copy(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A deep copy of a recorded graph for a worker (a compiler may rewrite what it is given)."""
    with warnings.catch_warnings():  # torch's own deprecation inside its pytree specs
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(graph)


def compile_in_background(graph: torch.fx.GraphModule, leaves: list, tensors: list,
                          device) -> Job | str:
    """Start compiling ``graph(leaves, tensors) -> [loss, *grads]`` with Inductor. The compiled
    step is called as ``compiled(*leaves, *tensors)`` and returns the same list. Where no compiler is available,
    the reason instead of a job."""
    missing = inductor_unavailable() if device is None or device.type == "cpu" else None
    if missing is not None:
        return missing
    graph = detached_copy(graph)  # the training thread replays the original meanwhile
    example = [t.detach().clone() for t in (*leaves, *tensors)]
    num_leaves = len(leaves)

    def build():
        def flat(*inputs):
            return graph(list(inputs[:num_leaves]), list(inputs[num_leaves:]))

        with torch.no_grad():
            recorded = record_fake(flat, example)
        for node in recorded.graph.nodes:
            node.meta.clear()  # make_fx's recorded values: compile_fx traces its own
        # No CUDA graphs: their outputs live in a pool the next replay overwrites.
        options = OPTIONS if device is None or device.type == "cpu" else {"fallback_random": True}
        with compile_cache():
            return compile_fx(recorded, example, options)

    return Job(build)
