"""Spike statistics of a trained run, for hardware: activity, synaptic operations, energy.

:func:`measure_stats` runs a network forward (no gradients) over a set of
images; ``saec stats RUN`` (:func:`saec.run.report.run_stats`) feeds it the
run's validation images and writes ``RUN/stats.json``.

Definitions (also written into ``stats.json``, block ``definitions``):

- **Synaptic operations** follow NeuroBench (Yik et al., "The NeuroBench
  framework for benchmarking neuromorphic computing algorithms and systems",
  Nature Communications 16, 1545 (2025); harness metric
  ``SynapticOperations``): per example, the forward pass of every connection
  layer with its inputs and its weights binarised (non-zero -> 1, bias
  ignored), summed over all time steps. Equivalently, every non-zero
  presynaptic value triggers one operation per non-zero outgoing weight: its
  *fan-out* (:func:`fan_out`). Binary (spike) inputs make these accumulates
  (``Effective_ACs``), real-valued inputs (the AE's image and ReLU
  activations) multiply-accumulates (``Effective_MACs``). The first layer is
  driven by the Poisson input spikes, which count. NeuroBench's ``Dense``
  counts every connection at every step, zeros included: synapses * T.
  NeuroBench lists no transposed convolution; it is counted by the same
  binarised-forward definition.
- **Dense MACs of the equivalent ANN**: one forward pass (T = 1) of the same
  graph as a framework computes it, the IR's ``macs`` (padding included).
- **Activation sparsity** follows NeuroBench (``ActivationSparsity``): zero
  outputs over all outputs of all neuron layers (LIF, ReLU; not the input
  encoding), over all time steps and examples.
- **Firing rate** of a neuron: spikes / T averaged over the examples; a layer's
  rate is the mean over its neurons. **Dead**: no spike for any evaluated
  example; **bursting**: rate >= 0.9 (:mod:`saec.analysis.metrics`).
- **Connection sparsity** follows NeuroBench (``ConnectionSparsity``): zero
  weights / all weights over the layers with weights (biases not counted).
  NeuroBench 2.3 visits Linear and Conv layers only; saec counts its
  transposed convolutions too (the same definition).
- **Memory footprint** follows NeuroBench (``Footprint``): bytes of every
  parameter and buffer of the network as stored (weights and biases, fp32).
- **Energy**: synaptic operations only, E = ACs * E_AC + MACs * E_MAC with
  32-bit float energies at 45 nm (:data:`HOROWITZ_45NM_FP32`); memory
  access, neuron updates and the encoder are not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from saec.compiler import ops
from saec.compiler.dispatch import OpTable
from saec.compiler.graph import IRGraph
from saec.analysis.metrics import DEFAULT_BURSTING_THRESHOLD, BatchAccumulator
from saec.errors import UserError

STATS_FORMAT = 1


@dataclass(frozen=True)
class OperationEnergy:
    """Energy of one synaptic operation, in joules, and where the numbers come from."""

    ac_joules: float  # one accumulate (add)
    mac_joules: float  # one multiply-accumulate (multiply + add)
    source: str


#: Horowitz (ISSCC 2014), energy table for 45 nm at 0.9 V: 32-bit float add 0.9 pJ,
#: 32-bit float multiply 3.7 pJ, so a MAC is 3.7 + 0.9 = 4.6 pJ.
HOROWITZ_45NM_FP32 = OperationEnergy(
    ac_joules=0.9e-12,
    mac_joules=3.7e-12 + 0.9e-12,
    source=("M. Horowitz, \"1.1 Computing's energy problem (and what we can do about it)\", IEEE International "
            "Solid-State Circuits Conference (ISSCC) 2014, pp. 10-14, doi:10.1109/ISSCC.2014.6757323: energy "
            "table for 45 nm, 0.9 V: 32-bit float add 0.9 pJ, 32-bit float mult 3.7 pJ. AC = one add = 0.9 pJ; "
            "MAC = mult + add = 4.6 pJ."),
)

DEFINITIONS = {
    "synops_per_example": (
        "NeuroBench synaptic operations (Effective_ACs + Effective_MACs): per example, the forward pass of each "
        "connection layer with inputs and weights binarised (non-zero -> 1, bias ignored), summed over all T "
        "steps; i.e. each non-zero presynaptic value (spike) triggers one operation per non-zero outgoing weight "
        "(its fan-out). A layer's entry counts the operations of its incoming synapses; the first layer's are "
        "triggered by the Poisson input spikes. Spike inputs -> accumulates (AC), real inputs -> MACs."),
    "dense_synops_per_example": "NeuroBench Dense: every connection at every step, zeros included (synapses * T).",
    "dense_macs_per_example": (
        "Multiply-accumulates of one forward pass (T = 1) of the equivalent ANN, as a framework computes them "
        "(IR meta `macs`, padding included)."),
    "activation_sparsity": (
        "NeuroBench ActivationSparsity: zero outputs / all outputs of every neuron layer (LIF or ReLU; not the "
        "input encoding), over all time steps and evaluated examples."),
    "synapses": "Connections from real (not padding) inputs to outputs of one time step (IR meta `synapses`).",
    "firing_rate": "Mean over the layer's neurons of (spikes / T, averaged over the examples).",
    "dead": "Neurons that never fired (AE/VAE: never non-zero) for any evaluated example.",
    "bursting": f"Neurons with firing rate >= {DEFAULT_BURSTING_THRESHOLD} spikes per step.",
    "spikes_per_example": "Spikes of the layer over all T steps, averaged over examples (AE/VAE: non-zero outputs).",
    "weight_bytes_int8": "Weight count * 1 byte (an 8-bit quantisation estimate; scales and zero points not counted).",
    "zero_weights": "Weights (not biases) of the layer that are exactly 0.",
    "connection_sparsity": (
        "NeuroBench ConnectionSparsity: zero weights / all weights, over the layers with weights (biases not "
        "counted); NeuroBench 2.3 visits Linear and Conv layers only, saec also its transposed convolutions. "
        "Exact here; NeuroBench rounds to 4 decimals."),
    "parameter_bytes": "Bytes of the layer's stored tensors: weight and bias (if any), as stored (fp32).",
    "footprint_bytes": (
        "NeuroBench Footprint: bytes of every parameter and buffer of the network (numel * element size), "
        "biases included."),
    "energy_joules_per_inference": (
        "Synaptic operations only: Effective_ACs * E_AC + Effective_MACs * E_MAC per example; memory access, "
        "neuron updates and the encoder are not counted."),
    "ann_energy_joules_per_inference": "dense_macs_per_example * E_MAC.",
    "sources": {
        "neurobench": ("J. Yik et al., \"The NeuroBench framework for benchmarking neuromorphic computing "
                       "algorithms and systems\", Nature Communications 16, 1545 (2025); metric definitions of "
                       "the NeuroBench harness (neurobench.readthedocs.io, workload metrics 'Synaptic Operations' "
                       "and 'Activation Sparsity', static metrics 'Connection Sparsity' and 'Footprint'; "
                       "neurobench 2.3.0)."),
        "energy": HOROWITZ_45NM_FP32.source,
    },
}


# ---------------------------------------------------------------- pure functions
def fan_out(op: ops.Op, in_shape: tuple[int, ...], weight: Tensor) -> Tensor:
    """Non-zero outgoing connections of every presynaptic neuron of a connection layer.

    Computed exactly as the adjoint of the layer with binarised weights applied
    to ones: d/dx sum(layer_bin(x)), in float64 (integers up to 2^53 are exact).
    This counts, per input position, the output positions and channels its
    non-zero weights reach: fewer at the borders of a convolution, none from a
    position a strided convolution skips.

    Args:
        op: a Conv2d, ConvTranspose2d or Linear IR op.
        in_shape: the layer's input shape of one example (C, H, W) or (F,).
        weight: the layer's weight (torch layout of the op).

    Returns:
        float64 tensor of shape ``in_shape``.

    Not callable under ``torch.inference_mode`` (it needs autograd).
    """
    from saec.runtime.model import apply_synapse

    binary = SimpleNamespace(weight=(weight.detach() != 0).to(torch.float64).cpu())  # no bias: NeuroBench drops it
    with torch.enable_grad():
        x = torch.zeros((1, *in_shape), dtype=torch.float64, requires_grad=True)
        apply_synapse(op, binary, x).sum().backward()
    return x.grad[0].detach()


def synaptic_operations(events: Tensor, fanout: Tensor) -> float:
    """Operations triggered by presynaptic events: sum over neurons of events * fan-out.

    Args:
        events: non-zero presynaptic values per neuron, summed over time steps and
            examples, shape of ``fanout`` (or [B, *shape], summed over B).
        fanout: from :func:`fan_out`.

    Returns:
        The number of operations (a float holding an integer).
    """
    events = events.to(torch.float64)
    if events.shape != fanout.shape:
        events = events.reshape(-1, *fanout.shape).sum(0)
    return float((events * fanout).sum())


def activation_sparsity(spikes: dict[str, float], neurons: dict[str, int], timesteps: int, examples: int) -> float:
    """NeuroBench activation sparsity: zero outputs / all outputs of the neuron layers.

    Args:
        spikes: non-zero outputs (spikes) per layer, summed over steps and examples.
        neurons: neurons per layer.
        timesteps: T.
        examples: evaluated examples.

    Returns:
        A fraction in [0, 1] (1: no neuron ever fired).
    """
    possible = sum(neurons[k] for k in spikes) * timesteps * examples
    if possible == 0:
        raise ValueError("no neuron outputs to measure sparsity over")
    return (possible - sum(spikes.values())) / possible


def connection_sparsity(weights) -> float:
    """NeuroBench connection sparsity: zero weights / all weights over the given weight tensors.

    Args:
        weights: the weight tensors of the layers with weights (no biases).
    Returns:
        A fraction in [0, 1] (unrounded; NeuroBench rounds to 4 decimals).
    Raises:
        ValueError: no weights at all.
    """
    zeros = total = 0
    for w in weights:
        zeros += int(torch.count_nonzero(torch.as_tensor(w) == 0))
        total += int(torch.as_tensor(w).numel())
    if total == 0:
        raise ValueError("no weights to measure connection sparsity over")
    return zeros / total


def footprint_bytes(tensors) -> int:
    """NeuroBench footprint: sum of numel * element size (bytes) over the tensors (parameters and buffers)."""
    return sum(int(t.numel()) * int(t.element_size()) for t in tensors)


# ---------------------------------------------------------------- graph reading
@dataclass
class _Connection:
    """One weighted IR node and where its presynaptic events come from."""

    node: str
    layer: str
    op: ops.Op
    in_shape: tuple[int, ...]
    source: str  # IR node producing the presynaptic values
    pools: tuple[str, ...]  # sum-pool nodes between source and node, in order (each spike stays one event)
    fanout: Tensor
    events: Tensor  # running sum over steps and examples, float64 [*in_shape]
    binary_input: bool  # spikes (AC) or real values (MAC)


@dataclass(frozen=True)
class EventSource:
    """How an op's outputs count as presynaptic events of the synapse they drive."""

    # (graph, node, model output, images [B, ...]) -> non-zero outputs per neuron summed over steps, [B, ...]
    events: Callable[[IRGraph, str, Any, Tensor], Tensor]
    binary: bool  # spikes (accumulate: AC) or real values (multiply-accumulate: MAC)
    presynaptic: Callable[[IRGraph, str], str]  # what the report calls the source


#: Between a synapse and its source: carries events unchanged (reshapes) or window by window (sum pools).
LOOK_THROUGH = "look through"
_NOT_EVENTS = "its outputs are not events: saec stats counts the events of an input, neurons or the VAE's sample"

#: op -> its :class:`EventSource`, or :data:`LOOK_THROUGH`; refused: ops whose outputs saec stats cannot count.
EVENTS: OpTable[EventSource | str] = OpTable("spike statistics")
EVENTS.add(ops.PoissonEncode, EventSource(lambda graph, node, out, x: out.encoded.sum(0), True,
                                          lambda graph, node: "input spikes"))
EVENTS.add(ops.Input, EventSource(lambda graph, node, out, x: x != 0, False, lambda graph, node: "input image"))
EVENTS.add(ops.LIF, EventSource(lambda graph, node, out, x: out.counts[graph.meta(node)["layer"]], True,
                                lambda graph, node: graph.meta(node)["layer"]))
EVENTS.add(ops.ReLU, EventSource(lambda graph, node, out, x: out.counts[graph.meta(node)["layer"]] != 0, False,
                                 lambda graph, node: graph.meta(node)["layer"]))
# in eval mode z = mu
EVENTS.add(ops.Reparameterize, EventSource(lambda graph, node, out, x: out.mu != 0, False,
                                           lambda graph, node: graph.meta(node)["layer"]))
for _through in (ops.Flatten, ops.Unflatten, ops.SumPool2d):
    EVENTS.add(_through, LOOK_THROUGH)
EVENTS.refuse((ops.Conv2d, ops.ConvTranspose2d, ops.Linear), "a synapse feeding a synapse has no neurons in "
              "between whose events could be counted")
EVENTS.refuse((ops.LeakyIntegrator, ops.MaxCumulativeReadout, ops.Output), _NOT_EVENTS)


def _sum_pools_before(graph: IRGraph, node: str) -> tuple[str, ...]:
    """The sum-pool nodes between ``node`` and its presynaptic source, source side first."""
    pools: list[str] = []
    src = graph.inputs(node)[0]
    while EVENTS.handles(graph.op(src)) and EVENTS.lookup(graph.op(src)) == LOOK_THROUGH:
        if type(graph.op(src)) is ops.SumPool2d:
            pools.insert(0, src)
        src = graph.inputs(src)[0]
    return tuple(pools)


def _pooled(graph: IRGraph, pools: tuple[str, ...], values: Tensor) -> Tensor:
    """Events per neuron [B, ...] carried through sum pools: a pooled position receives every spike of its window."""
    for name in pools:
        op = graph.op(name)
        in_shape = tuple(graph.meta(graph.inputs(name)[0])["shape"])
        values = torch.nn.functional.avg_pool2d(values.reshape(-1, *in_shape), op.kernel_size, op.stride,
                                                op.padding, divisor_override=1)
    return values


def _presynaptic_source(graph: IRGraph, node: str) -> str:
    """The node whose outputs drive ``node``, looking through reshapes and sum pools."""
    src = graph.inputs(node)[0]
    while EVENTS.handles(graph.op(src)) and EVENTS.lookup(graph.op(src)) == LOOK_THROUGH:
        src = graph.inputs(src)[0]
    reason = EVENTS.refusal(graph.op(src))
    if reason is not None:
        raise UserError(f"layer `{graph.meta(node).get('layer', node)}`: its input comes from "
                        f"`{src}` ({graph.op(src).type}), which saec stats cannot count events of ({reason})")
    return src


def _source(graph: IRGraph, node: str) -> EventSource:
    return EVENTS.lookup(graph.op(node), node=node)


def _activation_nodes(graph: IRGraph) -> dict[str, str]:
    """Layer name -> its neuron node (LIF or ReLU)."""
    return {graph.meta(n)["layer"]: n for n in graph.nodes((ops.LIF, ops.ReLU))}


def _events_of(graph: IRGraph, source: str, out, x: Tensor) -> Tensor:
    """Non-zero outputs of ``source`` per neuron, summed over steps, [B, ...] float64."""
    return _source(graph, source).events(graph, source, out, x).to(torch.float64).cpu()


# ---------------------------------------------------------------- measurement
def measure_stats(model, data, *, batch_size: int = 64, seed: int = 0, device: torch.device | str = "cpu",
                  energy: OperationEnergy = HOROWITZ_45NM_FP32) -> dict[str, Any]:
    """Run ``model`` forward over ``data`` and measure activity, synaptic operations and energy.

    The encoding noise is drawn like :func:`saec.analysis.evaluate.evaluate`'s (same
    seed offset, same batch order), so the spikes are those of the run's evaluation.

    Args:
        model: a :class:`~saec.runtime.model.SpikingAutoencoder` (SAE, AE or VAE).
        data: an ImageSet (the validation images).
        batch_size: examples per forward pass.
        seed: the run's seed.
        device: where to run.
        energy: per-operation energies.

    Returns:
        ``{"examples", "timesteps", "kind", "layers": {...}, "total": {...}}``
        (see the module docstring for the definitions).
    """
    graph: IRGraph = model.graph
    sae = model.kind == "sae"
    T = model.timesteps if sae else 1
    weights = model.ir_state_dict()
    connections = _connections(graph, weights)
    activity, examples = _record_activity(model, data, connections, T, batch_size=batch_size, seed=seed,
                                          device=device)
    layers, spikes_total, neurons, acs, macs = _layer_entries(graph, connections, weights, activity, examples, T)

    def total(key: str) -> float:
        return sum(v[key] for v in layers.values() if v[key] is not None)

    input_spikes = None
    if sae:
        (enc,) = graph.nodes(ops.PoissonEncode)
        first = next(c for c in connections if c.source == enc)
        input_spikes = float(first.events.sum()) / examples
    dense_macs = total("dense_macs_per_example")
    synops = acs + macs
    return {
        "format": STATS_FORMAT,
        "kind": model.kind,
        "timesteps": T,
        "examples": examples,
        "layers": layers,
        "total": {
            "neurons": int(total("neurons")),
            "synapses": int(total("synapses")),
            "weights": int(total("weights")),
            "weight_bytes_fp32": int(total("weight_bytes_fp32")),
            "weight_bytes_int8": int(total("weight_bytes_int8")),
            "spikes_per_example": total("spikes_per_example"),
            "input_spikes_per_example": input_spikes,
            "firing_rate": sum(spikes_total.values()) / (sum(neurons.values()) * T * examples) if neurons else None,
            "synops_per_example": synops,
            "effective_acs_per_example": acs,
            "effective_macs_per_example": macs,
            "dense_synops_per_example": int(total("dense_synops_per_example")),
            "dense_macs_per_example": int(dense_macs),
            "synops_per_dense_mac": synops / dense_macs if dense_macs else None,
            "activation_sparsity": activation_sparsity(spikes_total, neurons, T, examples) if neurons else None,
            "zero_weights": int(total("zero_weights")),
            "connection_sparsity": connection_sparsity([weights[f"{c.node}.weight"] for c in connections]),
            "parameter_bytes": int(total("parameter_bytes")),
            "footprint_bytes": footprint_bytes([*model.parameters(), *model.buffers()]),
            "energy_joules_per_inference": acs * energy.ac_joules + macs * energy.mac_joules,
            "ann_energy_joules_per_inference": dense_macs * energy.mac_joules,
        },
        "energy_per_operation": {"ac_joules": energy.ac_joules, "mac_joules": energy.mac_joules,
                                 "source": energy.source},
    }


def _connections(graph: IRGraph, weights: dict[str, Tensor]) -> list[_Connection]:
    """One record per synapse node (an op with weights): its source, pools, fan-out and an event counter."""
    connections: list[_Connection] = []
    for node in graph.nodes():
        op = graph.op(node)
        if not op.has_weights:
            continue
        source = _presynaptic_source(graph, node)
        in_shape = tuple(graph.meta(graph.inputs(node)[0])["shape"])
        connections.append(_Connection(
            node=node, layer=graph.meta(node)["layer"], op=op, in_shape=in_shape, source=source,
            pools=_sum_pools_before(graph, node), fanout=fan_out(op, in_shape, weights[f"{node}.weight"]),
            events=torch.zeros(in_shape, dtype=torch.float64),
            binary_input=_source(graph, source).binary))
    return connections


def _record_activity(model, data, connections: list[_Connection], T: int, *, batch_size: int, seed: int,
                     device: torch.device | str) -> tuple[dict[str, Any], int]:
    """Run the model over ``data``: add each connection's presynaptic events, and measure activity per layer.

    Returns:
        (per-layer activity of :class:`BatchAccumulator`, number of examples).
    Raises:
        UserError: ``data`` is empty.
    """
    from saec.analysis.evaluate import EVAL_SEED_OFFSET
    from saec.training.data import batch_indices

    graph: IRGraph = model.graph
    sae = model.kind == "sae"
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device)
    gen.manual_seed(seed + EVAL_SEED_OFFSET)
    acc = BatchAccumulator(T)
    examples = 0
    with torch.inference_mode():  # forward only: no autograd bookkeeping, the lif_scan fast path
        for idx in batch_indices(len(data), batch_size, shuffle=False):
            x = data.images[idx].to(device)
            out = model(x, generator=gen, record={"_encode"} if sae else frozenset())
            examples += x.shape[0]
            for c in connections:
                events = _pooled(graph, c.pools, _events_of(graph, c.source, out, x))
                c.events += events.reshape(-1, *c.in_shape).sum(0)
            # AE / VAE: an activation "fires" when it is non-zero (one step).
            acc.update({layer: (v if sae else (v != 0)).to(torch.float64).cpu() for layer, v in out.counts.items()})
    model.train(was_training)
    if examples == 0:
        raise UserError("no examples to measure (empty validation set)", path="--examples")
    return acc.result(), examples


def _layer_entries(graph: IRGraph, connections: list[_Connection], weights: dict[str, Tensor],
                   activity: dict[str, Any], examples: int, T: int
                   ) -> tuple[dict[str, dict[str, Any]], dict[str, float], dict[str, int], float, float]:
    """The per-layer statistics, and what the totals sum.

    Returns:
        (layer name -> statistics, layer -> spikes over all examples, layer -> neurons,
        accumulate operations per example, multiply-accumulates per example).
    """
    neurons_of = _activation_nodes(graph)
    layers: dict[str, dict[str, Any]] = {}
    spikes_total: dict[str, float] = {}
    neurons: dict[str, int] = {}
    acs = macs = 0.0
    for c in connections:
        meta = graph.meta(c.node)
        synops = synaptic_operations(c.events, c.fanout) / examples
        if c.binary_input:
            acs += synops
        else:
            macs += synops
        n_weights = int(meta.get("params", 0))
        weight = weights[f"{c.node}.weight"]
        stored = [t for key, t in weights.items() if key.rsplit(".", 1)[0] == c.node]  # weight, bias
        entry: dict[str, Any] = {
            "neurons": 0, "synapses": int(meta["synapses"]), "weights": n_weights,
            "weight_bytes_fp32": 4 * n_weights, "weight_bytes_int8": n_weights,
            "zero_weights": int(torch.count_nonzero(weight == 0)),
            "connection_sparsity": connection_sparsity([weight]),
            "parameter_bytes": footprint_bytes(stored),
            "firing_rate": None, "dead": None, "bursting": None, "spikes_per_example": None,
            "synops_per_example": synops, "synop_kind": "AC" if c.binary_input else "MAC",
            "presynaptic": _source(graph, c.source).presynaptic(graph, c.source),
            "dense_synops_per_example": int(meta["synapses"]) * T,
            "dense_macs_per_example": int(meta["macs"]),
        }
        act = neurons_of.get(c.layer)
        if act is not None:
            rates = activity[c.layer]["firing_rates"]
            n = int(graph.meta(act)["neurons"])
            entry.update(neurons=n, firing_rate=rates["mean"], dead=rates["dead"], bursting=rates["bursting"],
                         spikes_per_example=activity[c.layer]["spikes_per_example"])
            spikes_total[c.layer] = activity[c.layer]["spikes_per_example"] * examples
            neurons[c.layer] = n
        layers[c.layer] = entry
    return layers, spikes_total, neurons, acs, macs


# ---------------------------------------------------------------- console
def _si(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if x == 0:
        return f"0{unit}"
    exp = min(max(int(math.floor(math.log10(abs(x)) / 3)), -4), 4)
    prefix = {-4: "p", -3: "n", -2: "µ", -1: "m", 0: "", 1: "k", 2: "M", 3: "G", 4: "T"}[exp]
    return f"{x / 1000 ** exp:.3g} {prefix}{unit}".rstrip()


def print_stats(stats: dict[str, Any], console=None) -> None:
    """The ``saec stats`` table: one row per layer, totals, then the per-inference summary."""
    import sys

    from rich.console import Console
    from rich.table import Table

    console = console or Console(highlight=False, width=None if sys.stdout.isatty() else 140)
    T = stats["timesteps"]
    table = Table(title=f"{stats['run']}: {stats['kind']}, T={T}, {stats['examples']} examples of "
                        f"{stats['validation']}", title_justify="left")
    columns = [("layer", "left"), ("neurons", "right"), ("synapses", "right"), ("weights", "right"),
               ("fp32 / int8", "right"), ("rate", "right"), ("dead", "right"), ("burst", "right"),
               ("spikes/ex", "right"), ("synops/ex", "right"), ("dense/ex", "right")]
    for col, just in columns:
        table.add_column(col, justify=just)

    def row(name: str, v: dict[str, Any], dense_key: str) -> list[str]:
        rate = "-" if v.get("firing_rate") is None else f"{v['firing_rate']:.4f}"
        return [name, f"{v['neurons']:,}", f"{v['synapses']:,}", f"{v['weights']:,}",
                f"{_si(v['weight_bytes_fp32'], 'B')} / {_si(v['weight_bytes_int8'], 'B')}", rate,
                "-" if v.get("dead") is None else f"{v['dead']:,}",
                "-" if v.get("bursting") is None else f"{v['bursting']:,}",
                "-" if v.get("spikes_per_example") is None else f"{v['spikes_per_example']:,.1f}",
                _si(v["synops_per_example"]), _si(v[dense_key])]

    for name, v in stats["layers"].items():
        table.add_row(*row(name, v, "dense_synops_per_example"))
    table.add_section()
    tot = stats["total"]
    table.add_row(*row("total", {**tot, "dead": None, "bursting": None}, "dense_synops_per_example"))
    console.print(table)
    kind = "accumulates" if tot["effective_macs_per_example"] == 0 else (
        "MACs" if tot["effective_acs_per_example"] == 0 else "ACs + MACs")
    if tot["input_spikes_per_example"] is not None:
        console.print(f"input spikes per example: {tot['input_spikes_per_example']:,.1f}")
    console.print(f"synaptic operations per inference: {_si(tot['synops_per_example'])} {kind} "
                  f"(NeuroBench Dense over T={T}: {_si(tot['dense_synops_per_example'])}); "
                  f"equivalent ANN: {_si(tot['dense_macs_per_example'])} MACs")
    if tot["activation_sparsity"] is not None:
        console.print(f"activation sparsity (NeuroBench): {tot['activation_sparsity']:.4f}")
    if tot.get("connection_sparsity") is not None:
        console.print(f"connection sparsity (NeuroBench): {tot['connection_sparsity']:.4f} "
                      f"({tot['zero_weights']:,} zero weights); memory footprint (NeuroBench, "
                      f"parameters + buffers): {tot['footprint_bytes']:,} bytes")
    e = stats["energy_per_operation"]
    console.print(f"energy per inference (synaptic ops only): {_si(tot['energy_joules_per_inference'], 'J')} "
                  f"vs ANN {_si(tot['ann_energy_joules_per_inference'], 'J')} "
                  f"(AC {e['ac_joules'] * 1e12:.1f} pJ, MAC {e['mac_joules'] * 1e12:.1f} pJ: Horowitz, ISSCC 2014, "
                  f"45 nm fp32)")
