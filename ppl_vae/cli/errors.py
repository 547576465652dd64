"""Every error of the ``ppl-vae`` command as one line: what, where, and what to do.

The library's own errors already say that; this module turns the rest (operating-system errors,
torch's, a ``KeyError``) into the same form and keeps only the first line of multi-line messages
(Pyro appends trace-shape tables). ``--debug`` prints the traceback instead.
"""

from __future__ import annotations

import errno
import pickle

import torch

from ppl_vae.storage.files import DiskFullError
from ppl_vae.train.epoch import STEP_NOTE

__all__ = ["one_line", "DEBUG_HINT"]

DEBUG_HINT = "rerun with --debug for the traceback"

_OS_HINTS = {
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "the file system is read-only: choose another path",
    errno.EISDIR: "a file was expected here, not a folder",
    errno.ENOTDIR: "a folder was expected here, not a file",
    errno.ELOOP: "a symbolic link was found where ppl-vae never follows one",
    errno.ENOSPC: "free some space or choose another path",
}


def _first_line(text: str) -> tuple[str, bool]:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return (lines[0] if lines else ""), len(lines) > 1


def _os_error(exc: OSError) -> str:
    if isinstance(exc, DiskFullError) or exc.filename is None:
        return _first_line(str(exc))[0]
    what = exc.strerror or str(exc)
    what = what[:1].lower() + what[1:]
    where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    hint = _OS_HINTS.get(exc.errno)
    return f"{what}: {where}" + (f" ({hint})" if hint else "")


def one_line(exc: BaseException) -> str:
    """A one-line message for ``exc``, ending with what to do; where training was when the
    programs raised it (``fit``'s note), when it was."""
    text = _message(exc)
    notes = [n for n in getattr(exc, "__notes__", ()) if n.startswith(STEP_NOTE)]
    return f"{text} [{notes[0]}]" if notes else text


def _message(exc: BaseException) -> str:
    # torch's CPU allocator raises a bare RuntimeError ("DefaultCPUAllocator: can't allocate").
    if isinstance(exc, torch.OutOfMemoryError | MemoryError) or (
            isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)):
        return ("out of memory: lower --batch-size, --num-particles or --eval-samples, or "
                "train on a bigger device")
    if isinstance(exc, KeyError):
        return f"missing entry {exc.args[0]!r} ({DEBUG_HINT})" if exc.args else f"KeyError ({DEBUG_HINT})"
    if isinstance(exc, pickle.UnpicklingError):
        return f"a file could not be read as a ppl-vae file: {_first_line(str(exc))[0][:200]}"
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError | DiskFullError):
        return _os_error(exc)
    if isinstance(exc, FileNotFoundError) and exc.filename is not None:
        return f"no such file or folder: {exc.filename}"
    text, more = _first_line(str(exc))
    if isinstance(exc, ValueError | RuntimeError | OSError | TypeError):
        own = type(exc).__module__.startswith("ppl_vae")
        prefix = "" if own or isinstance(exc, ValueError | OSError) else f"{type(exc).__name__}: "
        return prefix + (text or type(exc).__name__) + (f" ({DEBUG_HINT})" if more else "")
    return f"{type(exc).__name__}: {text} ({DEBUG_HINT})"
