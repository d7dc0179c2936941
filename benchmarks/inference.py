#!/usr/bin/env python
"""Inference (no autograd) on spike trains: the SAE's forward with saec's binary-input
synapses (sparse.binary_synapse: channels-last convolutions, gather-sum linear layers)
against the dense synapses, interleaved, on real MNIST; plus each synapse alone.

    python benchmarks/inference.py [--timesteps 16] [--batch 64] [--rounds 5]

Prints forward seconds per batch (median), image-timesteps per second, the speed-up,
and how many spikes agree between the two paths (the gather-sum adds in another
order, so a potential within rounding of the threshold may flip).
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
from saec.runtime import fastpath, sparse  # noqa: E402
from saec.runtime.data import default_mnist_root, load_images  # noqa: E402
from saec.runtime.model import SpikingAutoencoder, module_key  # noqa: E402

LAYERS = ("conv1", "conv2", "latent", "fc_dec", "deconv1", "output")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timesteps", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--weights", default=None, help="a run folder's model.safetensors (default: fresh init)")
    args = parser.parse_args()
    _, graph = compile_spec(str(REPO / "specs" / "sae_dense.yaml"), [f"encoding.timesteps={args.timesteps}"])
    model = SpikingAutoencoder(graph).eval()
    model.reset_parameters(torch.Generator().manual_seed(0))
    if args.weights:
        from saec.runtime import artifacts

        model.load_ir_state_dict(artifacts.load_weights(args.weights))
    root = default_mnist_root() or REPO.parent / "shared" / "data" / "mnist"
    x = load_images("mnist", "test", root=root).images[: args.batch]
    binary_synapse = sparse.binary_synapse

    def dense(op, w, b, h):
        return fastpath.synapse_forward(op, w, b, h)

    def forward(kind: str):
        sparse.binary_synapse = binary_synapse if kind == "binary" else dense
        try:
            with torch.inference_mode():
                t0 = time.perf_counter()
                out = model(x, generator=torch.Generator().manual_seed(1), record=set(LAYERS))
                return time.perf_counter() - t0, out
        finally:
            sparse.binary_synapse = binary_synapse

    times = {"dense": [], "binary": []}
    outs = {}
    for r in range(args.rounds + 1):
        for kind in (("dense", "binary") if r % 2 else ("binary", "dense")):
            t, outs[kind] = forward(kind)
            if r:
                times[kind].append(t)
    d, b = statistics.median(times["dense"]), statistics.median(times["binary"])
    imgT = args.batch * args.timesteps
    agree = {layer: (outs["dense"].trains[layer] == outs["binary"].trains[layer]).float().mean().item()
             for layer in LAYERS}
    rates = {layer: outs["dense"].trains[layer].float().mean().item() for layer in LAYERS}
    print(f"forward T={args.timesteps} B={args.batch}: dense {d:.3f} s ({imgT / d:,.0f} img·T/s), "
          f"binary {b:.3f} s ({imgT / b:,.0f} img·T/s), speed-up {d / b:.2f}x")
    print("spike rates: " + ", ".join(f"{k} {v:.3f}" for k, v in rates.items()))
    print("spike agreement binary vs dense: " + ", ".join(f"{k} {v:.6f}" for k, v in agree.items()))

    # each synapse alone, on the spike trains the network produced
    print("| synapse | input density | dense ms | binary ms | speed-up |")
    print("|---|---|---|---|---|")
    from saec.runtime.encoding import poisson_encode

    prev = None
    for layer in LAYERS:
        if prev is None:
            train = poisson_encode(x, graph.op("_encode"), generator=torch.Generator().manual_seed(1))
        else:
            train = outs["dense"].trains[prev]
        prev = layer
        op = graph.op(layer)
        p = model.synapses[module_key(layer)]
        h = train.reshape(train.shape[0] * train.shape[1], *train.shape[2:])
        if layer in ("latent",):
            h = h.reshape(h.shape[0], -1)
        if layer == "deconv1":
            h = h.reshape(h.shape[0], *graph.op("unflat").shape)
        h = h.contiguous()
        ts = {"dense": [], "binary": []}
        with torch.inference_mode():
            for r in range(args.rounds + 1):
                for kind in ("dense", "binary"):
                    t0 = time.perf_counter()
                    (binary_synapse if kind == "binary" else dense)(op, p.weight, None, h)
                    if r:
                        ts[kind].append(time.perf_counter() - t0)
        dd, bb = statistics.median(ts["dense"]), statistics.median(ts["binary"])
        print(f"| {layer} | {h.float().mean().item():.3f} | {dd * 1e3:.1f} | {bb * 1e3:.1f} | {dd / bb:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
