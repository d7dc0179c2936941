"""Training fast path: synapses that keep their binary input as bool, run over row
chunks into pooled outputs, in the layout each layer runs fastest in.

Every synapse input of the SAE is a spike train (the Poisson encoding, then each layer's
spikes), so the conv / linear weight gradient needs only 0/1 values. Autograd would keep
the float input (4 bytes per neuron and step); a :class:`_SpikeInputSynapse` keeps the bool
spikes the LIF scan hands out (1 byte, and the very tensor the scan's own backward keeps for
``spike_gated``). It takes its input in the producer's shape and layout (a flatten or
unflatten is applied per chunk), and writes its output and input gradient into tensors from
the step's buffer pool (:mod:`saec.runtime.pool`), so a training step allocates no fresh
large tensors. Forward calls the same kernels as the plain path on the same rows
(:func:`synapse_forward` defines saec's numerics for every path), so spikes are
bit-identical; gradients agree within fp32 rounding (weight gradients are sums of chunk sums).

The forward's algorithm is a per-layer choice (:data:`ForwardAlgorithm`, the plan's
``forward``): for a spike-train input the built-in one is the spike-driven kernel
(:func:`saec.runtime.spikedriven.forward_into`: the bias plus the weights of the active inputs
in logical order, all rows in one call, reading the bool spikes), else oneDNN / MKL over row
chunks. Either is the layer's numerics on every path.

The gradients need the input only where it is 1. Per row chunk, by the layer's plan
(``SynapseChoice.weight_grad`` / ``input_grad``) or, by default, by the chunk's input activity,
backward computes the weight gradient with the spike-driven C kernel
(:func:`saec.runtime.kernels.cpu_spike.weight_grad`: work in proportion to the spikes, no
multiplications) and, where the input's producer is a ``spike_gated`` LIF layer (which reads
its spikes' gradient only where it fired), the input gradient at the active inputs only
(:func:`saec.runtime.kernels.cpu_spike.input_grad`, 0 elsewhere), instead of oneDNN / MKL on
the float input rebuilt from the bools, which is then not rebuilt at all where nothing dense
needs it (see :class:`_SpikeWeightGrad`, :class:`_SpikeInputGrad`).

An opt-in allocator setting (:func:`keep_freed_memory`) is kept for measurements.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from saec.compiler import ops
from saec.compiler.dispatch import OpTable
from saec.compiler.passes.shapes import output_shape
from saec.runtime import pool as buffers
from saec.runtime import spikedriven
from saec.runtime.kernels import cpu_spike

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


#: How a one-channel, stride-1 transposed convolution (the SAE's output layer) runs on the CPU:
#: "gemm" (a small matrix product and shifted adds, :func:`_single_output_transposed`) or
#: "onednn" (oneDNN's channels-last transposed convolution, as every other transposed convolution).
OutputAlgorithm = Literal["gemm", "onednn"]
OUTPUT_ALGORITHMS: tuple[str, ...] = ("gemm", "onednn")

#: How a synapse's weight gradient is computed in the fast path's backward on the CPU: "dense"
#: (oneDNN's convolution backward / MKL's matrix product on the float input rebuilt from the spikes)
#: or "spike" (the spike-driven kernel, :func:`saec.runtime.kernels.cpu_spike.weight_grad`: work only
#: where the input is 1). None (the built-in choice): per row chunk by the input's measured activity,
#: spike-driven up to :data:`saec.runtime.spikedriven.WEIGHT_GRAD_MAX_ACTIVITY`. Either gives the
#: same gradient within fp32 summation order; the forward is the same whatever the choice.
WeightGrad = Literal["dense", "spike"]
WEIGHT_GRAD_CHOICES: tuple[str, ...] = ("dense", "spike")

#: How a synapse's input gradient is computed in the fast path's backward on the CPU, where its input's
#: gradient is read only where the input is 1 (the producer is a ``spike_gated`` LIF layer; elsewhere
#: the dense one always runs): "dense" (oneDNN's / MKL's transposed product, every input) or "spike"
#: (:func:`saec.runtime.kernels.cpu_spike.input_grad`: a dot product at each active input, 0 elsewhere).
#: None (the built-in choice): per row chunk by the input's measured activity, spike-driven up to
#: :data:`saec.runtime.spikedriven.INPUT_GRAD_MAX_ACTIVITY`. Either gives the same parameter gradients
#: within fp32 summation order.
InputGrad = Literal["dense", "spike"]
INPUT_GRAD_CHOICES: tuple[str, ...] = ("dense", "spike")

#: How a synapse whose input is a spike train computes its forward on the CPU: "dense" (oneDNN's
#: convolution, MKL's matrix product, or the output layer's :data:`OutputAlgorithm`) or "spike" (the
#: spike-driven kernel, :func:`saec.runtime.spikedriven.forward_into`: each output element its bias
#: plus the weights of the active inputs, added in logical input order, no multiplications). The two
#: round differently, so every path of one model (fast, reference, step by step, inference) runs the
#: same one, as for the output algorithm; "spike" applies where the kernel does
#: (:func:`saec.runtime.spikedriven.forward_applies`, the same answer on every path), elsewhere the
#: dense forward runs. Only for inputs that are spike trains (0/1): the model resolves its plan's
#: choice per layer (:meth:`saec.runtime.model.SpikingAutoencoder.synapse_choice`).
ForwardAlgorithm = Literal["dense", "spike"]
FORWARD_CHOICES: tuple[str, ...] = ("dense", "spike")


@dataclass(frozen=True)
class SynapseChoice:
    """How one synapse layer runs on the CPU: the per-layer knobs of the execution plan
    (:mod:`saec.runtime.plan` chooses them per machine; these defaults are the built-in choices).

    Attributes:
        chunk_rows: rows (images x time steps) per chunk, at least :data:`MIN_CHUNK_ROWS`; None: as
            many as keep a chunk's float input or output under ``chunk_bytes``.
        chunk_bytes: the chunk size in bytes when ``chunk_rows`` is None; None: :data:`CHUNK_BYTES`.
        channels_last: a Conv2d runs channels-last (bit-identical to contiguous). Transposed
            convolutions always run channels-last: that layout defines their rounding.
        output_algorithm: a one-channel stride-1 transposed convolution's kernel (see
            :data:`OutputAlgorithm`). The two round differently, so every path of one model uses
            the same one (the model passes its choice to the reference and step-by-step paths too).
        weight_grad: how the weight gradient is computed (see :data:`WeightGrad`); None: by the
            input's activity. "spike" applies only where the kernel does (float32 on the CPU, the
            kernel built, ``SAEC_SPIKE_DRIVEN`` not "0"); elsewhere the dense gradient runs.
        input_grad: how the input gradient is computed where the input's producer is spike-gated
            (see :data:`InputGrad`); None: by the input's activity. Applies as ``weight_grad`` does.
        forward: the forward's algorithm on a spike-train input (see :data:`ForwardAlgorithm`); it
            defines the layer's rounding, so every path of a model must pass the same choice.

    Raises:
        ValueError: an unknown algorithm or weight-gradient choice, or a chunk size below one
            (on construction).
    """

    chunk_rows: int | None = None
    chunk_bytes: int | None = None
    channels_last: bool = True
    output_algorithm: OutputAlgorithm = "gemm"
    weight_grad: WeightGrad | None = None
    input_grad: InputGrad | None = None
    forward: ForwardAlgorithm = "dense"

    def __post_init__(self) -> None:
        if self.output_algorithm not in OUTPUT_ALGORITHMS:
            raise ValueError(f"output algorithm must be one of {OUTPUT_ALGORITHMS}, got {self.output_algorithm!r}")
        if self.weight_grad is not None and self.weight_grad not in WEIGHT_GRAD_CHOICES:
            raise ValueError(f"weight_grad must be one of {WEIGHT_GRAD_CHOICES} or None, got {self.weight_grad!r}")
        if self.input_grad is not None and self.input_grad not in INPUT_GRAD_CHOICES:
            raise ValueError(f"input_grad must be one of {INPUT_GRAD_CHOICES} or None, got {self.input_grad!r}")
        if self.forward not in FORWARD_CHOICES:
            raise ValueError(f"forward must be one of {FORWARD_CHOICES}, got {self.forward!r}")
        for name in ("chunk_rows", "chunk_bytes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")


#: The built-in choice (what every layer ran before plans existed).
DEFAULT_CHOICE = SynapseChoice()


def synapse_forward(op: ops.Op, weight: Tensor, bias: Tensor | None, x: Tensor,
                    choice: SynapseChoice = DEFAULT_CHOICE) -> Tensor:
    """Conv / transposed conv / linear of ``op`` on x [N, ...] (N = T*B or B).

    This function defines saec's numerics for every execution (fast, reference,
    step by step, inference). On the CPU a transposed convolution always runs
    channels-last: oneDNN's channels-last kernel is ~1.5x faster than the contiguous
    one and rounds differently, so it must be the same kernel everywhere for the
    paths to give bit-identical spikes. (A Conv2d gives the same bits in either layout.)

    ``choice`` picks the layout of a Conv2d, the output layer's algorithm and the forward algorithm
    (the latter two change the rounding: pass the same choice on every path that must agree). With
    ``choice.forward == "spike"`` x must be a spike train (0/1; any nonzero counts as 1) and, where
    the kernel applies, the result is the spike-driven kernel's (differentiable: the reference path's
    autograd gets the dense gradients).

    Raises:
        UnsupportedOp: ``op`` is not a synapse (has no weights).
        MemoryError: the spike-driven kernel could not get its scratch memory.
    """
    if choice.forward == "spike" and spikedriven.forward_applies(op, weight, x):
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad)):
            return _SpikeForward.apply(x, weight, bias, op)
        return _spike_forward(op, weight, bias, x)
    return SYNAPSES.lookup(op)(op, weight, bias, x, choice)


def _spike_forward(op: ops.Op, weight: Tensor, bias: Tensor | None, x: Tensor, pool: buffers.BufferPool | None = None,
                   contiguous_out: bool = False, out_sample: tuple[int, int, int] | None = None,
                   sample: tuple[int, ...] | None = None) -> Tensor:
    """The spike-driven forward of ``op`` on the spike rows ``x`` [n, *source shape] into a new output (from
    ``pool`` where given) in the fast path's layout (:func:`saec.runtime.spikedriven.output_rows`)."""
    sample = tuple(x.shape[1:]) if sample is None else sample
    out = spikedriven.output_rows(op, x.shape[0], sample, contiguous_out, out_sample, pool, x.device)
    spikedriven.forward_into(op, weight, bias, x, sample, out)
    return out


class _SpikeForward(torch.autograd.Function):
    """:func:`synapse_forward`'s spike-driven forward under autograd (the reference path): the kernel's
    result; backward gives the dense synapse's gradients (the formulas autograd uses for the dense op,
    :func:`_dense_chunk_grads`), which agree with the fast path's within fp32 rounding."""

    @staticmethod
    def forward(ctx, x, weight, bias, op):
        ctx.op, ctx.has_bias = op, bias is not None
        ctx.save_for_backward(x, weight)
        return _spike_forward(op, weight.detach(), None if bias is None else bias.detach(), x.detach())

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        sample = tuple(x.shape[1:])
        _, gx, gw, gb = _dense_chunk_grads(ctx.op, grad, x, weight, sample, DEFAULT_CHOICE, need_x, need_w,
                                           need_b and ctx.has_bias, False, _InputStandIn(sample))
        return None if gx is None else gx.reshape(x.shape), gw, gb, None


#: The synapse ops' forward (every other op type is refused: it has no weights).
SYNAPSES: OpTable[Callable[[ops.Op, Tensor, "Tensor | None", Tensor, SynapseChoice], Tensor]] = OpTable(
    "synapse forward")
SYNAPSES.refuse([cls for cls in ops.OP_TYPES.values() if not cls.has_weights], "not a synapse: it has no weights")


@SYNAPSES.register(ops.Conv2d)
def _conv2d(op: ops.Conv2d, weight: Tensor, bias: Tensor | None, x: Tensor, choice: SynapseChoice) -> Tensor:
    return F.conv2d(x, weight, bias, stride=op.stride, padding=op.padding)


@SYNAPSES.register(ops.ConvTranspose2d)
def _conv_transpose2d(op: ops.ConvTranspose2d, weight: Tensor, bias: Tensor | None, x: Tensor,
                      choice: SynapseChoice) -> Tensor:
    if _prefers_channels_last(op, x, choice):
        if single_output_transposed(op) and choice.output_algorithm == "gemm":
            return _single_output_transposed(op, weight, bias, x)
        x = channels_last(x)
    return F.conv_transpose2d(x, weight, bias, stride=op.stride, padding=op.padding,
                              output_padding=op.output_padding)


@SYNAPSES.register(ops.Linear)
def _linear(op: ops.Linear, weight: Tensor, bias: Tensor | None, x: Tensor, choice: SynapseChoice) -> Tensor:
    return F.linear(x, weight, bias)


def single_output_transposed(op: ops.Op) -> bool:
    """True for a stride-1 transposed convolution to one channel: the shape whose CPU algorithm
    (:data:`OutputAlgorithm`) is a choice."""
    return isinstance(op, ops.ConvTranspose2d) and op.out_channels == 1 and tuple(op.stride) == (1, 1)


def _single_output_transposed(op: ops.ConvTranspose2d, weight: Tensor, bias: Tensor | None, x: Tensor) -> Tensor:
    """A stride-1 transposed convolution to one channel (the SAE's output layer), on the CPU.

    oneDNN runs this shape at ~7 GFLOP/s (one output channel leaves its kernels
    idle); as one matrix product, taps [k*k, C] x spikes [C, N*H*W], and k*k shifted
    adds in a fixed order it takes ~1/3 of the time (benchmarks/README.md, lever log).
    Differentiable (the reference path's autograd runs through it).
    """
    n, c, h, w = x.shape
    kh, kw = op.kernel_size
    ph, pw = op.padding
    x_hwc = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view for channels-last x
    taps = weight.reshape(c, kh * kw).t().matmul(x_hwc.t())  # [k*k, N*H*W]: sum over input channels
    taps = taps.view(kh, kw, n, h, w)
    # Under bf16 autocast the product rounds each tap to bf16; the shifted adds sum in float32 and
    # the result rounds once, as oneDNN's own bf16 convolutions accumulate (a no-op in float32).
    full = torch.zeros(n, h + kh - 1, w + kw - 1, dtype=torch.promote_types(taps.dtype, torch.float32),
                       device=x.device)
    for i in range(kh):
        for j in range(kw):
            full[:, i:i + h, j:j + w] += taps[i, j]
    out = full[:, ph:h + kh - 1 - ph, pw:w + kw - 1 - pw].unsqueeze(1)
    if bias is not None:
        out = out + bias.view(1, 1, 1, 1)
    return out.to(taps.dtype)


def channels_last(x: Tensor) -> Tensor:
    """x [N, C, H, W] in channels-last layout (no copy when it already is, or when C = 1)."""
    if x.shape[1] == 1 and x.is_contiguous():
        # same bytes; only the strides say "channels last", which is what oneDNN looks at
        n, _, h, w = x.shape
        return x.as_strided(x.shape, (h * w, 1, w, 1))
    return x.contiguous(memory_format=torch.channels_last)


def _prefers_channels_last(op: ops.Op, x: Tensor, choice: SynapseChoice = DEFAULT_CHOICE) -> bool:
    # oneDNN's channels-last convolutions run ~1/3 faster here (benchmarks/README.md, lever log);
    # a Conv2d may be planned otherwise (same bits), a transposed one not (its rounding)
    if x.device.type != "cpu" or x.dim() != 4:
        return False
    return isinstance(op, ops.ConvTranspose2d) or (isinstance(op, ops.Conv2d) and choice.channels_last)


#: Rows (images x time steps) per chunk are chosen so that a chunk's float input or
#: output stays under this size: glibc then serves the per-chunk temporaries from its
#: heap, reusing them, while a whole [T*B, ...] temporary would be a fresh mmap.
CHUNK_BYTES = 8 << 20


#: ... but never fewer rows than this: MKL's matrix product takes another summation path
#: for very few rows (measured here: bit-identical rows from 64 rows on, not below), and the
#: spikes must not depend on the chunking.
MIN_CHUNK_ROWS = 64


def chunk_rows(in_sample: int, out_sample: int, itemsize: int, choice: SynapseChoice = DEFAULT_CHOICE) -> int:
    """Rows per chunk of a synapse with ``in_sample`` / ``out_sample`` elements per row: the
    choice's ``chunk_rows``, else what keeps a chunk under its byte size; never below MIN_CHUNK_ROWS."""
    if choice.chunk_rows is not None:
        return max(MIN_CHUNK_ROWS, choice.chunk_rows)
    per_row = max(in_sample, out_sample, 1) * itemsize
    limit = choice.chunk_bytes if choice.chunk_bytes is not None else CHUNK_BYTES
    return max(MIN_CHUNK_ROWS, limit // per_row)


def _chunks(n: int, in_sample: int, out_sample: int, itemsize: int, device: torch.device,
            choice: SynapseChoice = DEFAULT_CHOICE) -> list[tuple[int, int]]:
    """Row ranges covering [0, n), each of at least min(n, MIN_CHUNK_ROWS) rows; one range off
    the CPU (CUDA's caching allocator already reuses memory, and small kernels cost launches)."""
    if device.type != "cpu":
        return [(0, n)]
    rows = chunk_rows(in_sample, out_sample, itemsize, choice)
    k = max(1, n // rows)
    bounds = [i * n // k for i in range(k + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _as_input(t: Tensor, op: ops.Op, sample: tuple[int, ...], dtype: torch.dtype,
              choice: SynapseChoice = DEFAULT_CHOICE) -> Tensor:
    """Rows ``t`` [n, *source shape] (float, or bool/uint8 spikes) as ``op``'s input
    [n, *sample] in ``dtype`` and the layout ``op`` runs fastest in (channels-last for
    convolutions on the CPU)."""
    n = t.shape[0]
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)  # uint8 -> float conversion is vectorised, bool's is not
    if isinstance(op, ops.Linear):
        if t.is_contiguous():
            flat = t.reshape(n, -1)
            return flat if flat.dtype == dtype else flat.to(dtype)
        return torch.empty(t.shape, dtype=dtype, device=t.device).copy_(t).view(n, -1)
    if tuple(t.shape[1:]) != sample:
        t = t.reshape(n, *sample)
    if _prefers_channels_last(op, t, choice):
        if t.dtype == dtype and (t.is_contiguous(memory_format=torch.channels_last) or t.shape[1] == 1):
            return channels_last(t)
        return torch.empty(t.shape, dtype=dtype, device=t.device,
                           memory_format=torch.channels_last).copy_(t)
    return t if t.dtype == dtype and t.is_contiguous() else t.to(dtype, memory_format=torch.contiguous_format)


def _into_rows(dst: Tensor, src: Tensor) -> None:
    """Copy ``src`` [n, *a] into ``dst`` [n, *b] (same number of elements per row, each in its
    logical order; layouts may differ)."""
    if dst.shape == src.shape:
        dst.copy_(src)
    elif dst.is_contiguous():
        dst.view(src.shape).copy_(src)
    else:
        dst.copy_(src.reshape(dst.shape))


class _SpikeInputSynapse(torch.autograd.Function):
    """A synapse whose input is a spike train; saves the bool spikes, not the float input.

    The input arrives in its producer's shape and layout (e.g. channels-last conv
    spikes before a flatten); the synapse runs over chunks of rows (time steps x
    images), adapting each chunk to the op's input shape and fastest layout, and
    writes the result into one [N, ...] output taken from the step's buffer pool
    (:mod:`saec.runtime.pool`). Backward likewise: per chunk the float input is
    rebuilt from the bool spikes, the weight gradient accumulated and the input
    gradient written into a pooled tensor in the producer's shape and layout, so
    no whole-T float temporary is ever allocated. A chunk whose weight gradient is
    spike-driven (``choice.weight_grad``, or its input activity; float32 on the CPU,
    ``spike_driven``) hands the bool spikes to the C kernel, and the float input is
    rebuilt only where the input gradient's kernel choice needs it.

    Forward calls the same kernels on the same values as the plain path, row by row
    (on the CPU convolutions run channels-last; for a Conv2d that is bit-identical to
    the contiguous layout, a transposed convolution runs channels-last in every path,
    see :func:`synapse_forward`). Under autocast, backward
    computes in the forward's dtype, as autocast's own convolution backward does, sums
    the chunks' weight gradients in float32 and hands back gradients in the inputs' dtypes.
    """

    @staticmethod
    def forward(ctx, x, x_bool, weight, bias, op, lead, sample, contiguous_out, out_sample, choice, spike_driven,
                gated_input):
        pool = buffers.active()
        n = math.prod(lead)
        src = x.reshape(n, *x.shape[len(lead):])  # a view for time-major dense layouts
        ctx.op, ctx.has_bias, ctx.x_dtype, ctx.pool = op, bias is not None, x.dtype, pool
        ctx.lead, ctx.sample, ctx.choice, ctx.spike_driven = lead, sample, choice, spike_driven
        ctx.gated_input = gated_input
        ctx.save_for_backward(x_bool, weight)
        out = _forward_rows(op, weight, bias, src, sample, contiguous_out, out_sample, pool, choice,
                            x_bool.reshape(n, *x_bool.shape[len(lead):]))
        ctx.compute_dtype = out.dtype
        return out.reshape(*lead, *out.shape[1:])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x_bool, param = ctx.saved_tensors
        op, lead, sample, pool, choice = ctx.op, ctx.lead, ctx.sample, ctx.pool, ctx.choice
        n = math.prod(lead)
        dtype = ctx.compute_dtype
        weight = param.to(dtype)
        need_x, _, need_w, need_b = ctx.needs_input_grad[:4]
        need_b = need_b and ctx.has_bias
        g_rows = grad.reshape(n, *grad.shape[len(lead):])
        x_rows = x_bool.reshape(n, *x_bool.shape[len(lead):])
        gx = buffers.empty_like(pool, x_bool, ctx.x_dtype) if need_x else None
        gx_rows = gx.reshape(n, *gx.shape[len(lead):]) if need_x else None
        gw = gb = None
        chunks = _chunks(n, math.prod(sample), g_rows[0].numel(), 4, grad.device, choice)
        kernel_applies = ctx.spike_driven and spikedriven.weight_grad_applies(op, param, dtype, grad.device, sample)
        spike_grad = (_SpikeWeightGrad(op, param, sample, max(b - a for a, b in chunks))
                      if need_w and kernel_applies and choice.weight_grad != "dense" else None)
        # the input gradient at the active inputs only: where the producer reads no other (spike_gated)
        spike_input = (_SpikeInputGrad(op, param, sample)
                       if need_x and ctx.gated_input and kernel_applies and choice.input_grad != "dense"
                       and gx.dtype == torch.float32 else None)
        stand_in = _InputStandIn(sample)
        for a, b in chunks:
            activity = (spikedriven.input_activity(x_rows[a:b])
                        if None in (choice.weight_grad, choice.input_grad) and (spike_grad or spike_input) else None)
            by_spikes = spike_grad is not None and _by_spikes(choice.weight_grad, activity,
                                                              spikedriven.WEIGHT_GRAD_MAX_ACTIVITY)
            x_by_spikes = spike_input is not None and _by_spikes(choice.input_grad, activity,
                                                                 spikedriven.INPUT_GRAD_MAX_ACTIVITY)
            dense_w, dense_x = need_w and not by_spikes, need_x and not x_by_spikes
            g, gx_c, gw_c, gb_c = _dense_chunk_grads(op, g_rows[a:b].to(dtype), x_rows[a:b], weight, sample, choice,
                                                     dense_x, dense_w, need_b, by_spikes, stand_in)
            if by_spikes:
                spike_grad.add(x_rows[a:b], g)
            if x_by_spikes:
                spike_input.into(x_rows[a:b], g, gx_rows[a:b])
            elif need_x:
                _into_rows(gx_rows[a:b], gx_c)
            gw, gb = _accumulate(gw, gw_c), _accumulate(gb, gb_c)
        if spike_grad is not None:
            gw = _accumulate(gw, spike_grad.total())
        return (gx, None, _like(gw, param), _cast(gb, param.dtype), None, None, None, None, None, None, None, None)


def _dense_chunk_grads(op: ops.Op, g: Tensor, x_rows: Tensor, weight: Tensor, sample: tuple[int, ...],
                       choice: SynapseChoice, dense_x: bool, dense_w: bool, need_b: bool, by_spikes: bool,
                       stand_in: "_InputStandIn") -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """One row chunk's dense gradients (oneDNN / MKL, as autograd computes them): the input's where
    ``dense_x``, the weight's where ``dense_w``, the bias's where ``need_b``; with the spike-driven weight
    gradient (``by_spikes``) the bias's is a plain sum. Returns the output gradient ``g`` in the layout
    the kernels read, and the three gradients (None where not computed)."""
    if isinstance(op, ops.Linear):
        # addmm's own backward formulas (same kernels as autograd)
        g = g.reshape(g.shape[0], -1) if g.dim() > 2 else g.contiguous()
        gx_c = g.mm(weight) if dense_x else None
        gw_c = g.t().mm(_as_input(x_rows, op, sample, weight.dtype, choice)) if dense_w else None
        return g, gx_c, gw_c, g.sum(0) if need_b else None
    layout_cl = _prefers_channels_last(op, g, choice)
    g = channels_last(g) if layout_cl else g.contiguous()
    # oneDNN computes the weight gradient whenever the bias's is asked for (whatever the
    # mask says), so with the spike-driven weight gradient the bias's is a plain sum
    dense_b = need_b and not by_spikes
    # the float input's values only serve a dense weight gradient; for the rest its shape will do
    x, w = stand_in.get(g, weight, layout_cl) if not dense_w and (dense_x or dense_b) else (None, weight)
    if x is None and (dense_w or dense_x or dense_b):
        x = _as_input(x_rows, op, sample, weight.dtype, choice)
    gx_c = gw_c = gb_c = None
    if dense_x or dense_w or dense_b:
        transposed = isinstance(op, ops.ConvTranspose2d)
        gx_c, gw_c, gb_c = torch.ops.aten.convolution_backward(
            g, x, w, [weight.shape[1 if transposed else 0]] if dense_b else None,
            list(op.stride), list(op.padding), [1, 1], transposed,
            list(op.output_padding) if transposed else [0, 0], 1, [dense_x, dense_w, dense_b])
    if by_spikes and need_b:
        gb_c = g.sum((0, 2, 3))
    return g, gx_c, gw_c, gb_c


def _by_spikes(choice: str | None, activity: float | None, crossover: float) -> bool:
    """Whether a chunk's gradient takes the spike-driven kernel: the plan says "spike", or it says
    nothing and the chunk's input activity is at most the crossover."""
    if choice is not None:
        return choice == "spike"
    return activity is not None and activity <= crossover


class _SpikeWeightGrad:
    """One backward's spike-driven weight gradient of a synapse (the C kernel,
    :func:`saec.runtime.kernels.cpu_spike.weight_grad`), summed over the row chunks it is given.

    Each of the kernel's threads adds its rows into its own partial gradient (in the kernel's
    arranged weight layout, out channels innermost); :meth:`total` sums them and turns the sum
    into the parameter's shape. Float32 only (:func:`saec.runtime.spikedriven.weight_grad_applies`).
    """

    def __init__(self, op: ops.Op, param: Tensor, sample: tuple[int, ...], max_rows: int) -> None:
        self.op, self.sample, self.param = op, sample, param
        self.partials: Tensor | None = None
        self.max_rows = max_rows

    def add(self, x_rows: Tensor, g: Tensor) -> None:
        """Add the gradient of the chunk's input rows ``x_rows`` [n, *source shape] (bool) and output
        gradient rows ``g`` (float32, as the dense backward has them).

        Raises:
            MemoryError: the kernel could not get its few kilobytes of scratch memory.
        """
        if not cpu_spike.grad_rows_supported(self.op, g):  # a contiguous-planned Conv2d: channels-last rows
            g = g.contiguous(memory_format=torch.channels_last)
        if self.partials is None:
            shape = cpu_spike.arranged_weight_shape(self.op, tuple(self.param.shape))
            self.partials = torch.zeros(cpu_spike.weight_grad_workers(self.max_rows), *shape,
                                        dtype=torch.float32, device=self.param.device)
        if not cpu_spike.weight_grad(self.op, x_rows, g, self.sample, self.partials):
            raise MemoryError("the spike-driven weight gradient could not allocate its scratch memory")

    def total(self) -> Tensor | None:
        """The summed weight gradient in the parameter's shape (a view; None when no chunk was added)."""
        if self.partials is None:
            return None
        return cpu_spike.from_arranged(self.op, self.partials.sum(0))

class _SpikeInputGrad:
    """One backward's input gradient at the active inputs only (the C kernel,
    :func:`saec.runtime.kernels.cpu_spike.input_grad`): for a synapse whose input's gradient is read
    only where the input is 1 (its producer is a ``spike_gated`` LIF layer, whose surrogate is zero
    wherever the neuron did not fire), so the dense transposed product's other values are never used.
    Each active input's gradient is the dot product of its weights with the output-gradient window they
    reach; the rest of the chunk's gradient is 0. Float32 only."""

    def __init__(self, op: ops.Op, param: Tensor, sample: tuple[int, ...]) -> None:
        self.op, self.sample = op, sample
        self.wt = spikedriven.kept_arranged_weight(op, param)  # the forward's, unless an output order changed it

    def into(self, x_rows: Tensor, g: Tensor, dx_rows: Tensor) -> None:
        """Write the chunk's input gradient into ``dx_rows`` (the input's rows and layout) from its bool
        input rows ``x_rows`` and output-gradient rows ``g`` (float32, as the dense backward has them).

        Raises:
            MemoryError: the kernel could not get its few kilobytes of scratch memory.
        """
        if not cpu_spike.grad_rows_supported(self.op, g):  # a contiguous-planned Conv2d: channels-last rows
            g = g.contiguous(memory_format=torch.channels_last)
        if not cpu_spike.input_grad(self.op, x_rows, g, self.sample, self.wt, dx_rows):
            raise MemoryError("the spike-driven input gradient could not allocate its scratch memory")


class _InputStandIn:
    """One backward's stand-in for a convolution's float input where only its shape and layout
    matter (:meth:`get`)."""

    def __init__(self, sample: tuple[int, ...]) -> None:
        self.sample = sample
        self._weight_channels_last: Tensor | None = None

    def get(self, g: Tensor, weight: Tensor, channels_last_mode: bool) -> tuple[Tensor | None, Tensor]:
        """A stand-in for a convolution's float input, and the weight to pass with it, for an
        input-gradient-only ``convolution_backward`` (its input gradient reads the input's shape and
        layout, never its values), so that the float input need not be rebuilt; (None, weight) where
        the stand-in could change which kernel runs (the caller then rebuilds the input).

        oneDNN picks the channels-last kernel from the input's or the weight's layout. The stand-in is
        a broadcast zero (no memory, no layout), so in channels-last mode the weight is passed
        channels-last instead; that layout is unambiguous only when the weight's dimension 1 and the
        input's channels exceed 1 (otherwise channels-last strides equal contiguous ones and the kernel
        choice could change: the one-channel output layer, a one-channel input).

        Args:
            g: the chunk's output gradient (its dtype and device; its rows count).
            weight: the weight as the dense backward passes it.
            channels_last_mode: the dense backward runs this op channels-last (:func:`_prefers_channels_last`).
        """
        rows = g.shape[0]
        stand_in = torch.zeros((), dtype=g.dtype, device=g.device).expand(rows, *self.sample)
        if not channels_last_mode:  # the contiguous kernel, as the dense path runs it
            return (stand_in, weight) if weight.is_contiguous() else (None, weight)
        if weight.shape[1] == 1 or self.sample[0] == 1:
            return None, weight
        if self._weight_channels_last is None or self._weight_channels_last.dtype != weight.dtype:
            self._weight_channels_last = weight.contiguous(memory_format=torch.channels_last)
        return stand_in, self._weight_channels_last


def _forward_rows(op: ops.Op, weight: Tensor, bias: Tensor | None, src: Tensor, sample: tuple[int, ...],
                  contiguous_out: bool, out_sample: tuple[int, int, int] | None,
                  pool: buffers.BufferPool | None, choice: SynapseChoice = DEFAULT_CHOICE,
                  spikes: Tensor | None = None) -> Tensor:
    """The synapse on rows ``src`` [n, *source shape], chunk by chunk, into one [n, ...] output
    (from ``pool``); see :class:`_SpikeInputSynapse` and :func:`spike_synapse` for the layouts.
    Planned spike-driven (``choice.forward``), all rows at once by the kernel, which reads ``spikes``
    (the same rows as bool, a quarter of the bytes) where given."""
    if choice.forward == "spike" and spikedriven.forward_applies(op, weight, src):
        return _spike_forward(op, weight, bias, src if spikes is None else spikes, pool, contiguous_out,
                              out_sample, sample)
    n = src.shape[0]
    out_numel = math.prod(output_shape(op, sample, "synapse"))  # the compiler's shape rules
    chunks = _chunks(n, math.prod(sample), out_numel, src.element_size(), src.device, choice)
    out = None
    for a, b in chunks:
        y = synapse_forward(op, weight, bias, _as_input(src[a:b], op, sample, src.dtype, choice), choice)
        if out_sample is not None:  # a linear's output as [n, C, H, W], stored channels-last
            y = y.view(y.shape[0], *out_sample)
        if len(chunks) == 1:  # one chunk: the result is the output
            return (y.contiguous(memory_format=torch.channels_last) if out_sample is not None
                    else y.contiguous() if contiguous_out else y)
        if out is None:
            if out_sample is not None:
                c, h, w = out_sample
                strides = (h * w * c, 1, w * c, c)
            elif contiguous_out:
                strides = buffers.contiguous_strides((n, *y.shape[1:]))
            else:
                strides = _row_major_strides(y, n)
            out = buffers.empty_strided(pool, (n, *y.shape[1:]), strides, y.dtype, y.device)
        out[a:b].copy_(y)
    return out


def _row_major_strides(y: Tensor, n: int) -> tuple[int, ...]:
    """Strides of an [n, *y.shape[1:]] tensor whose rows have ``y``'s layout (y dense)."""
    row = y[0].numel()
    return (row, *y.stride()[1:])


def _accumulate(total: Tensor | None, part: Tensor | None) -> Tensor | None:
    """``total + part`` in place, the first part taken as it is; a bf16 / fp16 part starts a float32
    total, so that a weight gradient summed over row chunks rounds once per chunk in bf16 (as one
    whole-tensor bf16 backward would), not again at every addition. In float32 nothing is copied."""
    if part is None:
        return total
    if total is None:
        return part.to(torch.promote_types(part.dtype, torch.float32))
    return total.add_(part)


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype)


def _like(grad: Tensor | None, param: Tensor) -> Tensor | None:
    """``grad`` in ``param``'s dtype and exact strides.

    A channels-last convolution backward returns the weight gradient channels-last;
    for a weight with a size-1 dimension (the one-channel output layer, [C, 1, k, k])
    that layout has other strides than the contiguous parameter, which autograd's
    layout contract lets through and DistributedDataParallel then reports ("grad
    strides do not match bucket view strides") and copies on every step. Weights
    are small, so one copy here costs nothing and keeps the grad in the param's layout.
    """
    if grad is None:
        return None
    if grad.dtype == param.dtype and grad.stride() == param.stride():
        return grad
    return torch.empty_strided(param.shape, param.stride(), dtype=param.dtype, device=param.device).copy_(grad)


def spike_synapse(op: ops.Op, weight: Tensor, bias: Tensor | None, x: Tensor, x_bool: Tensor,
                  lead_dims: int = 1, sample: tuple[int, ...] | None = None,
                  contiguous_out: bool = False, out_sample: tuple[int, int, int] | None = None,
                  spike_driven: bool = True, choice: SynapseChoice = DEFAULT_CHOICE,
                  gated_input: bool = False) -> Tensor:
    """``synapse_forward`` whose backward keeps ``x_bool`` (x as bool) instead of x.

    Args:
        op: a Conv2d, ConvTranspose2d or Linear op.
        weight, bias: the synapse's parameters.
        x: the input spikes [*lead, *source shape], float, values 0 or 1, in any layout in
            which the lead dimensions are outermost and each row is dense (contiguous,
            channels-last): e.g. a LIF layer's spikes [T, B, C, H, W] before a flatten.
        x_bool: the same spikes as a bool tensor of x's shape (not checked: must equal ``x != 0``).
        lead_dims: how many leading dimensions of x are rows (T and B: 2).
        sample: the op's input shape per row (default: x's source shape); x's source
            shape is reshaped to it (a flatten or unflatten), chunk by chunk.
        contiguous_out: return the current in the contiguous layout even where the op
            computes channels-last (for spikes that a linear layer reads next).
        out_sample: for a Linear, return its output per row as this (C, H, W) shape,
            channels-last (an unflatten moved before the LIF layer, for spikes that a
            convolution reads next).
        spike_driven: without autograd, run the spike-driven synapse where it applies
            (:mod:`saec.runtime.spikedriven`), with autograd the spike-driven weight gradient where
            ``choice.weight_grad`` and the input's activity say so; False: always the dense synapse
            and weight gradient.
        choice: the layer's chunk size, Conv2d layout and output-layer algorithm (the plan's).
        gated_input: x's gradient is read only where x is 1 (x's producer is a ``spike_gated`` LIF
            layer, the only reader of that gradient): backward may then compute it at the active
            inputs only and hand back 0 elsewhere (``choice.input_grad``; with ``spike_driven``).

    Returns:
        The synaptic current [*lead, *output shape]; gradients reach x (in x's shape and
        layout; with ``gated_input`` possibly only where x is 1), weight and bias as through
        ``synapse_forward`` (fp32 rounding).
    """
    lead = tuple(x.shape[:lead_dims])
    sample = tuple(sample) if sample is not None else tuple(x.shape[lead_dims:])
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):  # inference
        rows = x.reshape(math.prod(lead), *x.shape[lead_dims:])
        # a forward planned spike-driven is the layer's numerics (_forward_rows runs it), not a shortcut
        driven = spikedriven.synapse(op, weight, bias, rows, sample, contiguous_out, out_sample,
                                     buffers.active()) if spike_driven and choice.forward != "spike" else None
        if driven is not None:  # work only where the spikes are (sparse, binary input; see spikedriven)
            return driven.reshape(*lead, *driven.shape[1:])
        y = _forward_rows(op, weight, bias, rows, sample, contiguous_out,
                          None if out_sample is None else tuple(out_sample), buffers.active(), choice)
        return y.reshape(*lead, *y.shape[1:])
    if x_bool.shape != x.shape:
        x_bool = x_bool.reshape(x.shape)
    if out_sample is not None and not isinstance(op, ops.Linear):
        raise ValueError("out_sample applies to Linear synapses only")
    return _SpikeInputSynapse.apply(x, x_bool, weight, bias, op, lead, sample, contiguous_out,
                                    None if out_sample is None else tuple(out_sample), choice, spike_driven,
                                    gated_input)
