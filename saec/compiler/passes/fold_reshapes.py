"""NIR lowering: a Flatten followed by an Unflatten back to the same shape (or the reverse) is the identity."""

from __future__ import annotations

from saec.compiler import ops
from saec.compiler.graph import IRGraph
from saec.compiler.passes.rewrite import bypass, only_user, shape_of
from saec.compiler.passes.shapes import infer_shapes

#: Reshape pairs that cancel when the second restores the shape the first read.
INVERSE_PAIRS = {(ops.Flatten, ops.Unflatten), (ops.Unflatten, ops.Flatten)}


def fold_reshapes(graph: IRGraph) -> bool:
    """Remove Flatten -> Unflatten pairs that restore the shape, and Unflatten -> Flatten pairs."""
    changed = False
    progress = True
    while progress:
        progress = False
        for first in graph.order():
            if first not in graph or type(graph.op(first)) not in (ops.Flatten, ops.Unflatten):
                continue
            second = only_user(graph, first)
            if second is None:
                continue
            pair = (type(graph.op(first)), type(graph.op(second)))
            before = shape_of(graph, graph.inputs(first)[0])
            if pair in INVERSE_PAIRS and shape_of(graph, second) == before:
                bypass(graph, second)
                bypass(graph, first)
                progress = changed = True
                break
    if changed:
        infer_shapes(graph)
    return changed
