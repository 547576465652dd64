"""Every private Pyro and torch name the recording wing uses, one function each.

A Pyro or torch upgrade that breaks the wing breaks here: read this file, not the wing. Each
entry says what it wraps and why no public name does the job (Pyro 1.9.2, torch 2.13).
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["CACHE_ENV", "COMPILING", "user_cache", "elbo_traces", "particle_surrogate", "elbo_trace", "is_op_overload", "op_schema",
           "tree_leaves", "tensor_version", "cpp_compiler", "compile_fx",
           "adam_step_dtype",
           "record", "record_fake", "compile_cache_dir", "compile_cache"]


# -- Pyro ------------------------------------------------------------------------------------
def elbo_traces(elbo, model, guide, args, kwargs) -> Iterator:
    """``ELBO._get_traces``: the (model trace, guide trace) pairs of each particle. Pyro has no
    public way to get an ELBO's traces with its own particle and plate-nesting handling."""
    return elbo._get_traces(model, guide, args, kwargs)


def elbo_trace(elbo, model, guide, args, kwargs):
    """``ELBO._get_trace``: one particle's traces (what Pyro's ELBOModule asks an ELBO for)."""
    return elbo._get_trace(model, guide, args, kwargs)


def particle_surrogate(elbo, model_trace, guide_trace) -> torch.Tensor:
    """``Trace_ELBO._differentiable_loss_particle``'s surrogate loss of one particle: the only
    place Pyro builds it (score-function terms included) without reading values on the host."""
    return elbo._differentiable_loss_particle(model_trace, guide_trace)[1]


# -- torch: graphs ---------------------------------------------------------------------------
def is_op_overload(target) -> bool:
    """Whether an FX node's target is an ATen overload (``torch._ops.OpOverload``; torch
    exports no public class for ATen ops)."""
    return isinstance(target, torch._ops.OpOverload)


def op_schema(target):
    """``OpOverload._schema``: the op's signature (mutability, aliasing of its arguments),
    which torch exposes nowhere else."""
    return target._schema


def tree_leaves(tree) -> list:
    """``torch.utils._pytree.tree_leaves`` (torch 2.13 has no public pytree module)."""
    import torch.utils._pytree as pytree

    return pytree.tree_leaves(tree)


def tensor_version(tensor: torch.Tensor) -> int:
    """``Tensor._version``: bumped by every in-place write, the only cheap way to see that a
    tensor the programs read was changed in place."""
    return tensor._version


def record(fn: Callable, *args) -> torch.fx.GraphModule:
    """``make_fx`` (``torch.fx.experimental``) of ``fn`` at the ATen level, forward and
    backward; its private ``_error_on_data_dependent_ops=False`` lets Pyro read the reported
    loss value while recording (the replays are checked against eager instead)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    return make_fx(fn, _error_on_data_dependent_ops=False)(*args)


# -- torch: Inductor -------------------------------------------------------------------------
#: Held by every compile of the wing: Inductor's ``config.patch`` keeps one global patcher, so
#: two compiles at once (a background one and ``jit="compile"``'s) would undo each other's
#: settings (``CURRENT_PATCHER is None``).
COMPILING = threading.RLock()


def cpp_compiler() -> str | None:
    """``torch._inductor.cpp_builder.get_cpp_compiler()``: the C++ compiler Inductor would
    use (raises when there is none); torch has no public probe."""
    from torch._inductor import cpp_builder

    return cpp_builder.get_cpp_compiler()


def compile_fx(graph: torch.fx.GraphModule, example: list, options: dict) -> Callable:
    """``torch._inductor.compile_fx.compile_fx`` under ``torch._inductor.config.patch`` and a
    ``torch._guards`` tracing context with a ``ShapeEnv`` (which the caches require):
    Inductor on an ATen graph without re-tracing it with dynamo (what ``torch.compile``'s
    backend calls once dynamo has traced)."""
    import torch._inductor.config as inductor_config
    from torch._guards import TracingContext, tracing
    from torch._inductor.compile_fx import compile_fx as inductor_compile_fx
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    # A tracing context with a shape environment, as dynamo gives Inductor: without one the
    # FX graph and AOT autograd caches are bypassed ("No shape env"), so nothing persists.
    context = TracingContext(FakeTensorMode(shape_env=ShapeEnv()))
    with COMPILING, inductor_config.patch(options), torch.no_grad(), tracing(context):
        return inductor_compile_fx(graph, example)


def adam_step_dtype() -> torch.dtype:
    """``torch.optim.adam._get_scalar_dtype(is_fused=True)``: the dtype torch's fused Adam
    keeps its step counter in (a state dict must look as torch's own)."""
    return importlib.import_module("torch.optim.adam")._get_scalar_dtype(is_fused=True)


# -- torch: the compile cache ----------------------------------------------------------------
#: Environment variable naming the folder of ppl-vae's persistent compile cache.
CACHE_ENV = "PPL_VAE_COMPILE_CACHE"


def compile_cache_dir() -> Path:
    """Where compiled graphs persist between runs: ``$PPL_VAE_COMPILE_CACHE``, else
    ``$XDG_CACHE_HOME/ppl-vae/inductor`` (``~/.cache/ppl-vae/inductor``)."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen:
        return Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ppl-vae" / "inductor"


def _inductor_default() -> str:
    """``torch._inductor.runtime.cache_dir_utils.default_cache_dir()``: the folder Inductor
    writes into ``TORCHINDUCTOR_CACHE_DIR`` itself on first use."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return os.path.abspath(default_cache_dir())


#: The user's own Inductor cache folder: the variable as set when ppl-vae was imported, unless
#: it is the default Inductor put there itself (torch's dynamo or Inductor ran first).
_USER_CACHE = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
if _USER_CACHE and os.path.abspath(_USER_CACHE) == _inductor_default():
    _USER_CACHE = None


def user_cache() -> str | None:
    """The user's own ``TORCHINDUCTOR_CACHE_DIR`` (as it was when ppl-vae was imported)."""
    return _USER_CACHE or None


@contextmanager
def compile_cache():
    """Inductor's FX graph cache and AOT autograd cache (``torch._inductor.config`` /
    ``torch._functorch.config``, on by default in torch 2.13) kept in :func:`compile_cache_dir`
    while the wing compiles (one compile at a time: :data:`COMPILING`). Inductor reads the folder
    from ``TORCHINDUCTOR_CACHE_DIR`` on each lookup; a user's own setting of it (when ppl-vae was
    imported) wins, and the variable is restored afterwards."""
    with COMPILING:
        if _USER_CACHE:
            yield
            return
        folder = compile_cache_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:  # read-only home: Inductor's own default (a temporary folder)
            yield
            return
        import torch._inductor.config as inductor_config

        before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
        try:
            with inductor_config.patch(fx_graph_cache=True):
                yield
        finally:
            if before is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


def record_fake(fn: Callable, example: list) -> torch.fx.GraphModule:
    """``make_fx(fn, tracing_mode="fake")`` (``torch.fx.experimental``): ``fn`` recorded on
    fake copies of ``example``, so that no op runs and no random number is drawn (safe in a
    worker thread while training draws from the same generator). The private
    ``_allow_non_fake_inputs``: the recorded graph's folded constants are real tensors."""
    from torch.fx.experimental.proxy_tensor import make_fx

    return make_fx(fn, tracing_mode="fake", _allow_non_fake_inputs=True)(*example)
