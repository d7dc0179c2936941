"""NIR lowering: a stride-1 ConvTranspose2d is the Conv2d with the flipped kernel.

ConvTranspose2d(w), stride 1, padding p == Conv2d(w.transpose(0, 1).flip(-1, -2),
padding k - 1 - p); exact (tests/exporters/test_lower_nir.py runs both graphs).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from saec.compiler import ops
from saec.compiler.errors import CompileError
from saec.compiler.graph import IRGraph
from saec.compiler.passes.rewrite import record_lowering, weight_transform
from saec.compiler.passes.shapes import fmt, infer_shapes


def lower_conv_transpose(graph: IRGraph) -> bool:
    """Rewrite every stride-1 ConvTranspose2d as the Conv2d it equals.

    Raises:
        CompileError: a stride > 1 (a transposed convolution then inserts zeros
            between inputs, which no NIR node does) or a padding larger than
            kernel - 1 (the equivalent convolution would need cropping).
    """
    changed = False
    for name in list(graph.nodes(ops.ConvTranspose2d)):
        op = graph.op(name)
        if op.stride != (1, 1):
            raise CompileError(
                f"a transposed convolution with stride {fmt(op.stride)} has no NIR equivalent "
                "(NIR has no transposed convolution; only stride 1 lowers to a convolution)", node=name)
        (kh, kw), (ph, pw) = op.kernel_size, op.padding
        if ph > kh - 1 or pw > kw - 1:
            raise CompileError(
                f"a transposed convolution with padding {fmt(op.padding)} > kernel {fmt(op.kernel_size)} - 1 "
                "has no NIR equivalent (its convolution would need cropping)", node=name)
        conv = ops.Conv2d(in_channels=op.in_channels, out_channels=op.out_channels, kernel_size=op.kernel_size,
                          stride=(1, 1), padding=(kh - 1 - ph, kw - 1 - pw), bias=op.bias,
                          init_std_factor=op.init_std_factor)
        record_lowering(graph, name, conv, {"kind": "conv_transpose_to_conv"})
        changed = True
    if changed:
        infer_shapes(graph)
    return changed


@weight_transform("conv_transpose_to_conv")
def conv_transpose_to_conv(w: np.ndarray, step: Mapping[str, Any]) -> np.ndarray:
    """[in, out, kh, kw] -> [out, in, kh, kw], kernel flipped in both axes."""
    return np.flip(w.transpose(1, 0, 2, 3), axis=(2, 3))
