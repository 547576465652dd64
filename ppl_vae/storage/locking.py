"""Portable file-lock primitives for the run folder's writer lock.

POSIX systems lock with ``fcntl.flock`` (released by the kernel when the holder dies, so a
killed run never leaves a stale lock); Windows with ``msvcrt.locking`` on the file's first byte
(released when the handle closes, which also happens when the process dies). The platform
module is imported here, where it is used, so that ``import ppl_vae`` needs neither.
"""

from __future__ import annotations

import os

__all__ = ["NOFOLLOW", "try_lock", "unlock", "set_mode"]

POSIX = os.name == "posix"
# Windows has no symbolic-link-refusing open flag: there the checks before each open remain.
NOFOLLOW = os.O_NOFOLLOW if POSIX else 0


def try_lock(fd: int, *, shared: bool = False) -> bool:
    """Take the lock on ``fd`` without waiting; False when another process holds it.
    ``shared`` (POSIX) only probes: it succeeds unless a writer holds the exclusive lock."""
    if POSIX:
        import fcntl

        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    import msvcrt

    os.lseek(fd, 0, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # Windows' "lock violation": the byte is locked by another handle
        return False
    return True


def unlock(fd: int) -> None:
    """Release the lock taken by :func:`try_lock` on ``fd``."""
    if POSIX:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)
        return
    import msvcrt

    os.lseek(fd, 0, os.SEEK_SET)
    msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def set_mode(fd: int, mode: int) -> None:
    """``fchmod`` where the platform has it (Windows files have no such mode bits)."""
    if POSIX:
        os.fchmod(fd, mode)
