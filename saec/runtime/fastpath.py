"""Training fast path: synapses that keep their binary input as bool, and a process
allocator setting that stops large per-step tensors from page-faulting.

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

#: "0" leaves the C allocator's settings alone.
ENV_KEEP_FREED_MEMORY = "SAEC_KEEP_FREED_MEMORY"
# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap and are reused; larger ones are mmap'd afresh.
_MMAP_THRESHOLD_BYTES = 1 << 30
_TRIM_THRESHOLD_BYTES = 1 << 30


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks up to 1 GiB for reuse instead of returning them to the OS.

    By default glibc serves every block above 32 MiB with a fresh ``mmap`` and
    unmaps it on ``free``; a training step allocates dozens of [T*B, ...]
    tensors that large, and touching each fresh page costs a page fault (about
    400,000 per step for the SAE at T=16, B=64, 30-50 % of the step here).
    Kept in the heap, they are reused step after step. Peak memory is
    unchanged (the same blocks, reused); memory freed after training stays with
    the process until it exits.

    Process-wide and idempotent; a no-op off glibc or with ``SAEC_KEEP_FREED_MEMORY=0``.

    Returns:
        True when the setting was applied.
    """
    if os.environ.get(ENV_KEEP_FREED_MEMORY, "1") == "0":
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


class _SpikeInputSynapse(torch.autograd.Function):
    """A synapse whose input is a spike train; saves the bool spikes, not the float input."""

    @staticmethod
    def forward(ctx, x, x_bool, weight, bias, op):
        ctx.op, ctx.has_bias = op, bias is not None
        ctx.save_for_backward(x_bool, weight)
        return synapse_forward(op, weight, bias, x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x_bool, weight = ctx.saved_tensors
        op = ctx.op
        need_x, _, need_w, need_b, _ = ctx.needs_input_grad
        need_b = need_b and ctx.has_bias
        x = x_bool.to(weight.dtype)
        grad = grad.contiguous()
        if isinstance(op, ops.Linear):
            # addmm's own backward formulas (same kernels, same results as autograd)
            gx = grad.mm(weight) if need_x else None
            gw = grad.t().mm(x) if need_w else None
            gb = grad.sum(0) if need_b else None
            return gx, None, gw, gb, None
        transposed = isinstance(op, ops.ConvTranspose2d)
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[1 if transposed else 0]] if ctx.has_bias else None,
            list(op.stride), list(op.padding), [1, 1], transposed,
            list(op.output_padding) if transposed else [0, 0], 1, [need_x, need_w, need_b])
        return gx, None, gw, gb, None


def spike_synapse(op: ops.Op, weight: Tensor, bias: Tensor | None, x: Tensor, x_bool: Tensor) -> Tensor:
    """``synapse_forward`` whose backward keeps ``x_bool`` (x as bool) instead of x.

    Args:
        op: a Conv2d, ConvTranspose2d or Linear op.
        weight, bias: the synapse's parameters.
        x: the input spikes [N, ...], float, values 0 or 1.
        x_bool: the same spikes as a bool tensor (not checked: must equal ``x != 0``).

    Returns:
        The synaptic current [N, ...]; gradients reach x, weight and bias exactly as
        through ``synapse_forward``.
    """
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return synapse_forward(op, weight, bias, x)
    return _SpikeInputSynapse.apply(x, x_bool, weight, bias, op)
