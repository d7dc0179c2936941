"""NIR lowering: Linear(n -> C*H*W) + Unflatten(C, H, W) is a full-kernel Conv2d on an n x 1 x 1 input.

Linear(n -> C*H*W) [+ element-wise neurons] + Unflatten(C, H, W) ==
Unflatten(n, 1, 1) + Conv2d(n -> C, kernel H x W, padding (H-1, W-1)) [+ neurons],
the weight reshaped to [C, n, H, W] and flipped; exact.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from saec.compiler import ops
from saec.compiler.errors import CompileError
from saec.compiler.graph import IRGraph
from saec.compiler.passes.lower_flatten_linear import commutes_with_reshape
from saec.compiler.passes.rewrite import detach, insert_after, only_user, record_lowering, weight_transform
from saec.compiler.passes.shapes import infer_shapes


def lower_linear_unflatten(graph: IRGraph) -> bool:
    """Rewrite Linear(n -> C*H*W) [+ element-wise neurons] + Unflatten(C, H, W) as
    Unflatten(n, 1, 1) + Conv2d(n -> C, kernel H x W, padding (H-1, W-1)) [+ neurons].

    On an n x 1 x 1 input padded by (H-1, W-1), output (c, h, w) of the
    convolution sees input i only through kernel tap (H-1-h, W-1-w), so the
    kernel is the linear weight reshaped to [C, H, W, n], moved to [C, n, H, W]
    and flipped.

    Raises:
        CompileError: the linear has a bias (one per output position; a
            convolution's bias is one per channel).
    """
    changed = False
    for unflat in list(graph.nodes(ops.Unflatten)):
        target = tuple(graph.op(unflat).shape)
        if len(target) != 3:
            continue
        # Walk back over element-wise neurons that feed only this chain.
        src = graph.inputs(unflat)[0]
        while commutes_with_reshape(graph.op(src)) and only_user(graph, src) is not None:
            src = graph.inputs(src)[0]
        if type(graph.op(src)) is not ops.Linear or only_user(graph, src) is None:
            continue
        linear, op = src, graph.op(src)
        if op.bias:
            raise CompileError(
                "a linear layer with a bias followed by an unflatten has no NIR equivalent (its bias is one "
                "per output position; the convolution it lowers to has one per channel)", node=linear)
        c, h, w = target
        n = op.in_features
        # Unflatten moves in front of the linear and now shapes its input as n x 1 x 1.
        detach(graph, unflat)
        graph.replace_op(unflat, ops.Unflatten(shape=(n, 1, 1)))
        insert_after(graph, unflat, graph.inputs(linear)[0])
        conv = ops.Conv2d(in_channels=n, out_channels=c, kernel_size=(h, w), stride=(1, 1),
                          padding=(h - 1, w - 1), bias=False, init_std_factor=op.init_std_factor)
        record_lowering(graph, linear, conv, {"kind": "linear_unflatten_to_conv", "out_shape": [c, h, w]})
        changed = True
    if changed:
        infer_shapes(graph)
    return changed


@weight_transform("linear_unflatten_to_conv")
def linear_unflatten_to_conv(w: np.ndarray, step: Mapping[str, Any]) -> np.ndarray:
    """[C*H*W, n] -> [C, n, H, W], kernel flipped in both axes."""
    c, h, wd = step["out_shape"]
    return np.flip(w.reshape(c, h, wd, w.shape[1]).transpose(0, 3, 1, 2), axis=(2, 3))
