#!/usr/bin/env python
"""The C LIF scan alone: forward and backward of one SAE layer, per neuron-step.

One LIF layer with the saec semantics of specs/sae_dense.yaml (spike-gated surrogate,
zero reset, revive floor), current [T, B, 12800] (conv2 / fc_dec size), outputs from a
buffer pool as in training (so no page faults are timed), against a plain copy of the
same tensor (the memory-bandwidth yardstick).

    python benchmarks/lif_kernel.py                  # T=16, B=64, 2 threads
    python benchmarks/lif_kernel.py --timesteps 32 --threads 1
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
from saec.runtime import lif  # noqa: E402
from saec.runtime.pool import BufferPool, use_pool  # noqa: E402


def _median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--neurons", type=int, default=12800)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, graph = compile_spec(str(REPO / "specs" / "sae_dense.yaml"), [])
    op = next(graph.op(n) for n in graph.order() if isinstance(graph.op(n), ops.LIF))
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(args.timesteps, args.batch, args.neurons, generator=gen) * 0.6).requires_grad_()
    g = torch.randn(x.shape, generator=gen)
    pool = BufferPool()

    def forward():
        with use_pool(pool):
            return lif.lif_scan(x, op, cumulative="last", bool_spikes=True, counts=True)

    def forward_backward():
        res = forward()
        torch.autograd.backward([res.spikes], [g])

    fwd = _median_ms(forward, args.reps)
    both = _median_ms(forward_backward, args.reps)
    y = torch.empty_like(x.detach())
    copy = _median_ms(lambda: y.copy_(x.detach()), args.reps)
    n = x.numel()
    print(f"T={args.timesteps} B={args.batch} neurons={args.neurons} threads={args.threads} "
          f"spike rate {forward().spikes.mean().item():.3f}")
    print(f"forward            {fwd:8.1f} ms  {fwd * 1e6 / n:5.2f} ns per neuron-step")
    print(f"backward           {both - fwd:8.1f} ms  {(both - fwd) * 1e6 / n:5.2f} ns per neuron-step")
    print(f"copy of the input  {copy:8.1f} ms  (memory yardstick: 8 bytes per neuron-step)")


if __name__ == "__main__":
    main()
