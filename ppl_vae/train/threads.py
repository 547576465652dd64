"""Intra-op CPU threads for a training run: as many as the step's arithmetic can use.

torch runs each CPU op on ``torch.get_num_threads()`` OpenMP threads (one per core by default).
On the small matrices of a typical VAE step (digits: 128 x 64 x 400) the threads spend their time
waiting for each other at every op's barrier, and on a busy machine a waiting thread spins while
the core it needs runs another process: the digits VAE's step took 112-148 ms of CPU with 2
threads against 13 ms with 1 on a loaded 2-core machine (measured again: 9-200 ms against
2.5 ms). :func:`choose_threads` gives one thread per ``WORK_PER_THREAD`` multiply-adds of the
step, never more than the cores that are idle.
"""

from __future__ import annotations

import contextlib
import numbers
import os
from collections.abc import Iterator, Sequence

import torch

__all__ = ["choose_threads", "check_threads", "intra_op_threads", "WORK_PER_THREAD"]

#: Multiply-adds of one step (batch rows x trained weights) that keep one more thread busy.
#: 2**27 (134M): the 784-dim VAE at batch 128 (83M) stays on one thread, at batch 1024 (665M)
#: it may use up to four.
WORK_PER_THREAD = 2**27


def _idle_cores() -> int:
    """Cores this process may run on, less the load of the last minute (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, min(cores, int(cores - load + 0.5)))


def choose_threads(params: Sequence[torch.Tensor], batch_size: int, threads="auto") -> int | None:
    """Intra-op threads for a run, or ``None`` to leave torch's setting alone.

    Parameters
    ----------
    params : sequence of torch.Tensor
        The trained tensors (their sizes measure the work of a step).
    batch_size : int
        Rows per step.
    threads : "auto", int or None
        ``"auto"``: one thread per :data:`WORK_PER_THREAD` multiply-adds (``batch_size`` x the
        number of trained weights), at most ``torch.get_num_threads()`` (the user's or
        ``OMP_NUM_THREADS``'s cap) and the idle cores; ``None`` when the parameters are not on the
        CPU. An int: exactly that many. ``None``: torch's current setting.

    Returns
    -------
    int or None
    """
    threads = check_threads(threads)
    if threads is None or isinstance(threads, int):
        return threads
    if not params or any(p.device.type != "cpu" for p in params):
        return None
    work = int(batch_size) * sum(int(p.numel()) for p in params)
    wanted = max(1, work // WORK_PER_THREAD)
    return int(min(wanted, torch.get_num_threads(), _idle_cores()))


def check_threads(threads) -> int | str | None:
    """``threads`` as ``"auto"``, ``None`` or an int >= 1 (``TypeError`` / ``ValueError`` naming
    the argument otherwise)."""
    if threads is None or threads == "auto":
        return threads
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral):
        raise TypeError(f"threads must be 'auto', None or an integer >= 1, got {threads!r}")
    if int(threads) < 1:
        raise ValueError(f"threads must be 'auto', None or an integer >= 1, got {threads!r}")
    return int(threads)


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (``None``: unchanged), then restore."""
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
