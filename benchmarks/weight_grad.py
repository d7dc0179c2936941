#!/usr/bin/env python
"""Weight gradients (or, ``--gradient input``, input gradients) of the SAE's synapses: dense (oneDNN /
MKL) against spike-driven (the C kernels), per layer and input activity, interleaved; to set the
crossovers ``WEIGHT_GRAD_MAX_ACTIVITY`` / ``INPUT_GRAD_MAX_ACTIVITY`` (saec/runtime/spikedriven.py)
on a quiet machine.

For every synapse layer of the spec (default ``specs/sae_dense.yaml``) at B images x T steps, on
random spikes of the layer's real input shape and layout (a convolution's spikes channels-last, as
the LIF scan hands them out; the latent linear reads conv2's channels-last spikes flattened) at each
activity (fraction of ones), and a random output gradient of the layer's output shape:

- ``dense``: what the fast path's backward runs without the kernel: the float input rebuilt from
  the bool spikes (``fastpath._as_input``), then ``aten.convolution_backward`` with output mask
  [False, True, False] (channels-last, as saec runs it), or ``g.t().mm(x)`` for a linear;
  ``dense op`` is the second part alone.
- ``spike``: ``cpu_spike.weight_grad`` into zeroed per-thread partials, their sum, back in the
  parameter's layout (``fastpath._SpikeWeightGrad``: what the backward pays).

With ``--gradient input`` (the layers whose input has a gradient: not the one reading the encoding):

- ``dense``: ``aten.convolution_backward`` with output mask [True, False, False] on a shape-only
  stand-in for the input (as the fast path runs it), or ``g.mm(weight)`` for a linear, then the copy
  into the input's layout; ``dense op`` is the product alone.
- ``spike``: ``cpu_spike.input_grad`` at the active inputs (0 elsewhere) into the input's layout
  (``fastpath._SpikeInputGrad``); the difference is taken at the active inputs.

All T*B rows at once (the backward works in row chunks of ~8 MB: the same work in pieces). After
one untimed warm-up of each, each round times dense and spike one after the other (order
alternating); the median of ``--rounds`` is printed with the ratio dense / spike (> 1: the
spike-driven gradient is faster) and the largest difference of the two gradients relative to the
largest gradient element (fp32 summation order).

    python benchmarks/weight_grad.py [--spec specs/sae_dense.yaml] [--timesteps 16] [--batch 64]
                                     [--rounds 7] [--activities 0.01 0.03 0.1 0.2] [--gradient input]

Run it on an otherwise idle machine: the numbers mean nothing under load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from saec.compiler import ops  # noqa: E402
from saec.compiler.pipeline import compile_spec  # noqa: E402
from saec.compiler.passes.params import weight_shapes  # noqa: E402
from saec.compiler.passes.shapes import output_shape  # noqa: E402
from saec.runtime import fastpath, plan, spikedriven  # noqa: E402
from saec.runtime.kernels import cpu_spike  # noqa: E402


def _spikes(rows: int, source: tuple[int, ...], activity: float, gen: torch.Generator) -> torch.Tensor:
    """Bool spikes [rows, *source], channels-last per row for an image-shaped source."""
    x = torch.rand(rows, *source, generator=gen) < activity
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _dense(op: ops.Op, x_bool: torch.Tensor, g: torch.Tensor, weight: torch.Tensor,
           sample: tuple[int, ...]) -> tuple[torch.Tensor, float]:
    """The dense weight gradient as the fast path computes it; (dW, seconds of the op alone)."""
    x = fastpath._as_input(x_bool, op, sample, torch.float32)
    start = time.perf_counter()
    if isinstance(op, ops.Linear):
        dw = g.t().mm(x)
    else:
        transposed = isinstance(op, ops.ConvTranspose2d)
        _, dw, _ = torch.ops.aten.convolution_backward(
            g, x, weight, None, list(op.stride), list(op.padding), [1, 1], transposed,
            list(op.output_padding) if transposed else [0, 0], 1, [False, True, False])
    return dw, time.perf_counter() - start


def _spike(op: ops.Op, x_bool: torch.Tensor, g: torch.Tensor, weight: torch.Tensor,
           sample: tuple[int, ...]) -> torch.Tensor:
    grad = fastpath._SpikeWeightGrad(op, weight, sample, x_bool.shape[0])
    grad.add(x_bool, g)
    return fastpath._like(grad.total(), weight)


def _dense_input(op: ops.Op, x_bool: torch.Tensor, g: torch.Tensor, weight: torch.Tensor,
                 sample: tuple[int, ...]) -> tuple[torch.Tensor, float]:
    """The dense input gradient as the fast path computes it, in the input's layout; (dx, seconds of
    the product alone)."""
    start = time.perf_counter()
    if isinstance(op, ops.Linear):
        dx = g.mm(weight)
    else:
        transposed = isinstance(op, ops.ConvTranspose2d)
        x, w = fastpath._InputStandIn(sample).get(g, weight, True)
        if x is None:
            x = fastpath._as_input(x_bool, op, sample, torch.float32)
        dx, _, _ = torch.ops.aten.convolution_backward(
            g, x, w, None, list(op.stride), list(op.padding), [1, 1], transposed,
            list(op.output_padding) if transposed else [0, 0], 1, [True, False, False])
    seconds = time.perf_counter() - start
    out = torch.empty(x_bool.shape).as_strided(x_bool.shape, x_bool.stride())
    fastpath._into_rows(out, dx)
    return out, seconds


def _spike_input(op: ops.Op, x_bool: torch.Tensor, g: torch.Tensor, weight: torch.Tensor,
                 sample: tuple[int, ...]) -> torch.Tensor:
    out = torch.empty(x_bool.shape).as_strided(x_bool.shape, x_bool.stride())
    fastpath._SpikeInputGrad(op, weight, sample).into(x_bool, g, out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=str(REPO / "specs" / "sae_dense.yaml"))
    parser.add_argument("--timesteps", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--activities", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.2])
    parser.add_argument("--gradient", choices=("weight", "input"), default="weight")
    args = parser.parse_args()
    dense_fn, spike_fn = (_dense, _spike) if args.gradient == "weight" else (_dense_input, _spike_input)
    if cpu_spike.library() is None:
        print("the C spike-driven kernel is not available (no compiler, or SAEC_NATIVE_KERNELS=0)", file=sys.stderr)
        return 1
    _, graph = compile_spec(args.spec, [f"encoding.timesteps={args.timesteps}"])
    rows = args.timesteps * args.batch
    print(f"cpu: {plan.cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"T={args.timesteps} B={args.batch} ({rows} rows); median of {args.rounds} rounds; "
          f"{args.gradient} gradients; crossover now "
          f"{spikedriven.WEIGHT_GRAD_MAX_ACTIVITY if args.gradient == 'weight' else spikedriven.INPUT_GRAD_MAX_ACTIVITY}")
    print(f"{'layer':<9} {'key':<52} {'activity':>8} {'dense ms':>9} {'dense op':>9} {'spike ms':>9} "
          f"{'ratio':>6} {'rel diff':>9}")
    gen = torch.Generator().manual_seed(0)
    for layer in plan.synapse_layers(graph, args.batch):
        if args.gradient == "input" and layer.reads_encoder:  # no input gradient
            continue
        op, sample = layer.op, layer.sample
        # the producer's spikes: a flatten's source is the conv's [C, H, W] (channels-last)
        producer = graph.inputs(layer.node)[0]
        while isinstance(graph.op(producer), (ops.Flatten, ops.Unflatten)):
            producer = graph.inputs(producer)[0]
        source = tuple(graph.meta(producer)["shape"])
        weight = torch.randn(weight_shapes(op)["weight"], generator=gen) * 0.05
        out = output_shape(op, sample, "synapse")
        g = torch.randn(rows, *out, generator=gen)
        if g.dim() == 4:
            g = g.contiguous(memory_format=torch.channels_last)
        for activity in args.activities:
            x_bool = _spikes(rows, source, activity, gen)
            dense_fn(op, x_bool, g, weight, sample)  # warm-up: oneDNN builds its primitives, pages are touched
            spike_fn(op, x_bool, g, weight, sample)
            dense_s, op_s, spike_s = [], [], []
            for r in range(args.rounds):
                for which in (("dense", "spike") if r % 2 == 0 else ("spike", "dense")):
                    start = time.perf_counter()
                    if which == "dense":
                        dw_dense, op_seconds = dense_fn(op, x_bool, g, weight, sample)
                        dense_s.append(time.perf_counter() - start)
                        op_s.append(op_seconds)
                    else:
                        dw_spike = spike_fn(op, x_bool, g, weight, sample)
                        spike_s.append(time.perf_counter() - start)
            if args.gradient == "input":  # compared where the input fired (the kernel writes 0 elsewhere)
                dw_dense, dw_spike = dw_dense[x_bool], dw_spike[x_bool]
            scale = max(dw_dense.abs().max().item(), 1e-30) if dw_dense.numel() else 1.0
            diff = (dw_spike - dw_dense).abs().max().item() / scale if dw_dense.numel() else 0.0
            d, o, s = (statistics.median(v) * 1e3 for v in (dense_s, op_s, spike_s))
            print(f"{layer.node:<9} {layer.key:<52} {activity:>8.3f} {d:>9.2f} {o:>9.2f} {s:>9.2f} "
                  f"{d / s:>6.2f} {diff:>9.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
