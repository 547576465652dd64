"""Where a Pyro program reads a tensor's value on the host while it runs.

A recorded graph (:class:`ppl_vae.recording.compile.TraceOnce`) freezes whatever a program
computed from such a read (``if x.mean() > 0``, ``.item()``, ``float(t)``) at its first value, so
``jit="auto"`` does not record programs that read one: :class:`ValueReads` notes the first read
as ``file:line in function`` of the innermost caller outside torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyro
import torch

__all__ = ["ValueReads", "reader"]


class ValueReads(torch.overrides.TorchFunctionMode):
    """Where the programs read a tensor's value on the host (``.item()``, ``float()``,
    ``bool()``, ``if tensor:``), except Pyro's reading of the *reported* loss value
    (``pyro.infer.util.torch_item``), which a recorded graph computes from tensors instead."""

    _READS = frozenset({torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__float__,
                        torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.tolist,
                        torch.Tensor.numpy})

    def __init__(self):
        super().__init__()
        self.sites: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self._READS and not self.sites:
            where = reader()
            if where is not None:
                self.sites.append(where)
        return func(*args, **(kwargs or {}))


_TORCH_DIR = str(Path(torch.__file__).parent)
_PYRO_UTIL = str(Path(pyro.__file__).parent / "infer" / "util.py")


def reader() -> str | None:
    """``file:line`` of the innermost caller outside torch, or ``None`` for Pyro's
    ``torch_item`` (the reported loss value)."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith(_TORCH_DIR)
                                 or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is None:
        return None
    code = frame.f_code
    if code.co_filename == _PYRO_UTIL and code.co_name == "torch_item":
        return None
    return f"{Path(code.co_filename).name}:{frame.f_lineno} in {code.co_name}"
