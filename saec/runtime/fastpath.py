"""Training fast path: synapses that keep their binary input as bool, channels-last
convolutions, and an opt-in allocator setting that stops large per-step tensors from
page-faulting.

Every synapse input of the SAE is a spike train (the Poisson encoding, then
each layer's spikes), so the conv / linear weight gradient needs only 0/1
values. Autograd would keep the float input (4 bytes per neuron and step); a
:class:`_SpikeInputSynapse` keeps the bool spikes the LIF scan hands out (1
byte, and the very tensor the scan's own backward keeps for ``spike_gated``),
and rebuilds the float input in backward. Forward and backward call the same
ATen kernels as autograd does (``convolution`` / ``convolution_backward``,
``addmm`` / ``mm``), so results are bit-identical to the plain path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from saec.compiler import ops

#: "1" lets glibc keep freed memory for reuse (:func:`keep_freed_memory`); off by default.
ENV_KEEP_FREED_MEMORY = "SAEC_KEEP_FREED_MEMORY"
# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap and are reused; larger ones are mmap'd afresh.
_MMAP_THRESHOLD_BYTES = 1 << 30
_TRIM_THRESHOLD_BYTES = 1 << 30


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Opt-in (``SAEC_KEEP_FREED_MEMORY=1``): let glibc keep freed blocks up to 1 GiB in the
    heap for reuse instead of returning them to the OS.

    By default glibc serves every block above 32 MiB with a fresh ``mmap`` and
    unmaps it on ``free``; a training step allocates dozens of [T*B, ...]
    tensors that large, and touching each fresh page costs a page fault (about
    400,000 per step for the SAE at T=16, B=64). Kept in the heap, they are
    reused step after step: the step gets faster (benchmarks/README.md, lever
    log), but the heap fragments and the peak resident memory grows by about
    half, which is why this is not the default. Memory freed after training
    stays with the process until it exits.

    Process-wide and idempotent; a no-op off glibc.

    Returns:
        True when the setting was applied.
    """
    if os.environ.get(ENV_KEEP_FREED_MEMORY, "0") != "1":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES))


def synapse_forward(op: ops.Op, weight: Tensor, bias: Tensor | None, x: Tensor) -> Tensor:
    """Conv / transposed conv / linear of ``op`` on x [N, ...] (N = T*B or B)."""
    if isinstance(op, ops.Conv2d):
        return F.conv2d(x, weight, bias, stride=op.stride, padding=op.padding)
    if isinstance(op, ops.ConvTranspose2d):
        return F.conv_transpose2d(x, weight, bias, stride=op.stride, padding=op.padding,
                                  output_padding=op.output_padding)
    return F.linear(x, weight, bias)


def channels_last(x: Tensor) -> Tensor:
    """x [N, C, H, W] in channels-last layout (no copy when it already is, or when C = 1)."""
    if x.shape[1] == 1 and x.is_contiguous():
        # same bytes; only the strides say "channels last", which is what oneDNN looks at
        n, _, h, w = x.shape
        return x.as_strided(x.shape, (h * w, 1, w, 1))
    return x.contiguous(memory_format=torch.channels_last)


def _prefers_channels_last(op: ops.Op, x: Tensor) -> bool:
    # oneDNN's channels-last convolutions run ~1/3 faster here (benchmarks/README.md, lever log)
    return isinstance(op, (ops.Conv2d, ops.ConvTranspose2d)) and x.device.type == "cpu" and x.dim() == 4


class _SpikeInputSynapse(torch.autograd.Function):
    """A synapse whose input is a spike train; saves the bool spikes, not the float input.

    On the CPU a Conv2d runs channels-last in forward and backward (its forward output
    is bit-identical to the contiguous layout's, so spikes do not change); a transposed
    convolution runs forward in the given layout (channels-last would round differently)
    and backward channels-last (gradients need only agree within fp32 rounding).
    Under autocast, backward computes in the forward's dtype, as autocast's own
    convolution backward does, and hands back gradients in the inputs' dtypes.
    """

    @staticmethod
    def forward(ctx, x, x_bool, weight, bias, op):
        ctx.op, ctx.has_bias, ctx.x_shape, ctx.x_dtype = op, bias is not None, x.shape, x.dtype
        ctx.save_for_backward(x_bool, weight)
        if isinstance(op, ops.Conv2d) and _prefers_channels_last(op, x):
            x = channels_last(x)
        out = synapse_forward(op, weight, bias, x)
        ctx.compute_dtype = out.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x_bool, param = ctx.saved_tensors
        op = ctx.op
        weight = param.to(ctx.compute_dtype)
        grad = grad.to(ctx.compute_dtype)
        if x_bool.shape != ctx.x_shape:  # kept in its producer's shape (and layout): no copy in forward
            x_bool = x_bool.reshape(ctx.x_shape)
        need_x, _, need_w, need_b, _ = ctx.needs_input_grad
        need_b = need_b and ctx.has_bias
        if _prefers_channels_last(op, x_bool):
            x = torch.empty_like(channels_last(x_bool), dtype=weight.dtype).copy_(x_bool)
            grad = channels_last(grad)
        else:
            x = x_bool.to(weight.dtype)
            grad = grad.contiguous()
        if isinstance(op, ops.Linear):
            # addmm's own backward formulas (same kernels, same results as autograd)
            gx = grad.mm(weight) if need_x else None
            gw = grad.t().mm(x) if need_w else None
            gb = grad.sum(0) if need_b else None
            return _cast(gx, ctx.x_dtype), None, _cast(gw, param.dtype), _cast(gb, param.dtype), None
        transposed = isinstance(op, ops.ConvTranspose2d)
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[1 if transposed else 0]] if ctx.has_bias else None,
            list(op.stride), list(op.padding), [1, 1], transposed,
            list(op.output_padding) if transposed else [0, 0], 1, [need_x, need_w, need_b])
        return _cast(gx, ctx.x_dtype), None, _cast(gw, param.dtype), _cast(gb, param.dtype), None


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype)


def spike_synapse(op: ops.Op, weight: Tensor, bias: Tensor | None, x: Tensor, x_bool: Tensor) -> Tensor:
    """``synapse_forward`` whose backward keeps ``x_bool`` (x as bool) instead of x.

    Args:
        op: a Conv2d, ConvTranspose2d or Linear op.
        weight, bias: the synapse's parameters.
        x: the input spikes [N, ...], float, values 0 or 1.
        x_bool: the same spikes as a bool tensor, of any shape with x's number of elements
            in x's logical order (reshaped in backward); not checked: must equal ``x != 0``.

    Returns:
        The synaptic current [N, ...]; gradients reach x, weight and bias exactly as
        through ``synapse_forward``.
    """
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return synapse_forward(op, weight, bias, x)
    return _SpikeInputSynapse.apply(x, x_bool, weight, bias, op)
