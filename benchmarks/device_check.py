#!/usr/bin/env python
"""Fast path against reference path on one device (CUDA when present): same answers, and
the fused scan's speed against the torch-op scan. Run by benchmarks/gpu.sh.

1. lif_scan's fused kernel (Triton on CUDA, C on CPU) against the torch-op scan, on the
   device, for neuron options of both semantics: bit-identical spikes / U / u, gradients
   within rtol 1e-5, atol 1e-6 x max|g| (fp32).
2. The SAE (sae_dense, T=8, B=4): fast path against reference path for the saec and the
   paper semantics: bit-identical spikes in every layer, equal loss, gradients within
   rtol 1e-4, atol 1e-5 x max|g| (cuDNN's weight gradients accumulate in varying order).
3. One LIF layer of the SAE's largest size (T=32, B=64, 12800 neurons), forward + backward:
   fused kernel against torch ops, median of --timing-reps (20).

Prints one line per check and ``device_check=PASS`` or ``device_check=FAIL`` last; exit 1 on FAIL.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from saec.compiler.ops import LIF  # noqa: E402
from saec.compiler.pipeline import compile_spec  # noqa: E402
from saec.runtime.execution import Execution  # noqa: E402
from saec.runtime.lif import kernel_for, lif_scan  # noqa: E402
from saec.runtime.model import SpikingAutoencoder  # noqa: E402
from saec.training.objective import objective  # noqa: E402

PAPER = LIF(spike_when="ge", lower_bound_mode="clamp", clamp_first=False, integrate="potential",
            surrogate="straight_through", reset_grad="pass", clamp_grad="pass", decay_grad=True)
OPS = {
    "saec": LIF(),
    "paper": PAPER,
    "fast_sigmoid_subtract": LIF(surrogate="fast_sigmoid", slope=5.0, reset="subtract", decay_grad=True),
    "arctan_potential": dataclasses.replace(PAPER, surrogate="arctan", reset_grad="cut", clamp_grad="cut"),
    "floor_above_threshold": LIF(threshold=0.5, lower_bound=0.75, lower_bound_mode="clamp", clamp_first=False,
                                 reset="subtract"),
}


def check_scan(device: torch.device) -> list[str]:
    failures = []
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(12, 4, 3000, generator=gen) * 1.3 + 0.2).to(device)
    for name, op in OPS.items():
        for cumulative in ("none", "last", "all"):
            outs = []
            for backend in ("auto", "torch"):
                xi = x.clone().requires_grad_()
                res = lif_scan(xi, op, cumulative=cumulative, record_potential=True, bool_spikes=True,
                               backend=backend)
                w = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device)
                loss = (res.spikes * w).sum() + 0.1 * (res.u * w).sum()
                if res.U is not None:
                    loss = loss + (res.U * w[: res.U.shape[0]] if cumulative == "all" else res.U * w[0]).sum()
                (g,) = torch.autograd.grad(loss, xi)
                outs.append((res, g))
            (a, ga), (b, gb) = outs
            for field, p, q in zip(a._fields, a, b):
                if (p is None) != (q is None) or (p is not None and not torch.equal(p, q)):
                    failures.append(f"scan {name} {cumulative}: {field} differs")
            scale = max(1.0, gb.abs().max().item())
            if not torch.allclose(ga, gb, rtol=1e-5, atol=1e-6 * scale):
                failures.append(f"scan {name} {cumulative}: gradient max|diff| {(ga - gb).abs().max().item():.3g}")
    kernel = kernel_for(x, "auto")
    print(f"scan: fused kernel = {getattr(kernel, '__name__', 'none (torch ops)')}; "
          f"{len(OPS) * 3} option/output combinations; {'ok' if not failures else 'FAILED'}")
    return failures


def check_network(device: torch.device) -> list[str]:
    failures = []
    layers = ("conv1", "conv2", "latent", "fc_dec", "deconv1", "output")
    for preset, spec in (("saec", "sae_dense.yaml"), ("paper", "paper/sae_dense.yaml")):
        _, graph = compile_spec(str(REPO / "specs" / spec), ["encoding.timesteps=8"])
        model = SpikingAutoencoder(graph)
        model.reset_parameters(torch.Generator().manual_seed(0))
        model.to(device)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(2.0)  # every layer spikes (the paper's init leaves the decoder silent at T=8)
        gen = torch.Generator().manual_seed(3)
        x = (torch.nn.functional.avg_pool2d((torch.rand(4, 1, 28, 28, generator=gen) < 0.15).float(), 3, 1, 1)
             * 1.5).clamp(0, 1).to(device)
        runs = {}
        for execution in ("fast", "reference"):
            model.execution = Execution(path=execution)
            model.zero_grad(set_to_none=True)
            out = model(x, generator=torch.Generator(device=device).manual_seed(1), record=set(layers))
            loss, _ = objective(model, out, x)
            loss.backward()
            runs[execution] = (out, loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()})
        (fo, fl, fg), (ro, rl, rg) = runs["fast"], runs["reference"]
        silent = [layer for layer in layers if not fo.trains[layer].any()]
        for layer in layers:
            if not torch.equal(fo.trains[layer], ro.trains[layer]):
                failures.append(f"network {preset}: spikes of {layer} differ")
        if not torch.equal(fl, rl):
            failures.append(f"network {preset}: loss {fl.item()} vs {rl.item()}")
        worst = 0.0
        for key, want in rg.items():
            scale = max(want.abs().max().item(), 1e-30)
            worst = max(worst, (fg[key] - want).abs().max().item() / scale)
            if not torch.allclose(fg[key], want, rtol=1e-4, atol=1e-5 * scale):
                failures.append(f"network {preset}: gradient {key} differs")
        print(f"network {preset}: spikes identical in {len(layers) - len(silent)} spiking layers "
              f"(silent: {silent or 'none'}), loss {fl.item():.4f}, worst gradient |diff|/max|g| {worst:.2g}")
    return failures


def time_scan(device: torch.device, reps: int) -> None:
    x = (torch.randn(32, 64, 12800, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.2).to(device)
    op = LIF()

    def once(backend: str) -> float:
        xi = x.clone().requires_grad_()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = lif_scan(xi, op, cumulative="last", backend=backend)
        (res.spikes.sum() + res.U.square().sum()).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    times = {"auto": [], "torch": []}
    for i in range(reps + 2):
        for backend in times:
            t = once(backend)
            if i >= 2:
                times[backend].append(t)
    fused, plain = statistics.median(times["auto"]), statistics.median(times["torch"])
    print(f"scan timing (T=32, B=64, 12800 neurons, fwd+bwd, median of {reps}): fused {fused * 1e3:.2f} ms, "
          f"torch ops {plain * 1e3:.2f} ms, speed-up {plain / fused:.1f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--timing-reps", type=int, default=20, help="repetitions of the scan timing")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":  # fp32 means fp32: no TF32 in cuDNN / cuBLAS
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    print(f"device: {torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}")
    failures = check_scan(device) + check_network(device)
    time_scan(device, args.timing_reps)
    for f in failures:
        print("FAIL:", f)
    print(f"device_check={'PASS' if not failures else 'FAIL'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
