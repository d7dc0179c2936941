#!/usr/bin/env python
"""Optional bf16 (``training.precision: bf16``): its speed and its effect on L_rec, side by side.

Two trainers of the SAE (sae_dense, same initial weights, same batches, same encoding
noise), one compiled with ``training.precision=fp32`` and one with ``training.precision=bf16``,
take steps with saec's own training step (:func:`saec.training.train.train_step`: bf16 runs
the synapses under ``torch.autocast(device, torch.bfloat16)``, the LIF state, the loss and
the optimizer stay fp32; gradient clipping as the spec says); steps alternate between the
two. Reported: median s/step of each, and the validation L_rec (fp32 evaluation, 256 MNIST
test images) of both models every ``--every`` steps.

    python benchmarks/bf16_effect.py [--steps 40] [--timesteps 16] [--batch 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from saec.compiler.pipeline import compile_spec  # noqa: E402
from saec.compiler.runconfig import RunConfig  # noqa: E402
from saec.training.data import default_mnist_root, load_images  # noqa: E402
from saec.training.imageset import ImageSet  # noqa: E402
from saec.training.losses import reconstruction_loss  # noqa: E402
from saec.training.train import Dist, setup_trainer, train_step  # noqa: E402

#: train_step names the last checkpoint only when the loss diverges; there is none here.
NO_CHECKPOINT = SimpleNamespace(kept_checkpoint=lambda: "no checkpoint (benchmark)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--timesteps", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    root = default_mnist_root()  # $SAEC_MNIST_ROOT or ./data/mnist; else the embedded subset
    data = load_images("mnist", "test", root=root) if root else load_images("mnist5k", "train")
    n_train = args.batch * args.steps
    train_set = ImageSet(data.images[:n_train], data.labels[:n_train], name=data.name)
    val_x = data.images[-256:]
    trainers, times = {}, {"fp32": [], "bf16": []}
    for kind in times:
        # same seed: the same initial weights and the same encoding-noise stream for both
        _, graph = compile_spec(str(REPO / "specs" / "sae_dense.yaml"), [
            f"encoding.timesteps={args.timesteps}", f"training.batch_size={args.batch}",
            f"training.precision={kind}"])
        trainers[kind] = setup_trainer(graph, RunConfig.of(graph).training, torch.device("cpu"), Dist())

    def val_rec(kind: str) -> float:
        with torch.no_grad():
            out = trainers[kind].model(val_x, generator=torch.Generator().manual_seed(2))
            return float(reconstruction_loss(out.x_hat, val_x))

    print(f"T={args.timesteps} B={args.batch}; validation L_rec (fp32 eval) | fp32-trained | bf16-trained")
    print(f"step 0 | {val_rec('fp32'):.3f} | {val_rec('bf16'):.3f}")
    for step in range(args.steps):
        batch = torch.arange(step * args.batch, (step + 1) * args.batch)
        for kind in (("fp32", "bf16") if step % 2 else ("bf16", "fp32")):
            t0 = time.perf_counter()
            train_step(trainers[kind], train_set, batch, NO_CHECKPOINT)
            times[kind].append(time.perf_counter() - t0)
        if (step + 1) % args.every == 0:
            print(f"step {step + 1} | {val_rec('fp32'):.3f} | {val_rec('bf16'):.3f}")
    f, b = statistics.median(times["fp32"][1:]), statistics.median(times["bf16"][1:])
    print(f"median s/step: fp32 {f:.3f}, bf16 autocast {b:.3f}, speed-up {f / b:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
