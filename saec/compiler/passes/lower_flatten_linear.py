"""NIR lowering: Flatten(C, H, W) + Linear(C*H*W -> n) is a full-kernel Conv2d, then the Flatten.

Flatten(C, H, W) + Linear(C*H*W -> n) == Conv2d(C -> n, kernel H x W) + Flatten,
the weight reshaped to [n, C, H, W]; the Flatten then moves on past
element-wise neurons, so a chain of linears becomes a chain of convolutions
(1 x 1 on n x 1 x 1 activations). What a Flatten does when it meets each op
type is one table, :data:`FLATTEN_MEETS`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from saec.compiler import ops
from saec.compiler.dispatch import OpTable
from saec.compiler.graph import IRGraph
from saec.compiler.passes.rewrite import move_after, only_user, record_lowering, shape_of, weight_transform
from saec.compiler.passes.shapes import infer_shapes

#: op type -> fn(graph, flatten node, its user, the C x H x W the flatten reads) -> True when it rewrote:
#: a Linear becomes a convolution (the Flatten moves after it), element-wise neurons let the Flatten
#: pass, any other op stops it (a Flatten left in front of an Unflatten is fold_reshapes' work; one
#: before anything else stays and is exported as NIR Flatten).
FLATTEN_MEETS: OpTable[Callable[[IRGraph, str, str, tuple[int, int, int]], bool]] = OpTable("NIR lowering")


@FLATTEN_MEETS.register(ops.Linear)
def _linear_to_conv(graph: IRGraph, flat: str, user: str, in_shape: tuple[int, int, int]) -> bool:
    op = graph.op(user)
    c, h, w = in_shape
    conv = ops.Conv2d(in_channels=c, out_channels=op.out_features, kernel_size=(h, w), stride=(1, 1),
                      padding=(0, 0), bias=op.bias, init_std_factor=op.init_std_factor)
    record_lowering(graph, user, conv, {"kind": "linear_to_conv", "in_shape": [c, h, w]})
    move_after(graph, flat, user)
    return True


@FLATTEN_MEETS.register(ops.LIF, ops.ReLU)
def _move_past(graph: IRGraph, flat: str, user: str, in_shape: tuple[int, int, int]) -> bool:
    # element-wise: each neuron alone, so a reshape commutes with it
    move_after(graph, flat, user)
    return True


@FLATTEN_MEETS.register(ops.Input, ops.Output, ops.PoissonEncode, ops.Conv2d, ops.ConvTranspose2d, ops.Flatten,
                        ops.Unflatten, ops.Reparameterize, ops.LeakyIntegrator, ops.SumPool2d,
                        ops.MaxCumulativeReadout)
def _stop(graph: IRGraph, flat: str, user: str, in_shape: tuple[int, int, int]) -> bool:
    return False


def commutes_with_reshape(op: ops.Op) -> bool:
    """True for element-wise ops (each neuron alone), which a reshape may move past."""
    return FLATTEN_MEETS.lookup(op) is _move_past


def lower_flatten_linear(graph: IRGraph) -> bool:
    """Rewrite Flatten(C, H, W) + Linear(C*H*W -> n) as Conv2d(C -> n, kernel H x W) + Flatten,
    and move each Flatten past element-wise neurons; repeat until nothing changes.

    The convolution's kernel is the linear weight reshaped to [n, C, H, W]. A
    Flatten that ends up in front of an Unflatten is left for
    :func:`~saec.compiler.passes.fold_reshapes.fold_reshapes`; one that ends in
    front of anything else (a graph with a flat output) stays and is exported as NIR Flatten.
    """
    changed = False
    progress = True
    while progress:
        progress = False
        for flat in list(graph.nodes(ops.Flatten)):
            in_shape = shape_of(graph, graph.inputs(flat)[0])
            user = only_user(graph, flat)
            if user is None or len(in_shape) != 3:
                continue
            if not FLATTEN_MEETS.lookup(graph.op(user), node=user)(graph, flat, user, in_shape):
                continue
            infer_shapes(graph)
            progress = changed = True
    return changed


@weight_transform("linear_to_conv")
def linear_to_conv(w: np.ndarray, step: Mapping[str, Any]) -> np.ndarray:
    """[n, C*H*W] -> [n, C, H, W]."""
    return w.reshape(w.shape[0], *step["in_shape"])
