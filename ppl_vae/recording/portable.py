"""A recorded graph as plain data, for the background compile's worker process.

Why not ``pickle.dumps(graph_module)``: unpickling a ``torch.fx.GraphModule`` re-creates it by
tracing its Python code with FX's symbolic tracer, and that tracer *runs* every call whose
arguments hold no traced value. In a recorded step, the guide's noise is exactly such a call
(``aten.empty`` then ``aten.normal_``): unpickling drew the numbers once, in the unpickling
process, and folded them into the graph as a constant. The worker then compiled a step whose
noise never changed, the first-step check refused it ("the compiled step disagreed with the
recorded one"), and the draw in the training process shifted its random stream. Here the graph
travels as its node list and is rebuilt node by node: nothing runs, nothing is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.fx import Graph, GraphModule, Node
from torch.fx.node import map_arg

from ppl_vae.recording.private import is_op_overload

__all__ = ["PortableGraph", "portable", "rebuild"]


@dataclass(frozen=True)
class _Ref:
    """A node's argument that is another node, by name."""
    name: str


@dataclass(frozen=True)
class _Op:
    """An ATen overload by its qualified name (``"aten.normal_.default"``): overloads do not
    pickle."""
    qualified: str

    def resolve(self):
        target = torch.ops
        for part in self.qualified.split("."):
            target = getattr(target, part)
        return target


@dataclass(frozen=True)
class PortableGraph:
    """A ``GraphModule``'s nodes ``(op, name, target, args, kwargs)`` and its tensor attributes
    (the recording's folded constants), all picklable."""
    nodes: tuple
    attributes: dict


def portable(module: GraphModule) -> PortableGraph:
    """The nodes and constants of ``module`` (a flat recorded graph: placeholders, ATen calls,
    ``get_attr`` of tensors, one output) as plain data."""
    nodes, attributes = [], {}
    for node in module.graph.nodes:
        target = node.target
        if node.op == "get_attr":
            attributes[target] = getattr(module, target).detach().clone()
        elif node.op == "call_function" and is_op_overload(target):
            target = _Op(str(target))
        elif node.op not in ("placeholder", "output", "call_function"):
            raise ValueError(f"a recorded graph holds a {node.op!r} node ({node.name}); only "
                             "functions, constants, inputs and the output travel")
        args = map_arg(node.args, lambda n: _Ref(n.name))
        kwargs = map_arg(node.kwargs, lambda n: _Ref(n.name))
        nodes.append((node.op, node.name, target, args, kwargs))
    return PortableGraph(tuple(nodes), attributes)


def rebuild(data: PortableGraph) -> GraphModule:
    """The ``GraphModule`` of :func:`portable`'s data, node by node (nothing runs)."""
    graph, made = Graph(), {}

    def resolve(value):
        if isinstance(value, _Ref):
            return made[value.name]
        if isinstance(value, (tuple, list)):
            return type(value)(resolve(v) for v in value)
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, slice):
            return slice(resolve(value.start), resolve(value.stop), resolve(value.step))
        return value

    for op, name, target, args, kwargs in data.nodes:
        if isinstance(target, _Op):
            target = target.resolve()
        node: Node = graph.create_node(op, target, resolve(args), resolve(kwargs), name=name)
        made[name] = node
    root = torch.nn.Module()
    for name, tensor in data.attributes.items():
        root.register_buffer(name, tensor)
    module = GraphModule(root, graph)
    module.recompile()
    return module
