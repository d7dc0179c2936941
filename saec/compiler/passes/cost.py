"""Cost per example and time step: neurons, synapses (connections) and MACs."""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

from saec.compiler import ops
from saec.compiler.dispatch import OpTable
from saec.compiler.graph import IRGraph


def _sum_positive(a: int, b: int, lo: int, hi: int) -> int:
    """sum over integer o in [lo, hi] of max(0, a + b*o), in closed form."""
    if lo > hi:
        return 0
    if b == 0:
        return max(0, a) * (hi - lo + 1)
    if b > 0:  # positive from the first o with a + b*o > 0
        lo = max(lo, (-a) // b + 1)
    else:  # positive up to the last o with a + b*o > 0
        hi = min(hi, (a - 1) // (-b))
    if lo > hi:
        return 0
    n = hi - lo + 1
    return a * n + b * (lo + hi) * n // 2


def _taps(n_out: int, n_in: int, k: int, stride: int, pad: int) -> int:
    """Kernel taps along one axis of a conv that land inside the (unpadded) input.

    The number of pairs (output o, kernel tap j) with 0 <= o*stride - pad + j < n_in. Output o sees the
    taps j in [max(0, pad - o*stride), min(k, n_in + pad - o*stride)); each bound switches between a
    constant and a line in o once, so the sum is a few arithmetic series: closed form, whatever the
    sizes (a loop over outputs would hang on `padding: 1000000000`).
    """
    s = stride
    last_full = (n_in + pad - k) // s  # the last o whose upper bound is k (n_in + pad - o*s >= k)
    last_padded = -(-pad // s) - 1  # the last o whose lower bound is pad - o*s (> 0)
    cuts = sorted({-1, n_out - 1, *(c for c in (last_full, last_padded) if -1 <= c < n_out - 1)})
    total = 0
    for lo, hi in zip([c + 1 for c in cuts[:-1]], cuts[1:]):
        upper = (k, 0) if lo <= last_full else (n_in + pad, -s)  # (constant, slope) of the upper bound
        lower = (pad, -s) if lo <= last_padded else (0, 0)
        total += _sum_positive(upper[0] - lower[0], upper[1] - lower[1], lo, hi)
    return total


class Cost(NamedTuple):
    """Per example and time step: neurons, connections from real inputs, dense multiply-accumulates."""

    neurons: int
    synapses: int
    macs: int


#: op, input shape, output shape -> its :class:`Cost`. Synapses are the connections from real (not padding)
#: inputs to outputs, i.e. the non-zero MACs of one dense step; MACs count as a framework computes them.
COST: OpTable[Callable[[ops.Op, tuple[int, ...], tuple[int, ...]], Cost]] = OpTable("cost")


@COST.register(ops.Conv2d)
def _conv2d(op: ops.Conv2d, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Cost:
    (kh, kw), (sh, sw), (ph, pw) = op.kernel_size, op.stride, op.padding
    return Cost(0, op.in_channels * op.out_channels * _taps(out_shape[1], in_shape[1], kh, sh, ph)
                * _taps(out_shape[2], in_shape[2], kw, sw, pw),
                math.prod(out_shape) * op.in_channels * math.prod(op.kernel_size))


@COST.register(ops.ConvTranspose2d)
def _conv_transpose2d(op: ops.ConvTranspose2d, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Cost:
    # A transposed conv is the adjoint of the conv from its output back to its input.
    (kh, kw), (sh, sw), (ph, pw) = op.kernel_size, op.stride, op.padding
    return Cost(0, op.in_channels * op.out_channels * _taps(in_shape[1], out_shape[1], kh, sh, ph)
                * _taps(in_shape[2], out_shape[2], kw, sw, pw),
                math.prod(in_shape) * op.out_channels * math.prod(op.kernel_size))


@COST.register(ops.Linear)
def _linear(op: ops.Linear, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Cost:
    return Cost(0, op.in_features * op.out_features, op.in_features * op.out_features)


@COST.register(ops.SumPool2d)
def _sum_pool2d(op: ops.SumPool2d, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Cost:
    # each channel's window sums its own channel only: a depthwise conv with a kernel of ones;
    # its additions count as MACs with weight 1
    (kh, kw), (sh, sw), (ph, pw) = op.kernel_size, op.stride, op.padding
    return Cost(0, out_shape[0] * _taps(out_shape[1], in_shape[1], kh, sh, ph)
                * _taps(out_shape[2], in_shape[2], kw, sw, pw), math.prod(out_shape) * math.prod(op.kernel_size))


@COST.register(ops.LIF, ops.ReLU)
def _neurons(op: ops.Op, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Cost:
    return Cost(math.prod(out_shape), 0, 0)


@COST.register(ops.Input, ops.Output, ops.PoissonEncode, ops.Flatten, ops.Unflatten, ops.Reparameterize,
               ops.LeakyIntegrator, ops.MaxCumulativeReadout)
def _free(op: ops.Op, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Cost:
    # no synapses and no spiking/ReLU neurons (the VAE's sampling, a NIR leaky integrator, reshapes, the ends)
    return Cost(0, 0, 0)


def cost(op: ops.Op, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Cost:
    """The :class:`Cost` of ``op`` on an input of ``in_shape`` giving ``out_shape`` (per example and step)."""
    return COST.lookup(op)(op, in_shape, out_shape)


def synapses(op: ops.Op, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """Connections from real (not padding) inputs to outputs, i.e. non-zero MACs of one dense step."""
    return cost(op, in_shape, out_shape).synapses


def macs(op: ops.Op, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """Dense multiply-accumulates per example and step, as a framework computes them."""
    return cost(op, in_shape, out_shape).macs


def estimate_cost(graph: IRGraph) -> bool:
    """Write ``neurons``, ``synapses`` and ``macs`` into every node's meta."""
    changed = False
    for name in graph.order():
        op, meta = graph.op(name), graph.meta(name)
        ins = graph.inputs(name)
        in_shape = tuple(graph.meta(ins[0])["shape"]) if ins else ()
        out_shape = tuple(meta["shape"])
        values = cost(op, in_shape, out_shape)._asdict()
        for key, value in values.items():
            if meta.get(key) != value:
                meta[key] = value
                changed = True
    return changed
