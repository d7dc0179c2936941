"""Cost per example and time step: neurons, synapses (connections) and MACs."""

from __future__ import annotations

import math

from saec.compiler import ops
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


def synapses(op: ops.Op, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """Connections from real (not padding) inputs to outputs, i.e. non-zero MACs of one dense step."""
    if isinstance(op, ops.Conv2d):
        (kh, kw), (sh, sw), (ph, pw) = op.kernel_size, op.stride, op.padding
        return (op.in_channels * op.out_channels * _taps(out_shape[1], in_shape[1], kh, sh, ph)
                * _taps(out_shape[2], in_shape[2], kw, sw, pw))
    if isinstance(op, ops.ConvTranspose2d):
        # A transposed conv is the adjoint of the conv from its output back to its input.
        (kh, kw), (sh, sw), (ph, pw) = op.kernel_size, op.stride, op.padding
        return (op.in_channels * op.out_channels * _taps(in_shape[1], out_shape[1], kh, sh, ph)
                * _taps(in_shape[2], out_shape[2], kw, sw, pw))
    if isinstance(op, ops.Linear):
        return op.in_features * op.out_features
    if isinstance(op, ops.SumPool2d):
        # each channel's window sums its own channel only: a depthwise conv with a kernel of ones
        (kh, kw), (sh, sw), (ph, pw) = op.kernel_size, op.stride, op.padding
        return (out_shape[0] * _taps(out_shape[1], in_shape[1], kh, sh, ph)
                * _taps(out_shape[2], in_shape[2], kw, sw, pw))
    return 0


def macs(op: ops.Op, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """Dense multiply-accumulates per example and step, as a framework computes them."""
    if isinstance(op, ops.Conv2d):
        return math.prod(out_shape) * op.in_channels * math.prod(op.kernel_size)
    if isinstance(op, ops.ConvTranspose2d):
        return math.prod(in_shape) * op.out_channels * math.prod(op.kernel_size)
    if isinstance(op, ops.Linear):
        return op.in_features * op.out_features
    if isinstance(op, ops.SumPool2d):
        return math.prod(out_shape) * math.prod(op.kernel_size)  # additions, counted as MACs with weight 1
    return 0


def estimate_cost(graph: IRGraph) -> bool:
    """Write ``neurons``, ``synapses`` and ``macs`` into every node's meta."""
    changed = False
    for name in graph.order():
        op, meta = graph.op(name), graph.meta(name)
        ins = graph.inputs(name)
        in_shape = tuple(graph.meta(ins[0])["shape"]) if ins else ()
        out_shape = tuple(meta["shape"])
        values = {
            "neurons": math.prod(out_shape) if isinstance(op, (ops.LIF, ops.ReLU)) else 0,
            "synapses": synapses(op, in_shape, out_shape),
            "macs": macs(op, in_shape, out_shape),
        }
        for key, value in values.items():
            if meta.get(key) != value:
                meta[key] = value
                changed = True
    return changed
