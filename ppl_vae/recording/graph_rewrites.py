"""Exact rewrites of a recorded ``torch.fx`` graph (:func:`simplify`), used by
:class:`ppl_vae.recording.compile.TraceOnce` after recording: they drop Pyro's bookkeeping
identities and save full passes over large tensors, without changing a single bit of the result."""

from __future__ import annotations

import operator

import torch
from torch.fx.node import map_arg

from ppl_vae.recording.private import is_op_overload, op_schema, tree_leaves

__all__ = ["simplify", "fold_constants", "merge_duplicates"]

_aten = torch.ops.aten
_SUMS = (_aten.sum.default, _aten.sum.dim_IntList)
_SHAPE_ONLY = (_aten.view.default, _aten.reshape.default, _aten.expand.default)


def _val(node):
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _mutates(node) -> bool:
    target = node.target
    return node.op != "call_function" or (
        is_op_overload(target) and op_schema(target).is_mutable)


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
    mutated = _mutated(graph)  # x * 1 -> x is exact only if x is not written in place later
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        same = None if node in mutated else _identity_of(node)
        if same is not None and same not in mutated:
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
        if len(args) != 2 or not _neutral_operand(args[1], target):
            return None
        same = args[0]
    elif target in _INVOLUTIONS and args[0].target is target and not args[0].kwargs:
        same = args[0].args[0]
    elif target is _aten.detach.default and args[0].op == "call_function":
        same = args[0]
    else:
        return None
    mine, theirs = _val(node), _val(same)
    # t(t(x)) and detach(x) are views of x already: returning x aliases nothing new. An
    # arithmetic identity's result is a fresh tensor: returned or mutated, it must stay one.
    view = target is _aten.t.default or target is _aten.detach.default
    if (mine is None or theirs is None or mine.shape != theirs.shape
            or mine.dtype != theirs.dtype
            or any(_mutates(u) and not (view and u.op == "output") for u in node.users)):
        return None
    return same


def _neutral_operand(node, target) -> bool:
    """Whether ``node`` is a folded constant tensor filled with ``target``'s neutral element
    (``x * ones``, ``x / ones``, ``x - zeros``, ``x + zeros``: Pyro's standard-normal priors)."""
    if isinstance(node, bool):  # x * True: a type promotion, not an identity
        return False
    if isinstance(node, int | float):
        return node == _NEUTRAL[target]
    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        return False
    value = getattr(node.graph.owning_module, node.target, None)
    return (isinstance(value, torch.Tensor) and value.numel() > 0
            and bool((value == _NEUTRAL[target]).all()))


# Ops that take a tensor only for its shape, dtype and device, fixed for a recorded signature.
_FACTORIES = {_aten.new_zeros.default, _aten.new_ones.default, _aten.new_full.default,
              _aten.zeros_like.default, _aten.ones_like.default, _aten.full_like.default,
              _aten.full.default, _aten.zeros.default, _aten.ones.default,
              _aten.scalar_tensor.default}
# Uninitialised memory: its "value" is whatever the allocator returns.
_UNDEFINED = {_aten.empty.memory_format, _aten.empty_like.default, _aten.new_empty.default,
              _aten.empty_strided.default, _aten.new_empty_strided.default}


def _is_pure(target) -> bool:
    if target is operator.getitem:
        return True
    return (is_op_overload(target) and not op_schema(target).is_mutable
            and torch.Tag.nondeterministic_seeded not in target.tags and target not in _UNDEFINED)


def _stand_in(node) -> torch.Tensor:
    """A tensor with the shape, strides, dtype and device of ``node``'s recorded value (what a
    factory reads of its argument); its values are never read."""
    val = _val(node)
    return torch.empty_strided(val.shape, val.stride(), dtype=val.dtype, device=val.device)


def _writes_and_views(node):
    """(the argument nodes ``node`` writes to, the argument node its result aliases or None),
    from the op's schema (``Tensor(a!) self`` is written; a return ``Tensor(a)`` is a view)."""
    target = node.target
    if target is operator.getitem:  # an element of a multi-output op (split): same storage
        return [], node.args[0] if isinstance(node.args[0], torch.fx.Node) else None
    if not is_op_overload(target):
        return [], None
    schema = op_schema(target)
    written, source = [], None
    for i, argument in enumerate(schema.arguments):
        value = node.args[i] if i < len(node.args) else node.kwargs.get(argument.name)
        info = argument.alias_info
        if info is None or not isinstance(value, torch.fx.Node):
            continue
        if info.is_write:
            written.append(value)
        if any(r.alias_info is not None and r.alias_info.before_set & info.before_set
               for r in schema.returns):
            source = value  # a view, or an in-place op's result: the argument's storage
    return written, source


def _mutated(graph: torch.fx.Graph) -> set:
    """Every node whose tensor is written in place somewhere in the graph, with everything that
    shares its storage (views of it, and what it is a view of)."""
    group: dict = {}

    def root(n):
        while group.get(n, n) is not n:
            n = group[n]
        return n

    written = []
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        writes, source = _writes_and_views(node)
        written += writes
        if source is not None:
            group[root(node)] = root(source)
    dirty = {root(n) for n in written}
    return {n for n in graph.nodes if root(n) in dirty}


def fold_constants(gm: torch.fx.GraphModule, inputs) -> int:
    """Compute once, at recording, every node whose value does not depend on the values of the
    graph's inputs, and read it from the module afterwards.

    A recorded Pyro step builds tensors that depend only on the signature it was recorded for:
    the standard-normal prior's ``new_zeros`` / ``new_ones`` and their broadcasts, and the
    backward pass's seed ``ones_like(loss)`` with every scale, expand and negation applied to it
    (about a dozen ops of the 105 in the digits VAE's step). Each is the same tensor on every
    call, so it is evaluated here with the same ops, bit for bit, and stored. Random and
    in-place ops, uninitialised memory and any tensor written in place later (or sharing storage
    with one) are never folded. ``inputs``: the example inputs the
    graph was recorded with (flattened in the order of its placeholders).

    Returns the number of nodes replaced by a stored constant.
    """
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    flat = tree_leaves(inputs)
    if len(flat) != len(placeholders):
        return 0
    real = dict(zip(placeholders, flat, strict=True))
    # A fresh tensor that an in-place op fills (zeros, then scatter_: a one-hot) is per call.
    mutated = _mutated(graph)
    values: dict = {}
    for node in graph.nodes:
        if node.op != "call_function" or not _is_pure(node.target) or node in mutated:
            continue
        inputs_of = node.all_input_nodes
        if node.target in _FACTORIES or (inputs_of and all(n in values for n in inputs_of)):
            def value_of(n):
                return values[n] if n in values else real[n] if n in real else _stand_in(n)

            args, kwargs = map_arg(node.args, value_of), map_arg(node.kwargs, value_of)
            values[node] = node.target(*args, **kwargs)
    done = 0
    for node, value in values.items():
        if not isinstance(value, torch.Tensor) or all(u in values for u in node.users):
            continue
        name = f"_folded_{done}"
        while hasattr(gm, name):
            name += "_"
        gm.register_buffer(name, value.detach(), persistent=False)
        with graph.inserting_before(node):
            stored = graph.get_attr(name)
        stored.meta.update(node.meta)
        node.replace_all_uses_with(stored)
        done += 1
    if done:
        graph.eliminate_dead_code()
    return done


def _hashable(value):
    if isinstance(value, list | tuple):
        return (type(value).__name__, *(_hashable(v) for v in value))
    if isinstance(value, dict):
        return ("dict", *sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, float) and value != value:  # NaN != NaN: never a key match
        return ("nan", id(value))
    return (type(value).__name__, value) if not isinstance(value, torch.fx.Node) else value


def merge_duplicates(graph: torch.fx.Graph) -> int:
    """Common subexpressions: a pure, deterministic op applied twice to the same arguments is
    computed once (Pyro's ELBOs score a site once for the loss's value and once for its
    surrogate: the same sum, scale and log-density ops, twice). Exact: the same op on the same
    tensors gives the same bits. Returns the number of nodes merged."""
    seen: dict = {}
    done = 0
    mutated = _mutated(graph)  # the same op on a tensor written in between is not the same
    for node in list(graph.nodes):
        if (node.op != "call_function" or not _is_pure(node.target) or node in mutated
                or any(n in mutated for n in node.all_input_nodes)):
            continue
        try:
            key = (node.target, _hashable(node.args), _hashable(node.kwargs))
            hash(key)
        except TypeError:
            continue
        first = seen.setdefault(key, node)
        if first is not node:
            node.replace_all_uses_with(first)
            graph.erase_node(node)
            done += 1
    return done
