"""Trace a Pyro loss once per input signature and replay it as one flat graph of tensor ops.

A Pyro step spends most of its Python time in effect handlers, trace bookkeeping and
distribution objects, not in tensor arithmetic. :class:`TraceOnce` runs the loss *and its
gradient* once under ``torch.fx``'s ``make_fx`` (tracing at the ATen level, so the backward pass
is recorded too), drops dead code, and afterwards calls the recorded graph directly: no handlers,
no ``Trace`` objects, no autograd graph to build. :class:`_Replay` hands the recorded gradients
to autograd, so ``loss.backward()`` and any torch optimizer work unchanged.

Why not the alternatives: ``torch.jit.trace`` (which Pyro's ``JitTrace*_ELBO`` use) is
deprecated in current torch, and Pyro 1.9.2's ``JitTraceMeanField_ELBO`` re-traces on every
step and leaks memory. ``torch.compile`` of a Pyro program compiles for a minute or more on a
small CPU and breaks the graph at every handler; it can still be applied to the recorded graph
(``backend=``) when the compile time pays off.

Contract (the same as Pyro's JIT ELBOs): the programs must have a static structure for a given
input signature; no Python control flow on tensor values, no ``.item()`` that changes what is
computed. The second call of every new signature (the first on a batch other than the recorded
one) is checked against an eager evaluation with the same random numbers, and a mismatch raises
``ValueError`` instead of training on a wrong graph.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import pyro
import torch
from pyro import poutine
from torch.fx.experimental.proxy_tensor import make_fx

__all__ = ["TraceOnce", "simplify"]


def _signature(value) -> tuple:
    if isinstance(value, torch.Tensor):
        return ("T", tuple(value.shape), value.dtype, value.device, value.requires_grad)
    return ("V", type(value), repr(value))


class _Replay(torch.autograd.Function):
    """Autograd node whose forward runs a recorded loss-and-gradient graph.

    The gradients are already computed in the forward; backward only scales them by the
    incoming gradient (1 for ``loss.backward()``).
    """

    @staticmethod
    def forward(ctx, graph, num_leaves, *inputs):
        outputs = graph(list(inputs[:num_leaves]), list(inputs[num_leaves:]))
        ctx.grads = outputs[1:]
        ctx.num_args = len(inputs) - num_leaves
        return outputs[0]

    @staticmethod
    def backward(ctx, grad_loss):
        grads, ctx.grads = ctx.grads, None
        # loss.backward() seeds 1. Skipping the product saves a full pass (and, on the CPU, a
        # fresh allocation per gradient); reading the seed costs nothing on the CPU, where it
        # lives, while on an accelerator the product is cheaper than a synchronisation.
        if grad_loss.device.type == "cpu" and bool(grad_loss == 1):
            return (None, None, *grads, *([None] * ctx.num_args))
        scaled = [None if g is None else g * grad_loss for g in grads]
        return (None, None, *scaled, *([None] * ctx.num_args))


class _Entry:
    """One recorded graph, the parameter names it reads, and how often it has been replayed
    (the second call, the first on a batch other than the recorded one, is checked)."""

    def __init__(self, graph, names, module_params, with_grad):
        self.graph = graph
        self.names = names
        self.module_params = module_params
        self.with_grad = with_grad
        self.calls = 0


class TraceOnce:
    """Record ``fn(*args)`` (a 0-dim loss built from Pyro programs) once per input signature.

    Parameters
    ----------
    fn : callable
        ``fn(*args) -> torch.Tensor`` (0-dim); it may read ``pyro.param`` sites, ``PyroModule``
        and ``torch.nn.Module`` parameters, and draw random numbers (recorded as ops, so every
        replay draws fresh ones from torch's generator).
    programs : sequence of callables
        The model and guide ``fn`` runs. Parameters of those that are ``torch.nn.Module``s are
        graph inputs even when they never pass through the param store.
    max_entries : int
        At most this many graphs are kept (least recently used dropped), so a stream of new
        shapes cannot grow memory without bound.
    backend : str, optional
        Passed to ``torch.compile`` on the recorded graph (e.g. ``"inductor"``); ``None`` replays
        the graph as recorded.

    Notes
    -----
    Calls made while a Pyro effect handler is active (``poutine.trace``, ``poutine.condition``,
    ...) run ``fn`` eagerly: a recorded graph would bypass the handler.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], programs: Sequence, *,
                 max_entries: int = 8, backend: str | None = None):
        self.fn = fn
        self.programs = list(programs)
        self.max_entries = int(max_entries)
        self.backend = backend
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self.num_traces = 0

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        if poutine.runtime.am_i_wrapped() or any(
            isinstance(v, torch.Tensor) for v in kwargs.values()
        ):
            return self.fn(*args, **kwargs)
        with_grad = torch.is_grad_enabled()
        key = (with_grad, tuple(_signature(a) for a in args),
               tuple((k, _signature(v)) for k, v in sorted(kwargs.items())))
        entry = self._entries.get(key)
        if entry is None:
            entry = self._record(args, kwargs, with_grad)
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        leaves = _leaves(entry.names, entry.module_params)
        if leaves is None:  # a parameter was deleted or renamed: record again
            del self._entries[key]
            return self(*args, **kwargs)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        entry.calls += 1
        if entry.calls == 2:
            return self._checked_replay(entry, leaves, args, kwargs, tensors)
        return self._replay(entry, leaves, tensors)

    # -- recording -------------------------------------------------------------------------
    def _module_params(self) -> list[torch.Tensor]:
        found: dict[int, torch.Tensor] = {}
        for program in self.programs:
            if isinstance(program, torch.nn.Module):
                for p in program.parameters():
                    if p.requires_grad:
                        found.setdefault(id(p), p)
        return list(found.values())

    def _record(self, args, kwargs, with_grad: bool) -> _Entry:
        # One eager run (random state restored afterwards) creates lazily built parameters,
        # lets the ELBO guess max_plate_nesting, and names the param sites the graph reads.
        # Same grad mode as the call: some ELBOs (TraceEnum_ELBO) refuse a loss without grad.
        with torch.random.fork_rng(devices=_cuda_devices(args)), _grad_mode(with_grad):
            with poutine.trace(param_only=True) as capture:
                self.fn(*args, **kwargs)
        names = list(dict.fromkeys(capture.trace.nodes))
        # Torch modules' parameters are looked up once (walking the modules costs more than a
        # small model's step); load_state_dict and optimizers update them in place.
        module_params = self._module_params()
        leaves = _leaves(names, module_params)
        with_grad = with_grad and bool(leaves)  # nothing to differentiate: a forward graph
        tensor_positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

        def loss_and_grads(leaves, tensors):
            call_args = list(args)
            for i, t in zip(tensor_positions, tensors, strict=True):
                call_args[i] = t
            loss = self.fn(*call_args, **kwargs)
            if not with_grad:
                return (loss.detach(),)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            return (loss.detach(), *grads)

        tensors = [args[i] for i in tensor_positions]
        # Pyro's ELBOs read .item() for the *reported* loss value in places; that value is
        # not what the recorded graph returns (see ppl_vae.estimators.jit), so data-dependent
        # reads are allowed while recording and the first replay is checked instead.
        with pyro.validation_enabled(False), _grad_mode(with_grad), torch.random.fork_rng(
            devices=_cuda_devices(args)
        ):
            graph = make_fx(loss_and_grads, _error_on_data_dependent_ops=False)(leaves, tensors)
        graph.graph.eliminate_dead_code()
        while simplify(graph.graph):  # a rewrite can expose another (a dropped view)
            pass
        graph.recompile()
        if self.backend is not None:
            graph = torch.compile(graph, backend=self.backend, fullgraph=True, dynamic=False)
        self.num_traces += 1
        return _Entry(graph, names, module_params, with_grad)

    # -- replay ----------------------------------------------------------------------------
    def _replay(self, entry: _Entry, leaves, tensors) -> torch.Tensor:
        if entry.with_grad:
            return _Replay.apply(entry.graph, len(leaves), *leaves, *tensors)
        return entry.graph(leaves, tensors)[0]

    def _checked_replay(self, entry: _Entry, leaves, args, kwargs, tensors) -> torch.Tensor:
        with torch.random.fork_rng(devices=_cuda_devices(args)), _grad_mode(entry.with_grad):
            with pyro.validation_enabled(False):
                eager = self.fn(*args, **kwargs).detach()
        # fork_rng restored the generator: the replay draws the same numbers as the eager run.
        loss = self._replay(entry, leaves, tensors)
        tol = 1e3 * torch.finfo(eager.dtype).eps * (1.0 + eager.abs())
        if not bool((loss.detach() - eager).abs() <= tol):
            raise ValueError(
                "jit=True: the recorded graph gave a different loss than the eager program "
                f"({float(loss.detach()):.6g} vs {float(eager):.6g}) on a new batch of the same shape. "
                "The model or guide must have a static structure (no Python branches on tensor "
                "values, no .item() that changes the computation); use jit=False for it."
            )
        return loss


_aten = torch.ops.aten
_SUMS = (_aten.sum.default, _aten.sum.dim_IntList)
_SHAPE_ONLY = (_aten.view.default, _aten.reshape.default, _aten.expand.default)


def _val(node):
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _mutates(node) -> bool:
    target = node.target
    return node.op != "call_function" or (
        isinstance(target, torch._ops.OpOverload) and target._schema.is_mutable)


def simplify(graph: torch.fx.Graph) -> int:
    """Rewrites that are exact in floating point and save full passes over large tensors.

    - ``view``/``reshape``/``expand`` to the shape the tensor already has: dropped.
    - ``sum(neg(x))`` -> ``neg(sum(x))``: negation commutes exactly with rounding.
    - ``neg(expand(a))`` -> ``expand(neg(a))``: negate the small tensor, not its broadcast
      (only when no consumer mutates or returns the result, which becomes a view).

    - identities left by Pyro's bookkeeping: ``x + 0``, ``x - 0``, ``x * 1``, ``x / 1``,
      ``x ** 1``, ``t(t(x))``, ``neg(neg(x))``, ``detach`` (the replay runs without autograd):
      dropped when the result has the shape and dtype of ``x``.

    Returns the number of rewrites.
    """
    done = 0
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        same = _identity_of(node)
        if same is not None:
            node.replace_all_uses_with(same)
            graph.erase_node(node)
            done += 1
            continue
        if node.target in _SHAPE_ONLY:
            src, out = _val(node.args[0]), _val(node)
            if (src is not None and out is not None and src.shape == out.shape
                    and not any(_mutates(u) for u in node.users)):
                node.replace_all_uses_with(node.args[0])
                graph.erase_node(node)
                done += 1
            continue
        if node.target is not _aten.neg.default:
            continue
        (src,) = node.args
        users = list(node.users)
        if len(users) == 1 and users[0].target in _SUMS and users[0].args[0] is node:
            total = users[0]
            with graph.inserting_after(total):
                negated = graph.call_function(_aten.neg.default, (total,))
            negated.meta.update(total.meta)
            total.replace_all_uses_with(negated, delete_user_cb=lambda n, keep=negated: n is not keep)
            total.args = (src, *total.args[1:])
            graph.erase_node(node)
            done += 1
        elif (isinstance(src, torch.fx.Node) and src.target is _aten.expand.default
              and not any(_mutates(u) for u in users)):
            with graph.inserting_before(node):
                small = graph.call_function(_aten.neg.default, (src.args[0],))
                wide = graph.call_function(_aten.expand.default, (small, *src.args[1:]), src.kwargs)
            small.meta["val"] = _val(src.args[0])
            wide.meta.update(node.meta)
            node.replace_all_uses_with(wide)
            graph.erase_node(node)
            if not src.users:
                graph.erase_node(src)
            done += 1
    return done


_NEUTRAL = {_aten.add.Tensor: 0, _aten.sub.Tensor: 0, _aten.mul.Tensor: 1, _aten.div.Tensor: 1,
            _aten.pow.Tensor_Scalar: 1}
_INVOLUTIONS = (_aten.t.default, _aten.neg.default)


def _identity_of(node):
    """The node ``node`` computes the value of, if it is an identity (see :func:`simplify`)."""
    args, target = node.args, node.target
    if node.kwargs or not args or not isinstance(args[0], torch.fx.Node):
        return None
    if target in _NEUTRAL:
        other = args[1] if len(args) == 2 else None
        if isinstance(other, bool) or not isinstance(other, int | float) or other != _NEUTRAL[target]:
            return None
        same = args[0]
    elif target in _INVOLUTIONS and args[0].target is target and not args[0].kwargs:
        same = args[0].args[0]
    elif target is _aten.detach.default and args[0].op == "call_function":
        same = args[0]
    else:
        return None
    mine, theirs = _val(node), _val(same)
    if (mine is None or theirs is None or mine.shape != theirs.shape
            or mine.dtype != theirs.dtype or any(_mutates(u) for u in node.users)):
        return None
    return same


def _grad_mode(enabled: bool):
    return torch.enable_grad() if enabled else torch.no_grad()


def _leaves(names, module_params) -> list[torch.Tensor] | None:
    """The trainable tensors a recorded graph takes, in recording order: the param store's
    current tensors for ``names`` (looked up on every call, so a replaced entry is seen), then
    the torch modules' parameters. ``None`` when a name has disappeared from the store."""
    store = dict(pyro.get_param_store().named_parameters())
    leaves: dict[int, torch.Tensor] = {}
    for name in names:
        leaf = store.get(name)
        if leaf is None:
            return None
        if leaf.requires_grad:
            leaves.setdefault(id(leaf), leaf)
    for p in module_params:
        leaves.setdefault(id(p), p)
    return list(leaves.values())


def _cuda_devices(args) -> list:
    return sorted({a.device.index or 0 for a in args
                   if isinstance(a, torch.Tensor) and a.device.type == "cuda"})
