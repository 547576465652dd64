"""Inductor for a recorded graph (:class:`ppl_vae.recording.compile.TraceOnce` with
``backend="inductor"``, ``jit="compile"``), and whether this machine can build its CPU code."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ppl_vae.recording.private import cpp_compiler

__all__ = ["inductor_unavailable"]


def _compiled(graph: torch.fx.GraphModule, backend: str, device) -> Callable:
    # Torch's own generator for random ops (fallback_random): the compiled step draws the same
    # numbers as eager, so the first-call check compares like with like and seeds mean the same.
    options = {"fallback_random": True} if backend == "inductor" else None
    cuda_graphs = backend == "inductor" and device is not None and device.type == "cuda"
    if cuda_graphs:
        # Small batches on a GPU are launch-bound: CUDA graphs replay all kernels at once.
        options["triton.cudagraphs"] = True
    elif backend == "inductor":
        # The CPU kernels and their calls in one C++ library: one compiler run instead of one
        # per kernel (a third less compile time on the digits VAE), no Python between kernels.
        options["cpp_wrapper"] = True
    compiled = torch.compile(graph, backend=backend, fullgraph=True, dynamic=False,
                             options=options)
    if not cuda_graphs:
        return compiled

    def run(leaves, tensors):
        # A CUDA graph's outputs live in its pool and are overwritten by the next replay; the
        # gradients are handed to the optimizer, so they are copied out.
        torch.compiler.cudagraph_mark_step_begin()
        return [None if o is None else o.clone() for o in compiled(leaves, tensors)]

    return run


def inductor_unavailable() -> str | None:
    """Why ``torch.compile(backend="inductor")`` cannot build CPU code here, or ``None``."""
    try:
        compiler = cpp_compiler()
    except Exception as error:  # noqa: BLE001 - any failure means no C++ compiler is usable
        return f"no C++ compiler for Inductor ({type(error).__name__}: {_first_line(error)})"
    return None if compiler else "no C++ compiler for Inductor"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else ""
