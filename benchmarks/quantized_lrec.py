"""L_rec of a trained run: saec's float network vs the same network quantised for a target and
run in the chip's integer arithmetic (saec.targets.quantize), on the run's first validation images.

    python benchmarks/quantized_lrec.py RUN --target loihi [--images 64] [--data-dir D]

Both see the same Poisson input spikes. Prints L_rec (sum over pixels of squared error, mean over
images) float / quantised, and the fraction of spike positions per layer where they differ.
The integer simulation is numpy int64 (no BLAS): a few seconds per image for the paper SAE at T = 8.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from saec.training.data import make_splits
from saec.runtime.encoding import poisson_encode
from saec.run.folder import load_model
from saec.targets.profile import load_profile
from saec.targets.quantize import quantize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--target", required=True)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    spec, model = load_model(args.run)
    model.eval()
    _, validation = make_splits(spec.data, args.data_dir, seed=spec.training.seed)
    x = validation.images[: args.images]
    qnet = quantize(model.graph, {k: v.numpy() for k, v in model.ir_state_dict().items()}, load_profile(args.target))
    (encode,) = [n for n in model.graph.order() if model.graph.op(n).type == "poisson_encode"]
    encoded = poisson_encode(x, model.graph.op(encode), generator=torch.Generator().manual_seed(0))
    layers = {model.graph.meta(q.neuron)["layer"] for q in qnet.layers.values()}
    with torch.no_grad():
        out = model(x, encoded=encoded, record=frozenset(layers))
    sim, x_hat_q = qnet.reconstruct(encoded.numpy())
    target = x.numpy().astype(np.float64)
    l_float = float(((out.x_hat.numpy() - target) ** 2).sum(axis=(1, 2, 3)).mean())
    l_quant = float(((x_hat_q - target) ** 2).sum(axis=(1, 2, 3)).mean())
    decays = sorted({q.decay for q in qnet.layers.values()})
    print(f"{args.run}: {len(x)} images, T={encoded.shape[0]}, target {args.target}, chip decays {decays}")
    for layer in sorted(layers):
        ref, chip = out.trains[layer].numpy(), sim[layer]
        print(f"  {layer}: spikes float {int(ref.sum()):,} quantised {int(chip.sum()):,}, "
              f"positions differing {int((ref != chip).sum()):,} of {ref.size:,}")
    print(f"L_rec float {l_float:.3f}  quantised {l_quant:.3f}")


if __name__ == "__main__":
    main()
