"""Exact rewrites of a recorded ``torch.fx`` graph (:func:`simplify`), used by
:class:`ppl_vae.estimators.compile.TraceOnce` after recording: they drop Pyro's bookkeeping
identities and save full passes over large tensors, without changing a single bit of the result."""

from __future__ import annotations

import torch

__all__ = ["simplify"]

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
