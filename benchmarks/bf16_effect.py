#!/usr/bin/env python
"""Optional bf16 autocast on the CPU: its speed and its effect on L_rec, side by side.

Two copies of the SAE (sae_dense, same initial weights, same batches, same encoding
noise) train for a few steps, one in fp32 and one with ``torch.autocast("cpu",
torch.bfloat16)`` around the forward (synapses in bf16; the LIF recurrence stays
fp32, see model.py); steps alternate between the two. Reported: median s/step of
each, and the validation L_rec (fp32 evaluation, 256 MNIST test images) of both
models every ``--every`` steps.

    python benchmarks/bf16_effect.py [--steps 40] [--timesteps 16] [--batch 64]
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
from saec.training.data import default_mnist_root, load_images  # noqa: E402
from saec.training.losses import reconstruction_loss  # noqa: E402
from saec.runtime.model import SpikingAutoencoder  # noqa: E402
from saec.training.objective import objective  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--timesteps", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    _, graph = compile_spec(str(REPO / "specs" / "sae_dense.yaml"), [f"encoding.timesteps={args.timesteps}"])
    root = default_mnist_root()  # $SAEC_MNIST_ROOT or ./data/mnist; else the embedded subset
    images = (load_images("mnist", "test", root=root) if root else load_images("mnist5k", "train")).images
    train_x, val_x = images[: args.batch * args.steps], images[-256:]
    models, opts, gens, times = {}, {}, {}, {"fp32": [], "bf16": []}
    for kind in times:
        m = SpikingAutoencoder(graph)
        m.reset_parameters(torch.Generator().manual_seed(0))
        models[kind], opts[kind] = m, torch.optim.Adam(m.parameters(), lr=5e-4)
        gens[kind] = torch.Generator().manual_seed(1)

    def val_rec(m) -> float:
        with torch.no_grad():
            out = m(val_x, generator=torch.Generator().manual_seed(2))
            return float(reconstruction_loss(out.x_hat, val_x))

    print(f"T={args.timesteps} B={args.batch}; validation L_rec (fp32 eval) | fp32-trained | bf16-trained")
    print(f"step 0 | {val_rec(models['fp32']):.3f} | {val_rec(models['bf16']):.3f}")
    for step in range(args.steps):
        x = train_x[step * args.batch:(step + 1) * args.batch]
        for kind in (("fp32", "bf16") if step % 2 else ("bf16", "fp32")):
            m, opt = models[kind], opts[kind]
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=kind == "bf16"):
                out = m(x, generator=gens[kind])
            loss, _ = objective(m, out, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times[kind].append(time.perf_counter() - t0)
        if (step + 1) % args.every == 0:
            print(f"step {step + 1} | {val_rec(models['fp32']):.3f} | {val_rec(models['bf16']):.3f}")
    f, b = statistics.median(times["fp32"][1:]), statistics.median(times["bf16"][1:])
    print(f"median s/step: fp32 {f:.3f}, bf16 autocast {b:.3f}, speed-up {f / b:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
