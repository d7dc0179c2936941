"""Shape inference: the per-example output shape of every node into ``meta['shape']``.

Shapes exclude batch and time. The rule for each op type lives in one table,
:data:`SHAPE_RULES` (an :class:`~saec.compiler.dispatch.OpTable`), which the builder also uses to infer unset input sizes.
"""

from __future__ import annotations

import math
from typing import Callable

from saec.compiler import ops
from saec.compiler.dispatch import OpTable
from saec.compiler.errors import CompileError
from saec.compiler.graph import IRGraph

Shape = tuple[int, ...]


def fmt(shape: Shape) -> str:
    return "x".join(map(str, shape))


def _spatial(op, shape: Shape, name: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise CompileError(f"needs a C x H x W input, got {fmt(shape)}", node=name)
    c, h, w = shape
    if c != op.in_channels:
        raise CompileError(f"expects {op.in_channels} input channels, got {fmt(shape)}", node=name)
    return c, h, w


def _conv2d(op: ops.Conv2d, shape: Shape, name: str) -> Shape:
    _, h, w = _spatial(op, shape, name)
    (kh, kw), (sh, sw), (ph, pw) = op.kernel_size, op.stride, op.padding
    if kh > h + 2 * ph or kw > w + 2 * pw:
        raise CompileError(
            f"kernel {kh}x{kw} is larger than its input {h}x{w}"
            + (f" (padded to {h + 2 * ph}x{w + 2 * pw})" if ph or pw else ""),
            node=name,
        )
    return (op.out_channels, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)


def _conv_transpose2d(op: ops.ConvTranspose2d, shape: Shape, name: str) -> Shape:
    _, h, w = _spatial(op, shape, name)
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = op.kernel_size, op.stride, op.padding, op.output_padding
    out = ((h - 1) * sh - 2 * ph + kh + oh, (w - 1) * sw - 2 * pw + kw + ow)
    if min(out) <= 0:
        raise CompileError(f"padding {ph}x{pw} leaves no output from a {h}x{w} input", node=name)
    if oh >= sh and oh or ow >= sw and ow:
        raise CompileError("output_padding must be smaller than the stride", node=name)
    return (op.out_channels, *out)


def _linear(op: ops.Linear, shape: Shape, name: str) -> Shape:
    if len(shape) != 1:
        raise CompileError(f"needs a flat input, got {fmt(shape)} (add a flatten layer before it)", node=name)
    if shape[0] != op.in_features:
        raise CompileError(f"expects {op.in_features} input features, got {shape[0]}", node=name)
    return (op.out_features,)


def _unflatten(op: ops.Unflatten, shape: Shape, name: str) -> Shape:
    if len(shape) != 1 or shape[0] != math.prod(op.shape):
        raise CompileError(f"cannot reshape {fmt(shape)} into {fmt(op.shape)}", node=name)
    return tuple(op.shape)


def _reparameterize(op: ops.Reparameterize, shape: Shape, name: str) -> Shape:
    if shape != (2 * op.latent_features,):
        raise CompileError(f"expects mu and log-variance ({2 * op.latent_features}), got {fmt(shape)}", node=name)
    return (op.latent_features,)


def _sum_pool2d(op: ops.SumPool2d, shape: Shape, name: str) -> Shape:
    if len(shape) != 3:
        raise CompileError(f"needs a C x H x W input, got {fmt(shape)}", node=name)
    c, h, w = shape
    (kh, kw), (sh, sw), (ph, pw) = op.kernel_size, op.stride, op.padding
    if kh > h + 2 * ph or kw > w + 2 * pw:
        raise CompileError(f"window {kh}x{kw} is larger than its input {h}x{w}", node=name)
    return (c, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)


def _same(op: ops.Op, shape: Shape, name: str) -> Shape:
    return shape


#: The shape rule of each op type: (op, input shape, node name) -> output shape.
SHAPE_RULES: OpTable[Callable[[ops.Op, Shape, str], Shape]] = OpTable("shape inference")
for _op_type, _rule in {
    ops.Input: lambda op, shape, name: tuple(op.shape),
    ops.Conv2d: _conv2d,
    ops.ConvTranspose2d: _conv_transpose2d,
    ops.Linear: _linear,
    ops.Flatten: lambda op, shape, name: (math.prod(shape),),
    ops.Unflatten: _unflatten,
    ops.Reparameterize: _reparameterize,
    ops.PoissonEncode: _same,
    ops.LIF: _same,
    ops.LeakyIntegrator: _same,
    ops.SumPool2d: _sum_pool2d,
    ops.ReLU: _same,
    ops.MaxCumulativeReadout: _same,
    ops.Output: _same,
}.items():
    SHAPE_RULES.add(_op_type, _rule)


def output_shape(op: ops.Op, in_shape: Shape, name: str) -> Shape:
    """Output shape of ``op`` (named ``name``) on an input of ``in_shape``."""
    return SHAPE_RULES.lookup(op, node=name)(op, in_shape, name)


def infer_shapes(graph: IRGraph) -> bool:
    """Write ``meta['shape']`` on every node; raises CompileError where shapes do not fit."""
    changed = False
    for name in graph.order():
        ins = graph.inputs(name)
        in_shape = tuple(graph.meta(ins[0])["shape"]) if ins else ()
        try:
            shape = output_shape(graph.op(name), in_shape, name)
        except CompileError as exc:
            if ins:
                exc.add_context(f"its input `{ins[0]}` gives {fmt(in_shape)}")
            raise
        if tuple(graph.meta(name).get("shape", ())) != shape:
            graph.meta(name)["shape"] = shape
            changed = True
    return changed
