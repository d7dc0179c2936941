"""Parameter count of every weighted node into ``meta['params']``."""

from __future__ import annotations

import math

from saec.compiler import ops
from saec.compiler.graph import IRGraph


def weight_shapes(op: ops.Op) -> dict[str, tuple[int, ...]]:
    """Shapes of the trainable tensors of ``op``, keyed ``weight`` / ``bias`` (torch layout)."""
    if isinstance(op, ops.Conv2d):
        shapes = {"weight": (op.out_channels, op.in_channels, *op.kernel_size)}
        out = op.out_channels
    elif isinstance(op, ops.ConvTranspose2d):
        shapes = {"weight": (op.in_channels, op.out_channels, *op.kernel_size)}
        out = op.out_channels
    elif isinstance(op, ops.Linear):
        shapes = {"weight": (op.out_features, op.in_features)}
        out = op.out_features
    else:
        return {}
    if op.bias:
        shapes["bias"] = (out,)
    return shapes


def count_params(graph: IRGraph) -> bool:
    changed = False
    for name in graph.order():
        n = sum(math.prod(s) for s in weight_shapes(graph.op(name)).values())
        if graph.meta(name).get("params") != n:
            graph.meta(name)["params"] = n
            changed = True
    return changed
