#!/usr/bin/env python
"""Inference (no autograd) on spike trains: the SAE's forward as saec runs it, with dense and with
spike-driven synapses, against the plain dense path, interleaved, on real MNIST.

- ``saec``: every synapse reads its input spike train as the producer wrote it (channels-last
  convolutions, flatten / unflatten per row chunk), works over ~8 MB row chunks into pooled
  outputs (no fresh pages), the fused C scan sums the spike counts on the way; dense synapses
  (oneDNN / MKL: every layer planned ``forward: dense``, ``Execution(spike_driven=False)``).
- ``spike``: saec as it runs by default: the spike-driven forward (``saec.runtime.spikedriven``,
  each layer's built-in ``forward: spike``, the same numerics as training): each row's active
  inputs add their weight columns / kernel windows.
- ``dense``: each synapse on the whole [T*B, ...] float tensor in the contiguous layout, fresh
  tensors every batch (what a plain PyTorch forward does), dense; the same scan kernel.

    python benchmarks/inference.py [--timesteps 16] [--batch 64] [--rounds 5]

Prints every synapse's input activity (the fraction of ones in its input spike train, from this
run's spikes) and whether it ran spike-driven, forward seconds per batch (median), image-timesteps
per second and the speed-ups; the spikes of ``saec`` and ``dense`` must agree bit for bit (exit 1
otherwise), the spike-driven ones may differ where a membrane lies within fp32 summation-order
rounding of the threshold: their count per layer is printed.
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
from saec.compiler import ops  # noqa: E402
from saec.runtime import fastpath, pool, spikedriven  # noqa: E402
from saec.runtime.execution import Execution  # noqa: E402
from saec.runtime.plan import ExecutionPlan, LayerPlan  # noqa: E402
from saec.training.data import default_mnist_root, load_images  # noqa: E402
from saec.runtime.model import SpikingAutoencoder  # noqa: E402

LAYERS = ("conv1", "conv2", "latent", "fc_dec", "deconv1", "output")


def _dense_synapse(op, w, b, x, x_bool, lead_dims=1, sample=None, contiguous_out=False, out_sample=None,
                   spike_driven=False, choice=fastpath.DEFAULT_CHOICE, gated_input=False):  # choice: forward dense
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
    spike_layers = _spike_layers(graph)
    ran_driven: dict[str, bool] = {}

    dense_plan = ExecutionPlan(layers=tuple((key, LayerPlan(forward="dense"))
                                            for key in sorted(set(model._layer_keys.values()))))

    def forward(kind: str):
        fastpath.spike_synapse = _dense_synapse if kind == "dense" else saec_synapse
        pool.MIN_POOLED_BYTES = 1 << 62 if kind == "dense" else pooled_bytes
        model.execution = Execution(spike_driven=False, plan=dense_plan) if kind != "spike" else Execution()
        try:
            with torch.inference_mode():
                t0 = time.perf_counter()
                out = model(x, generator=torch.Generator().manual_seed(1), record={"_encode", *LAYERS})
                return time.perf_counter() - t0, out
        finally:
            fastpath.spike_synapse, pool.MIN_POOLED_BYTES = saec_synapse, pooled_bytes

    kinds = ("saec", "spike", "dense")
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    outs = {}
    for r in range(args.rounds + 1):
        for kind in kinds[r % 3:] + kinds[:r % 3]:  # each kind first in turn
            seconds, outs[kind] = forward(kind)
            if r:  # the first round warms up (kernel build, pool)
                times[kind].append(seconds)
    with _watching(spikedriven, ran_driven, spike_layers), torch.inference_mode():  # which layers took it
        model.execution = Execution()
        model(x, generator=torch.Generator().manual_seed(1))
    rates = {layer: outs["saec"].trains[layer].float().mean().item() for layer in LAYERS}
    agree = all(torch.equal(outs["saec"].trains[layer], outs["dense"].trains[layer]) for layer in LAYERS)
    print(f"T={args.timesteps} B={args.batch} threads={args.threads}, {args.rounds} rounds, spike rates "
          + ", ".join(f"{k} {v:.3f}" for k, v in rates.items()))
    print("synapse input activity (fraction of ones) and forward: "
          + ", ".join(f"{syn} {_train(outs['saec'], src).float().mean().item():.3f}"
                      f" ({'spike-driven' if ran_driven.get(syn) else 'dense'})"
                      for syn, src in spike_layers.items()))
    med = {k: statistics.median(v) for k, v in times.items()}
    for kind in kinds:
        print(f"{kind:6s} {med[kind]:.3f} s per batch  {args.batch * args.timesteps / med[kind]:8.0f} image·T/s")
    differ = {layer: int((outs["spike"].trains[layer] != outs["dense"].trains[layer]).sum()) for layer in LAYERS}
    print(f"saec speed-up {med['dense'] / med['saec']:.2f}x, spike-driven speed-up {med['dense'] / med['spike']:.2f}x"
          f" (over saec {med['saec'] / med['spike']:.2f}x); saec's spikes identical to dense in every layer: {agree}; "
          "spike-driven spike positions differing from dense: "
          + ", ".join(f"{k} {v} of {outs['dense'].trains[k].numel()}" for k, v in differ.items()))
    return 0 if agree else 1


def _spike_layers(graph) -> dict[str, str]:
    """Each synapse node -> the recorded layer whose spike train is its input ("_encode": the
    Poisson input), following flattens and unflattens back to the producer."""
    found = {}
    for name in graph.order():
        if not graph.op(name).has_weights:
            continue
        src = graph.inputs(name)[0]
        while isinstance(graph.op(src), (ops.Flatten, ops.Unflatten)):
            src = graph.inputs(src)[0]
        found[name] = "_encode" if isinstance(graph.op(src), ops.PoissonEncode) else graph.meta(src)["layer"]
    return found


def _train(out, layer: str):
    return out.encoded if layer == "_encode" else out.trains[layer]


class _watching:
    """Within the block, note for each synapse node whether the spike-driven synapse ran it."""

    def __init__(self, module, ran: dict[str, bool], synapses: dict[str, str]) -> None:
        self.module, self.ran, self.names = module, ran, list(synapses)

    def __enter__(self):
        self.original, calls = self.module.forward_into, iter(self.names)  # synapses run in graph order

        def watched(*args, **kwargs):
            self.ran[next(calls)] = True
            return self.original(*args, **kwargs)

        self.module.forward_into = watched
        return self

    def __exit__(self, *exc):
        self.module.forward_into = self.original
        return False

if __name__ == "__main__":
    raise SystemExit(main())
