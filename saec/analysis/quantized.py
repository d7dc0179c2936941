"""What quantisation to a chip's integers costs: saec's float network against its integer simulation.

:func:`compare_quantized` runs a trained network (saec's float runtime) and the same network in a
target's integers (:class:`saec.targets.quantize.QuantizedNetwork`, simulated in the chip's own
arithmetic) on the same Poisson input spikes, and reports L_rec of both and, per spiking layer,
how many spikes each emits and at how many positions (t, example, neuron) they differ. It is
target-independent: any quantiser's network compares the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from saec.compiler import ops
from saec.runtime.encoding import poisson_encode
from saec.runtime.model import SpikingAutoencoder
from saec.runtime.spikedriven import training_forward
from saec.targets.quantize import QuantizedNetwork


@dataclass
class LayerAgreement:
    """One spiking layer, float against quantised, summed over the compared images."""

    spikes_float: int
    spikes_quantized: int
    positions: int  # T x images x neurons
    differ: int  # positions where the two spike trains differ


@dataclass
class QuantizedComparison:
    """L_rec float vs quantised (sum over pixels of squared error, mean over images) and spikes per layer."""

    target: str
    images: int
    timesteps: int
    seed: int  # of the Poisson encoder's torch.Generator
    rec_loss_float: float
    rec_loss_quantized: float
    layers: dict[str, LayerAgreement]  # by spec layer name, graph order
    #: the first ``keep`` examples: "input" [T, B, *input shape] (0/1) and each layer's quantised
    #: spikes [T, B, ...] (uint8): golden data a vendor's simulator is checked against
    golden: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def spikes_per_inference(self) -> float:
        """Quantised spikes of all spiking layers per image (over the T steps)."""
        return sum(a.spikes_quantized for a in self.layers.values()) / max(self.images, 1)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (without the golden arrays)."""
        out = asdict(self)
        out.pop("golden")
        out["spikes_per_inference"] = self.spikes_per_inference
        return out


def compare_quantized(model: SpikingAutoencoder, qnet: QuantizedNetwork, images: torch.Tensor, *, seed: int = 0,
                      batch_size: int = 16, keep: int = 0) -> QuantizedComparison:
    """Run ``model`` (float) and ``qnet`` (integers) on the same encoded images and compare.

    Args:
        model: the trained float network (its graph is the one ``qnet`` was quantised from).
        qnet: the quantised network.
        images: [N, *input shape] float in [0, 1].
        seed: seed of the torch.Generator that Poisson-encodes the images (one generator,
            drawn batch after batch, so the result does not depend on ``batch_size`` only
            through the draw order: keep it fixed to reproduce a number).
        batch_size: images per simulated batch (the integer simulation holds every layer's
            [T, batch, ...] values at once).
        keep: also return the first ``keep`` images' input and quantised spikes
            (:attr:`QuantizedComparison.golden`).
    Returns:
        :class:`QuantizedComparison`.
    """
    graph = model.graph
    (encode,) = graph.nodes(ops.PoissonEncode)
    layers = [graph.meta(q.neuron)["layer"] for q in qnet.layers.values()]
    generator = torch.Generator().manual_seed(seed)
    totals = {layer: [0, 0, 0, 0] for layer in layers}
    err_float = err_quant = 0.0
    kept: dict[str, list[np.ndarray]] = {}
    model.eval()
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].float()
        encoded = poisson_encode(x, graph.op(encode), generator=generator)
        with torch.no_grad(), training_forward(model):  # the float network spike for spike, as trained
            out = model(x, encoded=encoded, record=frozenset(layers))
        sim, x_hat_q = qnet.reconstruct(encoded.numpy())
        target = x.numpy().astype(np.float64)
        err_float += float(((out.x_hat.numpy().astype(np.float64) - target) ** 2).sum())
        err_quant += float(((x_hat_q - target) ** 2).sum())
        for layer in layers:
            ref, chip = out.trains[layer].numpy().astype(np.uint8), sim[layer]
            t = totals[layer]
            t[0] += int(ref.sum())
            t[1] += int(chip.sum())
            t[2] += ref.size
            t[3] += int((ref != chip).sum())
        if start < keep:
            take = keep - start
            kept.setdefault("input", []).append(encoded.numpy()[:, :take].astype(np.uint8))
            for layer in layers:
                kept.setdefault(layer, []).append(sim[layer][:, :take])
    n = int(images.shape[0])
    return QuantizedComparison(
        target=qnet.target, images=n, timesteps=int(graph.op(encode).timesteps), seed=seed,
        rec_loss_float=err_float / n, rec_loss_quantized=err_quant / n,
        layers={layer: LayerAgreement(*totals[layer]) for layer in layers},
        golden={k: np.concatenate(v, axis=1) for k, v in kept.items()})
