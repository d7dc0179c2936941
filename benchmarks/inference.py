#!/usr/bin/env python
"""Inference (no autograd) on spike trains: the SAE's forward as saec runs it against the
plain dense path, interleaved, on real MNIST.

- ``saec``: every synapse reads its input spike train as the producer wrote it (channels-last
  convolutions, flatten / unflatten per row chunk), works over ~8 MB row chunks into pooled
  outputs (no fresh pages), the fused C scan sums the spike counts on the way.
- ``dense``: each synapse on the whole [T*B, ...] float tensor in the contiguous layout, fresh
  tensors every batch (what a plain PyTorch forward does); the same scan kernel.

    python benchmarks/inference.py [--timesteps 16] [--batch 64] [--rounds 5]

Prints forward seconds per batch (median), image-timesteps per second, the speed-up, and
whether the spikes of every layer agree bit for bit.
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

from saec.compiler.pipeline import compile_spec  # noqa: E402
from saec.runtime import fastpath, pool  # noqa: E402
from saec.training.data import default_mnist_root, load_images  # noqa: E402
from saec.runtime.model import SpikingAutoencoder  # noqa: E402

LAYERS = ("conv1", "conv2", "latent", "fc_dec", "deconv1", "output")


def _dense_synapse(op, w, b, x, x_bool, lead_dims=1, sample=None, contiguous_out=False, out_sample=None,
                   choice=fastpath.DEFAULT_CHOICE):
    lead = x.shape[:lead_dims]
    rows = x.reshape(-1, *(sample or x.shape[lead_dims:])).contiguous()
    y = fastpath.synapse_forward(op, w, b, rows, choice)
    if out_sample is not None:
        y = y.view(y.shape[0], *out_sample)
    return y.reshape(*lead, *y.shape[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timesteps", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", default=None, help="a run folder's model.safetensors (default: fresh init)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, graph = compile_spec(str(REPO / "specs" / "sae_dense.yaml"), [f"encoding.timesteps={args.timesteps}"])
    model = SpikingAutoencoder(graph).eval()
    model.reset_parameters(torch.Generator().manual_seed(0))
    if args.weights:
        from saec.run import artifacts

        model.load_ir_state_dict(artifacts.load_weights(args.weights))
    root = default_mnist_root()  # $SAEC_MNIST_ROOT or ./data/mnist; else the embedded subset
    x = (load_images("mnist", "test", root=root) if root else load_images("mnist5k", "train")).images[: args.batch]
    saec_synapse, pooled_bytes = fastpath.spike_synapse, pool.MIN_POOLED_BYTES

    def forward(kind: str):
        fastpath.spike_synapse = saec_synapse if kind == "saec" else _dense_synapse
        pool.MIN_POOLED_BYTES = pooled_bytes if kind == "saec" else 1 << 62
        try:
            with torch.inference_mode():
                t0 = time.perf_counter()
                out = model(x, generator=torch.Generator().manual_seed(1), record=set(LAYERS))
                return time.perf_counter() - t0, out
        finally:
            fastpath.spike_synapse, pool.MIN_POOLED_BYTES = saec_synapse, pooled_bytes

    times: dict[str, list[float]] = {"saec": [], "dense": []}
    outs = {}
    for r in range(args.rounds + 1):
        for kind in (("saec", "dense") if r % 2 else ("dense", "saec")):
            seconds, outs[kind] = forward(kind)
            if r:  # the first round warms up (kernel build, pool)
                times[kind].append(seconds)
    rates = {layer: outs["saec"].trains[layer].float().mean().item() for layer in LAYERS}
    agree = all(torch.equal(outs["saec"].trains[layer], outs["dense"].trains[layer]) for layer in LAYERS)
    print(f"T={args.timesteps} B={args.batch} threads={args.threads}, {args.rounds} rounds, spike rates "
          + ", ".join(f"{k} {v:.3f}" for k, v in rates.items()))
    med = {k: statistics.median(v) for k, v in times.items()}
    for kind in ("saec", "dense"):
        print(f"{kind:6s} {med[kind]:.3f} s per batch  {args.batch * args.timesteps / med[kind]:8.0f} image·T/s")
    print(f"saec speed-up {med['dense'] / med['saec']:.2f}x; spikes identical in every layer: {agree}")
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
