"""Spike-driven synapses: synapses whose input is a spike train do work only where it is 1.

Every synapse input of the SAE is binary (the Poisson encoding, then each layer's
spikes) and, trained, 1-5 % active. A dense convolution or matrix product spends
its multiply-adds on the zeros; the spike-driven synapse (the C kernel
:mod:`saec.runtime.kernels.cpu_spike`) lists each row's ones and adds their weight
columns (linear) or kernel windows (conv2d, transposed conv2d) into the output:
work in proportion to the number of spikes, no multiplications.

**The forward, as a layer's numerics.** A 1 adds its weight exactly, so the only rounding is
the order of the additions: the kernel adds each output's bias, then the weights of the active
inputs in logical input order, whatever the input's layout, the rows' chunking, the thread count
or the CPU (:func:`forward_into`). That makes it a numerics of its own: a layer whose execution
plan says ``forward: spike`` (the built-in choice for every synapse that reads a spike train,
:data:`saec.runtime.plan.BUILTIN_FORWARD`) runs it on every path, training (fast and reference),
step by step and inference, and those paths agree spike for spike
(:func:`saec.runtime.fastpath.synapse_forward`). It runs where :func:`forward_applies` says (the CPU,
float32, no autocast, the kernel built, ``SAEC_SPIKE_DRIVEN`` not "0"; the same answer on every
path), elsewhere the dense synapse does; ``forward: dense`` keeps oneDNN's / MKL's sums, which
differ by fp32 rounding.

**The inference shortcut** for a layer planned dense: forward without autograd
(``torch.no_grad()`` / ``torch.inference_mode()``) on the CPU, float32 weights, not under autocast,
when the C kernel is built, and when the layer's input activity (the fraction of ones, estimated on
a spread sample of rows) is at most :data:`MAX_ACTIVITY`, :func:`synapse` runs the kernel instead of
the dense synapse. Off for one model with ``model.execution = Execution(spike_driven=False)``, for
the whole process with ``SAEC_SPIKE_DRIVEN=0``; per layer, a caller passes ``max_activity`` to
:func:`synapse` (0: never, 1: whenever the kernel applies). Its currents then differ from the dense
forward's by fp32 rounding, so a neuron whose membrane potential lies within that rounding of its
threshold can spike differently (tests/runtime/test_spikedriven.py states the bound).
:func:`training_forward` turns the shortcut off, for checks whose meaning is "as trained".

**The gradients.** Training uses the same kernel source for the weight gradient
(:func:`weight_grad_applies`, :data:`WEIGHT_GRAD_MAX_ACTIVITY`; the fast path's backward,
:mod:`saec.runtime.fastpath`): dW = sum over rows of g (x) x needs work only where x is 1, each
active input adding a window of the output gradient into its weight taps; and, where the input's
producer is a ``spike_gated`` LIF layer (which reads its spikes' gradient only where it fired), for
the input gradient at the active inputs (:data:`INPUT_GRAD_MAX_ACTIVITY`). Both differ from the
dense gradients by fp32 summation order only. ``SAEC_SPIKE_DRIVEN=0`` and
``Execution(spike_driven=False)`` turn them off.
"""

from __future__ import annotations

import dataclasses
import math
import os
import weakref
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor

from saec.compiler import ops
from saec.compiler.passes.shapes import output_shape
from saec.runtime import pool as buffers
from saec.runtime.kernels import cpu_spike

#: "0" turns spike-driven inference and the spike-driven weight gradient off (the dense synapses run).
ENV_SWITCH = "SAEC_SPIKE_DRIVEN"

#: A layer whose input has a larger fraction of ones runs the dense synapse. The kernel does
#: (fraction x the dense multiply-adds) additions, each a load, add and store of an output
#: element, where oneDNN keeps its sums in registers: a provisional crossover that leaves the
#: 1-5 % the SAE's layers run at well inside, and inputs such as the Poisson encoding of a
#: bright image (often over a third ones) to the dense path. Not yet measured on a quiet machine:
#: benchmarks/inference.py prints every layer's input activity beside the timings.
MAX_ACTIVITY = 0.2

#: The weight gradient's crossover: a row chunk whose input has a larger fraction of ones gets the
#: dense weight gradient (oneDNN's / MKL's), a sparser one the spike-driven kernel's, where a layer's
#: execution plan does not choose (``SynapseChoice.weight_grad``). The kernel does (fraction x the
#: dense multiply-adds) additions, each a load, add and store of a weight-gradient element with no
#: register blocking, where a dense GEMM runs near the CPU's peak. Measured on a quiet 2-core AMD
#: EPYC (``python benchmarks/weight_grad.py --rounds 5``, benchmarks/README.md): the spike-driven
#: gradient wins up to ~0.2 for conv2, deconv1 and latent (3.5x, 3.6x, 2.3x at 0.03), breaks even
#: at ~0.03-0.1 for fc_dec and the output layer, and loses above ~0.015 for conv1 (0.62x at 0.03,
#: 2 ms a step); 0.1 takes the large layers' gain (1.23x on the whole training step, A/B) and
#: costs conv1 ~2 ms. A per-machine plan (``saec plan``) chooses per layer instead.
WEIGHT_GRAD_MAX_ACTIVITY = 0.1

#: The input gradient's crossover (where the producer is spike-gated, see
#: :func:`saec.runtime.fastpath.spike_synapse`): a row chunk whose input has a larger fraction of ones
#: gets the dense input gradient, a sparser one the kernel's dot products at its active inputs, where
#: a layer's execution plan does not choose (``SynapseChoice.input_grad``). Measured on a quiet 2-core
#: AMD EPYC (``python benchmarks/weight_grad.py --gradient input --rounds 5``, T = 16, B = 64): the
#: kernel wins at 0.1 on every layer (conv2 2.1x, deconv1 1.85x, fc_dec 1.27x, latent 1.14x, the output
#: layer 1.07x; 2.2-4.2x at 0.01-0.03) and breaks even at ~0.1 (output), ~0.15 (latent, fc_dec), ~0.25
#: (deconv1) and above 0.3 (conv2); so 0.1.
INPUT_GRAD_MAX_ACTIVITY = 0.1

#: Rows sampled (spread over time steps and images) to estimate a layer's input activity.
ACTIVITY_SAMPLE_ROWS = 64


def is_on() -> bool:
    """Whether spike-driven inference and weight gradients are allowed in this process
    (``$SAEC_SPIKE_DRIVEN`` is not "0")."""
    return os.environ.get(ENV_SWITCH, "1") != "0"


def applies(op: ops.Op, weight: Tensor, rows: Tensor) -> bool:
    """Whether the spike-driven synapse can run ``op`` on the binary ``rows`` [n, ...] now as an
    inference shortcut: no autograd, and :func:`forward_applies`."""
    if torch.is_grad_enabled() and (rows.requires_grad or weight.requires_grad):
        return False
    return forward_applies(op, weight, rows)


def forward_applies(op: ops.Op, weight: Tensor, rows: Tensor) -> bool:
    """Whether the spike-driven forward kernel can run ``op`` on the binary ``rows`` [n, ...]: switched
    on, no CPU autocast (which asks for low-precision synapses; the kernel sums in float32), a conv2d /
    transposed conv2d / linear the C kernel handles on these tensors (CPU, float32 weights), the kernel
    built (this call builds it on first use). Where a layer's forward is planned spike-driven
    (``SynapseChoice.forward``) every path asks this, and the answer does not depend on the path."""
    if not is_on() or torch.is_autocast_enabled("cpu"):
        return False
    return cpu_spike.supports(op, rows, weight)


def weight_grad_applies(op: ops.Op, weight: Tensor, dtype: torch.dtype, device: torch.device,
                        sample: tuple[int, ...]) -> bool:
    """Whether the spike-driven weight gradient can run for ``op`` in a backward that computes in
    ``dtype`` on ``device``: switched on (``$SAEC_SPIKE_DRIVEN`` is not "0"), float32 (bf16 / autocast
    keep the dense path: the kernel sums in float32), CPU, a conv2d / transposed conv2d / linear on
    input rows of shape ``sample`` (at most 4 dimensions, int32 indices), the kernel built (this call
    builds it on first use)."""
    return (is_on() and dtype == torch.float32 and weight.dtype == torch.float32 and device.type == "cpu"
            and weight.device.type == "cpu" and type(op) in (ops.Linear, ops.Conv2d, ops.ConvTranspose2d)
            and len(sample) <= 4 and 0 < math.prod(sample) < 1 << 31 and cpu_spike.library() is not None)


@contextmanager
def training_forward(model) -> Iterator[None]:
    """Within the block, ``model`` (a :class:`~saec.runtime.model.SpikingAutoencoder`) runs its
    inference as its training forward does, bit for bit (each layer's planned forward, no inference
    shortcut): for golden data and agreement checks whose meaning is "spike for spike" (exports,
    saec's NIR simulator, the quantisation comparisons). Its execution is restored afterwards."""
    before = model.execution
    model.execution = dataclasses.replace(before, spike_driven=False)
    try:
        yield
    finally:
        model.execution = before


def input_activity(rows: Tensor, sample_rows: int = ACTIVITY_SAMPLE_ROWS) -> float:
    """The fraction of nonzero elements in about ``sample_rows`` rows of ``rows`` [n, ...], taken
    at an even stride over all n rows (time steps and images: the first step alone fires less)."""
    n = rows.shape[0]
    if n == 0 or rows[0].numel() == 0:
        return 0.0
    sample = rows[::max(1, n // sample_rows)]
    return torch.count_nonzero(sample).item() / sample.numel()


def synapse(op: ops.Op, weight: Tensor, bias: Tensor | None, rows: Tensor, sample: tuple[int, ...],
            contiguous_out: bool = False, out_sample: tuple[int, int, int] | None = None,
            pool: buffers.BufferPool | None = None, max_activity: float | None = None) -> Tensor | None:
    """The spike-driven forward of a synapse on binary input rows, or None where it does not apply
    (see the module docstring: the caller then runs the dense synapse).

    Args:
        op: the synapse op (Linear, Conv2d, ConvTranspose2d; any other gives None).
        weight, bias: its parameters (float32).
        rows: the input [n, *source shape]: spikes, float 0/1 or bool/uint8, each row dense in any
            layout (e.g. a LIF layer's channels-last spikes before a flatten). Values are not
            checked: any nonzero counts as 1.
        sample: the op's input shape per row (the source shape reshaped: a deferred flatten).
        contiguous_out, out_sample: the output layout, as for
            :func:`saec.runtime.fastpath.spike_synapse` (a conv's output is otherwise channels-last,
            a linear's contiguous).
        pool: the buffer pool to take the output from (None: a fresh tensor).
        max_activity: run only when the input's estimated fraction of ones is at most this
            (default :data:`MAX_ACTIVITY`; 0 turns the layer off, 1 on).

    Returns:
        The synaptic current [n, *output shape] (float32), or None.
    """
    if not applies(op, weight, rows):
        return None
    limit = MAX_ACTIVITY if max_activity is None else max_activity
    if limit <= 0 or input_activity(rows) > limit:
        return None
    out = output_rows(op, rows.shape[0], sample, contiguous_out, out_sample, pool, rows.device)
    try:
        forward_into(op, weight, bias, rows, sample, out)
    except MemoryError:
        return None  # no scratch memory: the dense synapse will do
    return out


def output_rows(op: ops.Op, n: int, sample: tuple[int, ...], contiguous_out: bool,
                out_sample: tuple[int, int, int] | None, pool: buffers.BufferPool | None,
                device: torch.device) -> Tensor:
    """An output for ``n`` rows of ``op`` from ``pool`` in the layout the fast path hands out: a linear's
    [n, F] contiguous, or [n, *out_sample] channels-last; a convolution's channels-last, or contiguous
    with ``contiguous_out`` (for a linear reader)."""
    if isinstance(op, ops.Linear):
        shape = (n, *out_sample) if out_sample is not None else (n, op.out_features)
        channels_last = out_sample is not None
    else:
        shape = (n, *output_shape(op, tuple(sample), "synapse"))
        channels_last = not contiguous_out and shape[1] > 1
    strides = _channels_last_strides(shape) if channels_last else buffers.contiguous_strides(shape)
    return buffers.empty_strided(pool, shape, strides, torch.float32, device)


def forward_into(op: ops.Op, weight: Tensor, bias: Tensor | None, rows: Tensor, sample: tuple[int, ...],
                 out: Tensor) -> None:
    """The spike-driven forward of ``op`` on the binary ``rows`` (any nonzero is a 1) into ``out`` (any
    dense row layout, e.g. from :func:`output_rows`): each output element its bias plus the weights of
    the active inputs in logical order (:func:`saec.runtime.kernels.cpu_spike.forward`). The weights'
    kernel layout is kept per weight tensor until the weight changes.

    Raises:
        MemoryError: the kernel could not get its scratch memory (``out`` is then undefined).
    """
    order = cpu_spike.feature_order(op, out)  # a linear's output handed out unflattened, channels-last
    wt = kept_arranged_weight(op, weight, order, None if order is None else (out.shape[1:], out.stride()[1:]))
    b = None if bias is None else (bias.detach() if order is None else bias.detach()[order]).float().contiguous()
    if not cpu_spike.forward(op, wt, b, rows, tuple(sample), out):
        raise MemoryError("the spike-driven synapse could not allocate its scratch memory")


#: id(weight) -> ((op, data pointer, version, output layout), its rearranged copy); an entry goes with its weight
_ARRANGED: dict[int, tuple[tuple, Tensor]] = {}


def kept_arranged_weight(op: ops.Op, weight: Tensor, order: Tensor | None = None,
                         layout: tuple | None = None) -> Tensor:
    """:func:`cpu_spike.arranged_weight`, kept per weight tensor until the weight changes (its
    version counter moves on an in-place update, e.g. an optimiser step or loading a state dict),
    so that a forward does not copy all the weights again (the SAE: 10 MB), nor the backward's input
    gradient after it (the same arrangement, no ``order``). Costs one copy of the
    weights' memory while they live; weights without a version counter (tensors made under
    ``torch.inference_mode``, e.g. quantisation-aware execution's quantised weights) are not kept."""
    try:
        key = (op, weight.data_ptr(), weight._version, layout)
    except RuntimeError:  # an inference tensor
        return cpu_spike.arranged_weight(op, weight.detach(), order)
    cached = _ARRANGED.get(id(weight))
    if cached is not None and cached[0] == key:
        return cached[1]
    if cached is None:
        weakref.finalize(weight, _ARRANGED.pop, id(weight), None)
    arranged = cpu_spike.arranged_weight(op, weight.detach(), order)
    _ARRANGED[id(weight)] = (key, arranged)
    return arranged


def _channels_last_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    n, c, h, w = shape
    return (h * w * c, 1, w * c, c)

