"""Quantisation-aware execution: the forward runs the chip's numbers, the gradient passes straight through.

A graph whose ``attrs["target"]`` names a hardware profile (``saec train SPEC --target loihi``
sets it; it is saved in the run's ``ir.json``, so evaluation, resume and export see it too) runs
every spiking layer as the chip will:

- weights (and biases) are replaced by their quantised values, integer / scale, with the
  target's own rounding and scale rule (:mod:`saec.targets.quantize`); the gradient with
  respect to the float weight is the gradient with respect to the quantised one
  (straight-through estimate: ``w + (q(w) - w).detach()``);
- the neuron's decay is the chip's (Loihi: 1 - round(4096 (1 - decay)) / 4096) and its
  threshold the register's value over the scale.

The float weights stay the trainable parameters (and what ``model.safetensors`` holds);
quantising them again at export gives exactly the values this forward used.

One entry per quantiser in :data:`FAKE_QUANTIZERS`, keyed like
:data:`saec.targets.quantize.QUANTIZERS`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import Tensor

from saec.compiler import ops
from saec.compiler.graph import IRGraph
from saec.errors import UserError
from saec.targets.fit import chip_decay
from saec.targets.quantize import LOIHI_BIAS_MANT, LOIHI_WEIGHT_RANGE, loihi_scale, speck_scale

#: The graph attribute that turns quantisation-aware execution on: a profile name or file.
TARGET_ATTR = "target"


def _straight_through(x: Tensor, quantised: Tensor) -> Tensor:
    """``quantised`` in the forward, the identity in the backward."""
    return x + (quantised - x).detach()


@dataclass(frozen=True)
class LayerQuantization:
    """One spiking layer's quantised numbers for one forward (floats in saec's units)."""

    weight: Tensor
    bias: Tensor | None
    neuron: ops.LIF  # the LIF op with the chip's decay and the threshold the register holds


def fake_quant_loihi(weight: Tensor, bias: Tensor | None, neuron: ops.LIF, decay: float) -> LayerQuantization:
    """Loihi (saec.targets.quantize.quantize_loihi): one power-of-two scale per layer, weights to the
    nearest even integer in [-256, 254], the threshold to its 17-bit mantissa, the bias to its
    13-bit mantissa (in the input's unit), the decay to the chip's."""
    with torch.no_grad():
        scale = loihi_scale(float(weight.detach().abs().max()), neuron.threshold)
    low, high = LOIHI_WEIGHT_RANGE
    q_weight = torch.clamp(2 * torch.round(weight.detach() * scale / 2), low, high) / scale
    q_bias = None
    if bias is not None:
        q_bias = _straight_through(bias, torch.clamp(torch.round(bias.detach() * scale), *LOIHI_BIAS_MANT) / scale)
    threshold = round(neuron.threshold * scale) / scale
    return LayerQuantization(_straight_through(weight, q_weight), q_bias,
                             replace(neuron, decay=decay, threshold=threshold))


def fake_quant_speck(weight: Tensor, bias: Tensor | None, neuron: ops.LIF, decay: float) -> LayerQuantization:
    """Speck / DYNAP-CNN (saec.targets.quantize.quantize_speck): one power-of-two scale per layer,
    weights and bias rounded to 8-bit integers, the threshold to its integer register; no leak
    (the fit check admits integrate-and-fire layers only, decay 1). Not modelled: the 16-bit state's
    clamp at -2**15 (min_v_mem), which a trained layer's membrane rarely reaches."""
    with torch.no_grad():
        scale = speck_scale(float(weight.detach().abs().max()), neuron.threshold)
    q_weight = torch.round(weight.detach() * scale) / scale
    q_bias = None
    if bias is not None:
        q_bias = _straight_through(bias, torch.clamp(torch.round(bias.detach() * scale), -128, 127) / scale)
    threshold = round(neuron.threshold * scale) / scale
    return LayerQuantization(_straight_through(weight, q_weight), q_bias,
                             replace(neuron, decay=decay, threshold=threshold))


#: profile.quantizer -> fake quantiser(weight, bias, LIF op, chip decay) -> LayerQuantization
FAKE_QUANTIZERS: dict[str, Callable[[Tensor, Tensor | None, ops.LIF, float], LayerQuantization]] = {
    "loihi_cuba": fake_quant_loihi,
    "dynapcnn_iaf": fake_quant_speck,
}


class TargetQuantizer:
    """The quantisation-aware forward of a graph for its ``attrs["target"]``.

    Args:
        graph: a compiled graph whose ``attrs["target"]`` names a profile with a fake quantiser.
    Raises:
        UserError: the profile has no quantiser that training can use (path ``--target``).
    """

    def __init__(self, graph: IRGraph) -> None:
        from saec.targets.profile import load_profile

        profile = load_profile(graph.attrs[TARGET_ATTR])
        self.target = profile.name
        self._fake = FAKE_QUANTIZERS.get(profile.quantizer or "")
        if self._fake is None:
            raise UserError(f"quantisation-aware training has no quantiser for target {profile.name!r} yet "
                            f"(quantisers: {', '.join(FAKE_QUANTIZERS)})", path="--target")
        #: synapse node -> (its LIF node, the chip's decay)
        self.layers: dict[str, tuple[str, float]] = {}
        for lif in graph.nodes(ops.LIF):
            op = graph.op(lif)
            decay, how = chip_decay(op.decay, profile)
            if decay is None:
                raise UserError(f"decay {op.decay} cannot be stored on {profile.name} ({how})",
                                path=f"layers.{graph.meta(lif).get('layer', lif)}")
            self.layers[graph.inputs(lif)[0]] = (lif, decay)
        self._neuron_of = {lif: synapse for synapse, (lif, _) in self.layers.items()}

    def synapse(self, graph: IRGraph, node: str, weight: Tensor, bias: Tensor | None) -> LayerQuantization | None:
        """The quantised weight, bias and neuron of the spiking layer whose synapse is ``node``
        (None for a synapse that feeds no LIF, which stays float)."""
        if node not in self.layers:
            return None
        lif, decay = self.layers[node]
        return self._fake(weight, bias, graph.op(lif), decay)

    def synapse_of(self, lif: str) -> str | None:
        """The synapse node feeding LIF node ``lif`` (None if it is not a quantised layer's)."""
        return self._neuron_of.get(lif)


def target_quantizer(graph: IRGraph) -> TargetQuantizer | None:
    """The graph's quantisation-aware forward, or None when ``attrs["target"]`` is not set."""
    if not graph.attrs.get(TARGET_ATTR):
        return None
    return TargetQuantizer(graph)
