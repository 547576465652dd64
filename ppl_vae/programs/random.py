"""Seeded randomness that leaves the caller's random state as it was.

Every diagnostic and evaluation draws from the guide; seeding them must not change what the
user's own code draws next. :func:`seeded` is ``torch.random.fork_rng`` over the CPU generator
and every CUDA device's (``torch.manual_seed`` reseeds all of them, so all of them are forked),
seeded inside. :func:`chunk_seed` derives independent seeds from a seed and keys such as a data
point's index, so that what a data point draws does not depend on which process or which pass
computes it.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

__all__ = ["chunk_seed", "preserved", "seeded"]


@contextlib.contextmanager
def seeded(seed: int | None):
    """Run the block with torch's generators seeded by ``seed``, then restore their states.

    Parameters
    ----------
    seed : int or None
        ``None`` runs the block on the current state and leaves it advanced (no fork).

    Notes
    -----
    The state of the CPU generator and of every CUDA device is saved and restored
    (``torch.random.fork_rng`` over all devices); Pyro samples through torch, so this covers
    it. All devices, not only initialised ones: ``torch.manual_seed`` queues the seed for a
    device that initialises later, which would otherwise leak out of the block.
    """
    if seed is None:
        yield
        return
    with preserved():
        torch.manual_seed(int(seed))
        yield


def preserved():
    """``torch.random.fork_rng`` over the CPU and every CUDA device: whatever the block draws,
    the generators are as before afterwards (for probes that run the user's programs)."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    return torch.random.fork_rng(devices=devices)


def chunk_seed(seed: int | None, *keys) -> int | None:
    """A seed for one piece of work, from ``seed`` and integer or string keys (for example a
    phase name and the index of a chunk's first data point); ``None`` stays ``None``.

    Uses ``numpy.random.SeedSequence``, whose spawned seeds are statistically independent.
    """
    if seed is None:
        return None
    entropy = [int(seed)] + [k if isinstance(k, int) else _text_key(k) for k in keys]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


def _text_key(text: str) -> int:
    return int.from_bytes(str(text).encode("utf-8")[:16].ljust(16, b"\0"), "little")
