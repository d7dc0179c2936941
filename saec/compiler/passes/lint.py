"""Lint: structural invariants of a compiled graph."""

from __future__ import annotations

import networkx as nx

from saec.compiler import ops
from saec.compiler.errors import CompileError
from saec.compiler.graph import IRGraph
from saec.compiler.passes.shapes import fmt, output_shape


def lint(graph: IRGraph) -> bool:
    """Check: acyclic; one Input and one Output; every edge's shapes agree; an
    auto-encoder's output shape equals its input shape. Never changes the graph."""
    if not nx.is_directed_acyclic_graph(graph.nx):
        cycle = " -> ".join(a for a, _ in nx.find_cycle(graph.nx))
        raise CompileError(f"the graph has a cycle: {cycle}")
    for kind in (ops.Input, ops.Output):
        found = list(graph.nodes(kind))
        if len(found) != 1:
            raise CompileError(f"expected exactly one {kind.type} node, found {len(found)}")
    for name in graph.order():
        ins = graph.inputs(name)
        if not ins:
            if not isinstance(graph.op(name), ops.Input):
                raise CompileError("has no input", node=name)
            continue
        src_shape = tuple(graph.meta(ins[0])["shape"])
        expected = output_shape(graph.op(name), src_shape, name)
        if expected != tuple(graph.meta(name)["shape"]):
            raise CompileError(
                f"edge `{ins[0]}` -> `{name}`: `{ins[0]}` gives {fmt(src_shape)}, so `{name}` should give "
                f"{fmt(expected)} but records {fmt(tuple(graph.meta(name)['shape']))}",
                node=name,
            )
    (inp,), (out,) = graph.nodes(ops.Input), graph.nodes(ops.Output)
    in_shape, out_shape = tuple(graph.meta(inp)["shape"]), tuple(graph.meta(out)["shape"])
    if in_shape != out_shape:
        last = graph.inputs(out)[0]
        while "layer" not in graph.meta(last) and graph.inputs(last):
            last = graph.inputs(last)[0]
        layer = graph.meta(last).get("layer", last)
        raise CompileError(
            f"the decoder's output shape {fmt(out_shape)} differs from the input shape {fmt(in_shape)}"
            " (an auto-encoder must reconstruct its input)",
            node=layer,
        )
    return False
