"""Speck / DYNAP-CNN export: the quantised network as a sinabs layer list (a pure function).

:func:`write_speck` takes a network already in Speck's integers
(:func:`saec.targets.quantize.quantize` with the ``speck`` profile) and writes two files that
rebuild it in sinabs (3.1.3) without saec:

- ``speck.json``: the layers in order, each named after the sinabs / torch class it becomes
  (``Conv2d``, ``IAFSqueeze``, ``SumPool2d``) with that class's arguments, plus what sinabs does
  not hold (the input, T, the encoder, the readout saec computes on the host, each layer's scale);
- ``speck.npz``: the integer weights (int8) and biases (int16), keyed ``<layer>.weight``.

Why a layer list and not NIR: sinabs' ``from_nir`` (3.1.3) has no ``nir.Linear`` branch, ignores
an IF node's ``r``, crashes on the per-neuron threshold arrays NIR requires, and sets
``min_v_mem = -v_threshold``, a membrane floor saec's network does not have; NIR also has no
place for sinabs' spike function (one spike per step) and reset. A layer list states exactly
the sinabs network, integers included, and ``scripts/targets/speck_verify.py`` shows how it is
built: ``nn.Sequential`` of these layers -> ``DynapcnnNetwork(..., discretize=True)``. The
values are already in the chip's formats, and ``min_v_mem = -2**15`` caps sinabs' discretisation
factor at 1, so sinabs' own quantisation keeps them as they are (the driver checks that).

A linear layer is written as the convolution DYNAP-CNN runs (its kernel spans the map it reads);
the flatten before it becomes nothing. Ops Speck cannot run are refused by the
:data:`SPECK_EXPORT` table (the fit check, run by ``quantize``, refuses them first, with located
messages).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from saec.compiler import ops
from saec.compiler.dispatch import OpTable
from saec.compiler.graph import IRGraph
from saec.targets.quantize import SPECK_STATE_LIMIT, QuantizedNetwork

LAYERS_FILE = "speck.json"
WEIGHTS_FILE = "speck.npz"
FORMAT = "saec.speck-layers"
FORMAT_VERSION = 1
TOOLCHAIN = "sinabs 3.1.3"

#: saec reset -> sinabs reset function (sinabs/activation/reset_mechanism.py)
SINABS_RESET = {"zero": "MembraneReset", "subtract": "MembraneSubtract"}

#: (graph, node, quantised network) -> (layer entries, arrays for speck.npz)
LayerWriter = Callable[[IRGraph, str, QuantizedNetwork], tuple[list[dict[str, Any]], dict[str, np.ndarray]]]
SPECK_EXPORT: OpTable[LayerWriter] = OpTable("Speck export")


@SPECK_EXPORT.register(ops.Input, ops.PoissonEncode, ops.Flatten, ops.MaxCumulativeReadout, ops.Output)
def _nothing(graph: IRGraph, node: str, qnet: QuantizedNetwork):
    # the input and its encoder are outside the chip (spikes arrive as events), a flatten is the next
    # linear layer's kernel shape, and the readout runs on the host from the output layer's current
    return [], {}


def _conv_entry(graph: IRGraph, node: str, qnet: QuantizedNetwork, weight: np.ndarray, *, stride, padding,
                source: str) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    q = qnet.layers[node]
    layer = graph.meta(node)["layer"]
    arrays = {f"{layer}.weight": weight.astype(np.int8)}
    if q.bias is not None:
        arrays[f"{layer}.bias"] = q.bias.astype(np.int16)
    entry = {"type": "Conv2d", "name": layer, "from": source, "in_channels": int(weight.shape[1]),
             "out_channels": int(weight.shape[0]), "kernel_size": [int(k) for k in weight.shape[2:]],
             "stride": [int(s) for s in stride], "padding": [int(p) for p in padding],
             "bias": q.bias is not None, "weight": f"{layer}.weight"}
    if q.bias is not None:
        entry["bias_array"] = f"{layer}.bias"
    return [entry], arrays


@SPECK_EXPORT.register(ops.Conv2d)
def _conv(graph: IRGraph, node: str, qnet: QuantizedNetwork):
    op = graph.op(node)
    return _conv_entry(graph, node, qnet, qnet.layers[node].weight, stride=op.stride, padding=op.padding,
                       source="conv2d")


@SPECK_EXPORT.register(ops.Linear)
def _linear(graph: IRGraph, node: str, qnet: QuantizedNetwork):
    # DYNAP-CNN runs a linear layer as a convolution whose kernel is the map it reads
    # (sinabs' _convert_linear_to_conv); before a flatten that map is the flatten's input
    src = graph.inputs(node)[0]
    if isinstance(graph.op(src), ops.Flatten):
        src = graph.inputs(src)[0]
    shape = tuple(graph.meta(src)["shape"])
    c, h, w = shape if len(shape) == 3 else (shape[0], 1, 1)
    weight = qnet.layers[node].weight.reshape(-1, c, h, w)
    return _conv_entry(graph, node, qnet, weight, stride=(1, 1), padding=(0, 0), source="linear")


@SPECK_EXPORT.register(ops.LIF)
def _iaf(graph: IRGraph, node: str, qnet: QuantizedNetwork):
    q = next(layer for layer in qnet.layers.values() if layer.neuron == node)
    return [{"type": "IAFSqueeze", "name": graph.meta(node)["layer"],
             # sinabs spikes where v >= spike_threshold: saec's u > th is already v >= th + 1 here
             "spike_threshold": int(q.spike_at), "min_v_mem": -SPECK_STATE_LIMIT,
             "reset_fn": SINABS_RESET[q.reset], "spike_fn": "SingleSpike",
             "scale": q.scale}], {}


@SPECK_EXPORT.register(ops.SumPool2d)
def _sum_pool(graph: IRGraph, node: str, qnet: QuantizedNetwork):
    op = graph.op(node)
    return [{"type": "SumPool2d", "name": graph.meta(node)["layer"],
             "kernel_size": [int(k) for k in op.kernel_size], "stride": [int(s) for s in op.stride]}], {}


SPECK_EXPORT.refuse(ops.ConvTranspose2d, "DYNAP-CNN has no transposed convolution (write the stride-1 one as a "
                                         "padded convolution)")
SPECK_EXPORT.refuse(ops.Unflatten, "DYNAP-CNN layers are convolutions on maps; there is no reshape")
SPECK_EXPORT.refuse((ops.ReLU, ops.Reparameterize), "not a spiking op: DYNAP-CNN runs integrate-and-fire neurons")
SPECK_EXPORT.refuse(ops.LeakyIntegrator, "DYNAP-CNN neurons have no leak and always spike")


@dataclass
class SpeckFiles:
    """What :func:`write_speck` wrote."""

    layers: Path  # speck.json
    weights: Path  # speck.npz
    entries: list[dict[str, Any]]  # the layer list as written


def speck_layers(qnet: QuantizedNetwork) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """The sinabs layer list of a Speck-quantised network, in graph order, and its integer arrays.

    Args:
        qnet: the network from ``quantize(graph, weights, load_profile("speck"))``.
    Returns:
        (entries, arrays): one dict per sinabs layer (see the module docstring) and the
        weights/biases keyed as the entries name them.
    """
    graph = qnet.graph
    entries: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    for node in graph.order():
        more, more_arrays = SPECK_EXPORT.lookup(graph.op(node), node=node)(graph, node, qnet)
        entries.extend(more)
        arrays.update(more_arrays)
    return entries, arrays


def speck_header(qnet: QuantizedNetwork) -> dict[str, Any]:
    """What the layer file says besides the layers: input, T, encoder, host readout, semantics."""
    graph = qnet.graph
    (encode,) = graph.nodes(ops.PoissonEncode)
    encoder = graph.op(encode)
    last = list(graph.nodes(ops.LIF))[-1]
    q_out = next(q for q in qnet.layers.values() if q.neuron == last)
    header: dict[str, Any] = {
        "format": FORMAT, "version": FORMAT_VERSION, "toolchain": TOOLCHAIN, "target": qnet.target,
        "input_shape": [int(d) for d in graph.meta(encode)["shape"]], "timesteps": int(encoder.timesteps),
        "input_layout": "sinabs squeezed layout: [batch * T, C, H, W], batch-major (IAFSqueeze batch_size = batch)",
        "encoder": {"type": "poisson", "scale": float(encoder.effective_scale), "noise": float(encoder.noise),
                    "note": "runs on the host: the chip receives the spike events"},
        "neuron": "IAFSqueeze(spike_threshold, min_v_mem, reset_fn, spike_fn=SingleSpike): v += conv(x) (+ bias); "
                  "one spike where v >= spike_threshold; reset; v clamped at min_v_mem",
        "scale_note": "each layer's integers are saec's float values times its scale (a power of two)",
        "notes": list(qnet.notes),
    }
    readouts = list(graph.nodes(ops.MaxCumulativeReadout))
    if readouts:
        r = graph.op(readouts[0])
        header["readout"] = {
            "type": "max_cumulative_potential", "layer": graph.meta(last)["layer"],
            "scale": float(r.scale), "t_min": int(r.t_min), "divide_by_timesteps": bool(r.divide_by_timesteps),
            "current_scale": q_out.scale, "decay": q_out.decay,
            "rule": "on the host: I(t) = output layer's integer input current / current_scale; "
                    "U(t) = decay * (U(t-1) + I(t)); x_hat = max over t >= max(t_min, 1) of U(t) / (T * scale) "
                    "(divide_by_timesteps) or / scale"}
    return header


def write_speck(directory: str | Path, qnet: QuantizedNetwork, *, metadata: dict[str, Any] | None = None) -> SpeckFiles:
    """Write ``speck.json`` and ``speck.npz`` for ``qnet`` into ``directory``.

    Args:
        directory: where the two files go (created if missing).
        qnet: a network quantised for ``speck``.
        metadata: extra fields for the layer file (e.g. which run it came from).
    Returns:
        :class:`SpeckFiles`.
    Raises:
        ValueError: ``qnet`` is not quantised for Speck (a caller's mistake, not user input).
        OSError: the files cannot be written. Each is written to a temporary name first and
            renamed, so a failed write leaves no half-written file under either name.
    """
    if qnet.target != "speck":
        raise ValueError(f"write_speck needs a network quantised for speck, not {qnet.target}")
    entries, arrays = speck_layers(qnet)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    document = {**speck_header(qnet), **(metadata or {}), "weights": WEIGHTS_FILE, "layers": entries}
    weights_path, layers_path = directory / WEIGHTS_FILE, directory / LAYERS_FILE
    tmp_weights = directory / f".{WEIGHTS_FILE}.tmp"
    tmp_layers = directory / f".{LAYERS_FILE}.tmp"
    try:
        with open(tmp_weights, "wb") as f:
            np.savez(f, **arrays)
        tmp_layers.write_text(json.dumps(document, indent=1) + "\n")
        os.replace(tmp_weights, weights_path)
        os.replace(tmp_layers, layers_path)
    finally:
        for tmp in (tmp_weights, tmp_layers):
            tmp.unlink(missing_ok=True)
    return SpeckFiles(layers=layers_path, weights=weights_path, entries=entries)


def read_speck(directory: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The layer file and its arrays, as written by :func:`write_speck` (for tests and tools)."""
    directory = Path(directory)
    document = json.loads((directory / LAYERS_FILE).read_text())
    with np.load(directory / document["weights"]) as data:
        arrays = {k: data[k] for k in data.files}
    return document, arrays
