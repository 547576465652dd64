"""Compiling in the background: ``jit="auto"`` trains on the recorded step while Inductor
compiles it in a worker process, and switches once the compiled step is ready and has passed the
first-step check.

Why a process, not a thread: recording and compiling patch torch's globals for their duration
(``torch.fx`` wraps ``nn.Module.__call__``, ``config.patch`` keeps one global patcher), so a
compile in a thread breaks the training thread's replays (``module is not installed as a
submodule``), and a thread still inside Inductor when the interpreter exits aborts the process.
The worker (a fresh interpreter) gets a pickled copy of the recorded graph and of its
inputs, compiles it into the persistent compile cache (:func:`ppl_vae.recording.private.
compile_cache`) and reports success or a one-line error. The training thread then runs the same
compile itself, which finds every artifact in the cache and only loads it, and checks the result
on a step before it switches. The worker never touches the param store, the optimizer or the
random generators of training; a run that ends first kills it at exit, without waiting. A compile that fails leaves the recorded step as it was, with the reason in
the run's settings (no warning: an optimisation that did not happen).

Determinism: the compiled step draws its random numbers with torch's generator, as the recorded
one (``fallback_random``), so the same seed gives the same history up to the rounding difference
between the compiled and the recorded kernels (the first-step check bounds it: 1000 ulps of the
scale of each gradient); when the switch happens depends on the machine's speed, so two runs of
one seed agree to float tolerance, not bit for bit.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import importlib
import os
import pickle
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from ppl_vae.recording.inductor import _first_line, inductor_unavailable
from ppl_vae.recording.portable import PortableGraph, portable, rebuild
from ppl_vae.recording.private import (
    compile_cache,
    compile_fx,
    record_fake,
    user_cache,
)

__all__ = ["Job", "compile_in_background", "compile_recorded", "detached_copy", "OPTIONS",
           "switch_pays", "SWITCH_COST_S"]

# Torch's generator for random ops (fallback_random): the compiled step draws eager's numbers.
# cpp_wrapper: the kernels and their calls in one C++ library (one compiler run, no Python
# between kernels).
OPTIONS = {"fallback_random": True, "cpp_wrapper": True}


def _worker() -> None:
    """The worker process (``python -m ppl_vae.recording.background PATH``): reads the pickled
    ``(module, function, args)`` from the file PATH (and removes it), runs ``module.function(*args)`` (which fills the
    compile cache), and writes ``ok`` or a one-line error as its last line of stdout."""
    try:
        path = Path(sys.argv[1])
        payload = path.read_bytes()
        path.unlink(missing_ok=True)
        module, name, args, threads, out = pickle.loads(payload)
        # Inductor's cache key holds the thread count (its loops are written for it): the
        # training process's, or the load there would miss the cache and compile again.
        torch.set_num_threads(threads)
        os.nice(10)  # behind training, on a machine with fewer cores than processes
        returned = getattr(importlib.import_module(module), name)(*args)
        if out is not None:  # what the training process loads instead of compiling again
            Path(out).write_bytes(pickle.dumps(returned))
        message = "ok"
    except Exception as error:  # noqa: BLE001 - reported to the training process
        message = f"{type(error).__name__}: {_first_line(error)}"
    print(message, flush=True)


_LIVE: set = set()  # worker processes still running


@atexit.register
def _abandon() -> None:
    """A run that ends before its compile does leaves the worker: killed at exit, not waited
    for (it only fills a cache)."""
    for job in list(_LIVE):
        job._process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            job._process.wait(1.0)  # a killed process is reaped at once: no zombie, no warning
        job._process.stdout.close()
        job._payload.unlink(missing_ok=True)
        if job._out is not None:
            job._out.unlink(missing_ok=True)


class Job:
    """``function(*args)`` (``where = (module, function)``, a compile) run first in a worker
    process, which fills the compile cache, then, by :meth:`finish`, in this one, where it only
    loads. ``ready()`` once the worker finished; after :meth:`finish`, ``result`` or ``error``.

    The worker is ``python -m ppl_vae.recording.background`` given a file, not a
    ``multiprocessing`` process: ``spawn`` would run the user's script again in it.

    Attributes
    ----------
    seconds : float
        Wall time of the worker (the compile, beside training).
    load_seconds : float
        Wall time of :meth:`finish`'s own call (the load from the cache, in training).
    """

    def __init__(self, where: tuple[str, str], args: tuple,
                 load: tuple[str, str] | None = None):
        self.result = None
        self.error: str | None = None
        self.seconds = self.load_seconds = 0.0
        self._where = where
        # Through a file, not the worker's stdin: a pipe holds 64 KiB, and the write of a larger
        # graph would wait for the worker to have imported torch (seconds of a stalled step).
        # Graphs travel as node lists (ppl_vae.recording.portable), never as pickled
        # GraphModules: unpickling one re-traces it and runs, and folds, its random draws.
        handle, out = tempfile.mkstemp(prefix="ppl-vae-compiled-", suffix=".pkl")
        os.close(handle)
        self._out, self._load = (Path(out), load) if load is not None else (None, None)
        payload = pickle.dumps((*where, args, torch.get_num_threads(),
                                None if load is None else out))
        if load is None:
            os.unlink(out)
        # This process compiles what the worker unpickles: the same graph, so the same cache key.
        self._args = pickle.loads(payload)[2]
        with tempfile.NamedTemporaryFile(prefix="ppl-vae-compile-", suffix=".pkl",
                                         delete=False) as file:
            file.write(payload)
        self._payload = Path(file.name)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        # The user's Inductor folder, not the default Inductor wrote into this environment:
        # the worker must compile into the folder this process will load from.
        env.pop("TORCHINDUCTOR_CACHE_DIR", None)
        # One compiler process (not Inductor's pool of one per core): training keeps its core.
        env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
        if user_cache() is not None:
            env["TORCHINDUCTOR_CACHE_DIR"] = user_cache()
        self._t0 = time.perf_counter()
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(self._payload)], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        _LIVE.add(self)

    def ready(self) -> bool:
        return self._process.poll() is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker finished (tests and benchmarks; training never waits)."""
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def discard(self) -> None:
        """After :meth:`ready`: drop the worker's result without loading it (the compiled step
        would not pay back; the cache it filled stays for the next run)."""
        _LIVE.discard(self)
        self.seconds = time.perf_counter() - self._t0
        self._process.stdout.close()
        self._payload.unlink(missing_ok=True)
        if self._out is not None:
            self._out.unlink(missing_ok=True)

    def finish(self) -> None:
        """After :meth:`ready`: the worker's answer, then the compile in this process (a load
        from the cache)."""
        _LIVE.discard(self)
        self._payload.unlink(missing_ok=True)
        lines = self._process.stdout.read().decode(errors="replace").strip().splitlines()
        self._process.stdout.close()
        self.seconds = time.perf_counter() - self._t0
        message = lines[-1] if lines else \
            f"the compile process ended (exit code {self._process.returncode})"
        returned = None
        if self._out is not None:
            if message == "ok":
                returned = pickle.loads(self._out.read_bytes())
            self._out.unlink(missing_ok=True)
        if message != "ok":
            self.error = message
            return
        t0 = time.perf_counter()
        try:
            # The load pays this process's first Inductor call (imports, the CPU's vector
            # probe: about 3 s on two cores) here, once the worker is done. Not earlier in a
            # side thread: its imports hold the interpreter lock, and a run that ended before
            # the worker (the main job on a cold cache: 16.8 s of training instead of 13.4 s)
            # paid it for nothing.
            # ``load(returned, *args)`` where the worker returned what it compiled (a load from
            # the cache); else the worker's own call again, which then finds its artifacts.
            module, name = self._where if self._load is None else self._load
            args = self._args if self._load is None else (returned, *self._args)
            self.result = getattr(importlib.import_module(module), name)(*args)
        except Exception as error:  # noqa: BLE001 - as in the worker
            self.error = f"{type(error).__name__}: {_first_line(error)}"
        self.load_seconds = time.perf_counter() - t0


def detached_copy(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A deep copy of a recorded graph for a compile (a compiler may rewrite what it is given)."""
    with warnings.catch_warnings():  # torch's own deprecation inside its pytree specs
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(graph)


def compile_recorded(data: PortableGraph, example: list, device_type: str):
    """A flat recorded step, ``flat(*leaves, *tensors) -> [loss, *grads]`` (as
    :func:`~ppl_vae.recording.portable.portable` data), compiled with Inductor; the same call in
    the worker and in training, so the second finds the first's artifacts in the cache."""
    flat = rebuild(data)
    for node in flat.graph.nodes:
        node.meta.clear()  # make_fx's recorded values: compile_fx traces its own
    # No CUDA graphs: their outputs live in a pool the next replay overwrites.
    options = OPTIONS if device_type == "cpu" else {"fallback_random": True}
    with compile_cache():
        return compile_fx(flat, example, options)


def compile_in_background(graph: torch.fx.GraphModule, leaves: list, tensors: list,
                          device) -> Job | str:
    """Start compiling ``graph(leaves, tensors) -> [loss, *grads]`` with Inductor
    (:func:`compile_recorded`); where no compiler is available, the reason instead of a job."""
    device_type = "cpu" if device is None else device.type
    missing = inductor_unavailable() if device_type == "cpu" else None
    if missing is not None:
        return missing
    example = [t.detach().clone() for t in (*leaves, *tensors)]
    graph, num_leaves = detached_copy(graph), len(leaves)

    def flat(*inputs):
        return graph(list(inputs[:num_leaves]), list(inputs[num_leaves:]))

    # Flat inputs, re-recorded on fake tensors (no op runs, no random number is drawn), then
    # sent as its node list.
    with torch.no_grad():
        recorded = record_fake(flat, example)
    return Job((__name__, "compile_recorded"), (portable(recorded), example, device_type))


#: Seconds the training thread spends switching to a compiled step: Inductor's imports and the
#: CPU probe of a process's first compile (about 3 s on two cores), then the load from the cache
#: (about 1 s), measured on the digits VAE.
SWITCH_COST_S = 4.0
#: The share of a recorded step's time the compiled step saves, at least (measured, batch 128,
#: one thread: 0.36 on the 784-dim VAE, 0.45 on digits).
SAVED_SHARE = 0.35


def switch_pays(time_left: Callable[[], float | None] | None) -> tuple[bool, str | None]:
    """Whether switching to a compiled step pays back in the training time left
    (``time_left()``: seconds, ``None`` when unknown, which switches), and the note when not."""
    left = None if time_left is None else time_left()
    if left is None or left * SAVED_SHARE > SWITCH_COST_S:
        return True, None
    return False, (f"compiled, but not switched to: about {left:.0f} s of work (training, or "
                   f"the diagnostics pass) were left, and the switch costs about "
                   f"{SWITCH_COST_S:.0f} s where the compiled graph saves about "
                   f"{SAVED_SHARE:.0%} of each call")


if __name__ == "__main__":
    _worker()
