"""Parameter count of every weighted node into ``meta['params']``.

The trainable tensors of each op type are one table, :data:`WEIGHT_SHAPES`.
"""

from __future__ import annotations

import math
from typing import Callable

from saec.compiler import ops
from saec.compiler.dispatch import OpTable
from saec.compiler.graph import IRGraph

Shapes = dict[str, tuple[int, ...]]

#: op -> its trainable tensors' shapes, keyed ``weight`` / ``bias`` (torch layout); {} for ops without weights.
WEIGHT_SHAPES: OpTable[Callable[[ops.Op], Shapes]] = OpTable("weight shapes")


def _with_bias(op: ops.Op, weight: tuple[int, ...], out: int) -> Shapes:
    return {"weight": weight, "bias": (out,)} if op.bias else {"weight": weight}


@WEIGHT_SHAPES.register(ops.Conv2d)
def _conv2d(op: ops.Conv2d) -> Shapes:
    return _with_bias(op, (op.out_channels, op.in_channels, *op.kernel_size), op.out_channels)


@WEIGHT_SHAPES.register(ops.ConvTranspose2d)
def _conv_transpose2d(op: ops.ConvTranspose2d) -> Shapes:
    return _with_bias(op, (op.in_channels, op.out_channels, *op.kernel_size), op.out_channels)


@WEIGHT_SHAPES.register(ops.Linear)
def _linear(op: ops.Linear) -> Shapes:
    return _with_bias(op, (op.out_features, op.in_features), op.out_features)


@WEIGHT_SHAPES.register(ops.Input, ops.Output, ops.PoissonEncode, ops.Flatten, ops.Unflatten, ops.LIF, ops.ReLU,
                        ops.Reparameterize, ops.LeakyIntegrator, ops.SumPool2d, ops.MaxCumulativeReadout)
def _no_weights(op: ops.Op) -> Shapes:
    return {}


def weight_shapes(op: ops.Op) -> Shapes:
    """Shapes of the trainable tensors of ``op``, keyed ``weight`` / ``bias`` (torch layout)."""
    return WEIGHT_SHAPES.lookup(op)(op)


def count_params(graph: IRGraph) -> bool:
    changed = False
    for name in graph.order():
        n = sum(math.prod(s) for s in weight_shapes(graph.op(name)).values())
        if graph.meta(name).get("params") != n:
            graph.meta(name)["params"] = n
            changed = True
    return changed
