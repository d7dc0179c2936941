"""The per-machine execution plan: which chunk sizes, layouts and algorithms the fast path uses,
chosen by measurement on this machine and cached (as FFTW's plans or oneDNN's primitive cache).

What is fast depends on the CPU: how large a row chunk keeps the synapses' temporaries in
glibc's heap, whether oneDNN's channels-last kernel beats the contiguous one for a layer's
shape, whether the one-channel output layer is faster as a small matrix product with shifted
adds or as oneDNN's transposed convolution, from which size on the buffer pool should hold a
tensor. Today's built-in choices (:data:`DEFAULT_PLAN`) were measured on one 2-core machine.
An :class:`ExecutionPlan` holds these knobs, per layer where they are per layer (keyed by the
layer's op and shape, :func:`layer_key`); :func:`plan_network` times every candidate of every
knob on synthetic spikes of the network's real shapes and keeps the fastest; the plans live
in one JSON file per machine (:func:`cache_path`), keyed by the network's shapes
(:func:`network_key`); :func:`resolve_plan` applies the policy (``SAEC_PLAN``: ``default``,
``auto``, ``replan``).

Only knobs the runtime consumes are planned (each changes what runs: the plan reaches the
fast path as :class:`~saec.runtime.fastpath.SynapseChoice` per layer, the handoff layouts in
the layer-wise walk, the pool's threshold in the model's :class:`~saec.runtime.pool.BufferPool`).
The fast path gives the reference path's spikes under every plan (tests/runtime/test_plan.py).
One knob changes rounding: the output layer's algorithm. The model passes it to every path
it runs (fast, reference, step by step), so they agree with each other under any plan; two
plans may give the output layer different float rounding, as two CPUs may.

Thread use is planned as one count for the whole network (the trials time the synapses; the
model applies it with ``torch.set_num_threads``, which is process-wide). The fingerprint holds
the process's count at lookup, so a plan is measured per starting count. Not planned:
``MIN_CHUNK_ROWS`` (a floor for bit-identical matrix products, not a speed choice). Off the CPU nothing here
applies (one chunk, cuDNN's layouts), nor to an AE or VAE (no spike synapses): the plan is the
default one and nothing is timed.

This is not the IR's structural plan in ``meta["exec"]`` (:mod:`saec.compiler.passes.exec_plan`:
what to free, which reshapes to defer), which follows from the graph alone on every machine.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from saec.atomicwrite import write_atomically
from saec.compiler import ops
from saec.compiler.graph import IRGraph
from saec.compiler.passes.exec_plan import META_KEY
from saec.compiler.passes.params import weight_shapes
from saec.compiler.passes.shapes import output_shape
from saec.errors import UserError
from saec.runtime import fastpath
from saec.runtime import pool as buffers
from saec.runtime import spikedriven

#: ``SAEC_PLAN``: which plan the runtime uses (see :data:`PLAN_POLICIES`).
ENV_PLAN = "SAEC_PLAN"
#: ``default``: the built-in plan, nothing measured; ``auto``: the cached plan, measured on first use
#: where the caller allows it; ``replan``: measure again and replace the cached plan.
PLAN_POLICIES: tuple[str, ...] = ("default", "auto", "replan")
#: The cache file's format version (a file of another version is re-planned).
CACHE_FORMAT = 1

# ---------------------------------------------------------------- candidates
#: Chunk sizes tried per layer besides the built-in rule (chunks under 8 MiB), as bytes of a chunk's
#: float input or output; plus one chunk for all rows. Candidates giving the same chunks are tried once.
CHUNK_CANDIDATE_BYTES: tuple[int, ...] = (2 << 20, 32 << 20)
#: Pool thresholds tried besides the built-in 1 MiB.
POOL_CANDIDATE_BYTES: tuple[int, ...] = (256 << 10, 16 << 20)
#: Spike density of the synthetic inputs of a layer that reads the Poisson encoding, and of one that
#: reads a LIF layer's spikes. The dense kernels' work does not depend on it, the spike-driven weight
#: gradient's does (``weight_grad``): realistic values, PROVISIONAL (the trained SAE's LIF layers fire
#: at 1-5 %; the encoding's density depends on the images and ``encoding.scale``).
SYNTHETIC_ENCODED_RATE = 0.1
SYNTHETIC_SPIKE_RATE = 0.03


def thread_candidates() -> list[int | None]:
    """Thread counts tried: None (the process's count, first), then 1, half and all logical cores,
    each once and not the process's own count."""
    now = torch.get_num_threads()
    cores = os.cpu_count() or 1
    return [None, *(k for k in dict.fromkeys((1, max(1, cores // 2), cores)) if k != now)]


@dataclass(frozen=True)
class LayerPlan:
    """The planned choices of one synapse layer (defaults: the built-in choices).

    Attributes:
        chunk_rows: rows (images x time steps) per chunk; None: the plan's ``chunk_bytes`` rule.
        channels_last: a Conv2d runs channels-last (same bits either way).
        handoff_layout: the layer hands its reader the layout that reader runs in (a conv's
            current kept contiguous for a linear reader; a linear's current unflattened and
            channels-last for convolution readers), as the IR's exec pass suggests; False:
            the op's own output layout, the reader converts.
        output_algorithm: a one-channel stride-1 transposed convolution's kernel,
            ``gemm`` or ``onednn`` (:data:`saec.runtime.fastpath.OutputAlgorithm`).
        weight_grad: how the weight gradient is computed in training, ``dense`` or ``spike``
            (:data:`saec.runtime.fastpath.WeightGrad`); null: per row chunk by the input's activity.
        input_grad: how the input gradient is computed in training where the input's producer is
            spike-gated, ``dense`` or ``spike`` (:data:`saec.runtime.fastpath.InputGrad`); null: per
            row chunk by the input's activity.
        forward: the forward's algorithm where the input is a spike train, ``dense`` or ``spike``
            (:data:`saec.runtime.fastpath.ForwardAlgorithm`; it sets the layer's rounding on every
            path); null: the built-in choice, :data:`BUILTIN_FORWARD`.
    """

    chunk_rows: int | None = None
    channels_last: bool = True
    handoff_layout: bool = True
    output_algorithm: str = "gemm"
    weight_grad: str | None = None
    input_grad: str | None = None
    forward: str | None = None

    def __post_init__(self) -> None:
        if self.chunk_rows is not None and (type(self.chunk_rows) is not int or self.chunk_rows < 1):
            raise ValueError(f"chunk_rows must be a positive integer or null, got {self.chunk_rows!r}")
        for name in ("channels_last", "handoff_layout"):
            if type(getattr(self, name)) is not bool:
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.output_algorithm not in fastpath.OUTPUT_ALGORITHMS:
            raise ValueError(f"output_algorithm must be one of {', '.join(fastpath.OUTPUT_ALGORITHMS)}, "
                             f"got {self.output_algorithm!r}")
        if self.weight_grad is not None and self.weight_grad not in fastpath.WEIGHT_GRAD_CHOICES:
            raise ValueError(f"weight_grad must be one of {', '.join(fastpath.WEIGHT_GRAD_CHOICES)} or null, "
                             f"got {self.weight_grad!r}")
        if self.input_grad is not None and self.input_grad not in fastpath.INPUT_GRAD_CHOICES:
            raise ValueError(f"input_grad must be one of {', '.join(fastpath.INPUT_GRAD_CHOICES)} or null, "
                             f"got {self.input_grad!r}")
        if self.forward is not None and self.forward not in fastpath.FORWARD_CHOICES:
            raise ValueError(f"forward must be one of {', '.join(fastpath.FORWARD_CHOICES)} or null, "
                             f"got {self.forward!r}")


DEFAULT_LAYER = LayerPlan()

#: The forward algorithm of a layer whose input is a spike train when its plan does not choose: the
#: spike-driven kernel (work in proportion to the spikes; the same bits on every CPU and path).
BUILTIN_FORWARD = "spike"


@dataclass(frozen=True)
class ExecutionPlan:
    """How the fast path runs on this machine: global knobs and per-layer choices.

    ``ExecutionPlan()`` is the built-in plan: every field None or empty means "today's
    constant" (:data:`saec.runtime.fastpath.CHUNK_BYTES`, :data:`saec.runtime.pool.MIN_POOLED_BYTES`,
    the process's thread count, :data:`DEFAULT_LAYER` for every layer), so with it nothing changes.

    Attributes:
        chunk_bytes: a chunk's float input or output stays under this many bytes where a layer
            has no planned ``chunk_rows``; None: ``fastpath.CHUNK_BYTES`` (8 MiB).
        min_pooled_bytes: the buffer pool holds tensors from this many bytes up; None:
            ``pool.MIN_POOLED_BYTES`` (1 MiB).
        threads: torch's thread count (intra-op, and the C scan's workers); the model sets it
            (process-wide, ``torch.set_num_threads``) when it runs. None: left as the process has it.
        layers: (layer key, choices) pairs, layer keys from :func:`layer_key`; a layer not
            listed runs with :data:`DEFAULT_LAYER`.
    """

    chunk_bytes: int | None = None
    min_pooled_bytes: int | None = None
    threads: int | None = None
    layers: tuple[tuple[str, LayerPlan], ...] = ()

    def __post_init__(self) -> None:
        for name in ("chunk_bytes", "min_pooled_bytes", "threads"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"{name} must be a positive integer or null, got {value!r}")

    def layer(self, key: str) -> LayerPlan:
        """The choices for the layer with key ``key`` (:data:`DEFAULT_LAYER` when not planned)."""
        for k, layer in self.layers:
            if k == key:
                return layer
        return DEFAULT_LAYER

    def synapse_choice(self, key: str, spike_input: bool = False) -> fastpath.SynapseChoice:
        """The fast path's form of the layer's choices; ``spike_input``: the layer's input is a spike
        train (0/1), so that its forward may be spike-driven (``forward``; else it is dense)."""
        layer = self.layer(key)
        forward = (layer.forward or BUILTIN_FORWARD) if spike_input else "dense"
        return fastpath.SynapseChoice(chunk_rows=layer.chunk_rows, chunk_bytes=self.chunk_bytes,
                                      channels_last=layer.channels_last, output_algorithm=layer.output_algorithm,
                                      weight_grad=layer.weight_grad, input_grad=layer.input_grad, forward=forward)

    @property
    def is_default(self) -> bool:
        """True when this plan runs exactly as the built-in one."""
        return (self.chunk_bytes is None and self.min_pooled_bytes is None and self.threads is None
                and all(layer == DEFAULT_LAYER for _, layer in self.layers))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (the cache's form); :meth:`from_dict` reads it back."""
        return {"chunk_bytes": self.chunk_bytes, "min_pooled_bytes": self.min_pooled_bytes, "threads": self.threads,
                "layers": {key: dataclasses.asdict(layer) for key, layer in self.layers}}

    @classmethod
    def from_dict(cls, doc: Any) -> ExecutionPlan:
        """The plan ``doc`` describes (:meth:`to_dict`'s form).

        Raises:
            ValueError: ``doc`` is not such a plan (unknown or missing fields, bad values).
        """
        if not isinstance(doc, dict) or set(doc) != {"chunk_bytes", "min_pooled_bytes", "threads", "layers"}:
            raise ValueError("not an execution plan (expected chunk_bytes, min_pooled_bytes, threads, layers)")
        if not isinstance(doc["layers"], dict):
            raise ValueError("layers: expected an object of layer key -> choices")
        layers = []
        known = {f.name for f in dataclasses.fields(LayerPlan)}
        for key, choices in sorted(doc["layers"].items()):
            if not isinstance(choices, dict) or set(choices) - known:
                raise ValueError(f"layers.{key}: expected an object with fields {sorted(known)}")
            layers.append((key, LayerPlan(**choices)))
        return cls(doc["chunk_bytes"], doc["min_pooled_bytes"], doc["threads"], tuple(layers))

    def knob_lines(self, graph: IRGraph, batch: int) -> list[str]:
        """One line per knob as it applies to ``graph`` at ``batch`` images per step (built-in values
        marked ``(default)``)."""
        lines = [_knob("chunk_bytes", self.chunk_bytes, fastpath.CHUNK_BYTES),
                 _knob("min_pooled_bytes", self.min_pooled_bytes, buffers.MIN_POOLED_BYTES),
                 _knob("threads", self.threads, torch.get_num_threads())]
        for layer in synapse_layers(graph, batch):
            chosen = self.layer(layer.key)
            if layer.spike_input:  # the layer's numerics (set by hand, never timed)
                lines.append(f"{layer.node} forward: " + (f"{BUILTIN_FORWARD} (default)" if chosen.forward is None
                                                          else chosen.forward))
            for knob in layer.knobs():
                value = getattr(chosen, knob)
                default = getattr(DEFAULT_LAYER, knob)
                if knob == "chunk_rows":
                    rows = layer.default_rows(self) if value is None else value
                    chunks = max(1, layer.rows // max(fastpath.MIN_CHUNK_ROWS, rows))
                    how = (f"default: chunks under {self.chunk_bytes or fastpath.CHUNK_BYTES} bytes"
                           if value is None else "planned")
                    lines.append(f"{layer.node} chunk_rows: {rows} ({how}; {chunks} chunk{'s' * (chunks > 1)} "
                                 f"of {layer.rows} rows at B={layer.batch})")
                elif knob == "weight_grad" and value is None:
                    lines.append(f"{layer.node} weight_grad: by input activity, spike-driven up to "
                                 f"{spikedriven.WEIGHT_GRAD_MAX_ACTIVITY} (default)")
                elif knob == "input_grad" and value is None:
                    lines.append(f"{layer.node} input_grad: by input activity, at the active inputs only up to "
                                 f"{spikedriven.INPUT_GRAD_MAX_ACTIVITY} (default)")
                else:
                    lines.append(f"{layer.node} {knob}: {value}" + (" (default)" if value == default else ""))
        return lines

    def summary(self, graph: IRGraph | None = None) -> str:
        """A short description: ``default``, or the choices that differ from the built-in ones."""
        if self.is_default:
            return "default"
        names = {layer.key: layer.node for layer in synapse_layers(graph)} if graph is not None else {}
        parts = []
        if self.chunk_bytes is not None:
            parts.append(f"chunks under {self.chunk_bytes} bytes")
        if self.min_pooled_bytes is not None:
            parts.append(f"pool from {self.min_pooled_bytes} bytes")
        if self.threads is not None:
            parts.append(f"{self.threads} thread{'s' * (self.threads > 1)}")
        for key, layer in self.layers:
            for f in dataclasses.fields(LayerPlan):
                value = getattr(layer, f.name)
                if value != getattr(DEFAULT_LAYER, f.name):
                    parts.append(f"{names.get(key, key)} {f.name}={value}")
        return ", ".join(parts)


def _knob(name: str, value: int | None, builtin: int) -> str:
    return f"{name}: {builtin} (default)" if value is None else f"{name}: {value}"


#: The built-in plan (today's constants).
DEFAULT_PLAN = ExecutionPlan()


# ---------------------------------------------------------------- layers and keys
def layer_key(op: ops.Op, sample: tuple[int, ...]) -> str:
    """What identifies a synapse layer for planning: op kind, input and output shape per row, and
    for convolutions kernel, stride and padding, e.g. ``conv2d(16x24x24->32x20x20 k5x5 s1x1 p0x0)``."""
    out = output_shape(op, sample, "synapse")

    def dims(values: Any) -> str:
        return "x".join(map(str, values))

    text = f"{op.type}({dims(sample)}->{dims(out)}"
    for label, name in (("k", "kernel_size"), ("s", "stride"), ("p", "padding"), ("op", "output_padding")):
        value = getattr(op, name, None)  # convolutions only; output padding only where it is not 0
        if value is not None and (name != "output_padding" or any(value)):
            text += f" {label}{dims(value)}"
    return text + ")"


@dataclass(frozen=True)
class SynapseLayer:
    """One synapse node of a graph as the planner sees it."""

    node: str
    op: ops.Op
    sample: tuple[int, ...]  # the op's input per row
    key: str
    rows: int  # T * B
    batch: int
    handoff: bool  # the IR suggests a handoff layout for it (contiguous_out or out_sample)
    reads_encoder: bool  # its input is the encoded image (no input gradient in training)
    gated_input: bool = False  # its input is a spike_gated LIF layer's spikes (fastpath.spike_synapse)
    spike_input: bool = False  # its input is a spike train: a LIF layer's or the encoder's (LayerPlan.forward)

    def knobs(self) -> list[str]:
        """The knobs that apply to this layer (the others leave it as it is)."""
        # not the forward algorithm: it is the layer's numerics (chosen by hand, LayerPlan.forward), and a
        # timing must not decide which bits a model computes
        knobs = []
        if fastpath.single_output_transposed(self.op):
            knobs.append("output_algorithm")
        if isinstance(self.op, ops.Conv2d):
            knobs.append("channels_last")
        if self.handoff:
            knobs.append("handoff_layout")
        knobs.append("weight_grad")
        if self.gated_input and not self.reads_encoder:
            knobs.append("input_grad")
        knobs.append("chunk_rows")
        return knobs

    def default_rows(self, plan: ExecutionPlan) -> int:
        """Rows per chunk under ``plan``'s byte rule (fp32)."""
        out_numel = math.prod(output_shape(self.op, self.sample, "synapse"))
        return min(self.rows, fastpath.chunk_rows(math.prod(self.sample), out_numel, 4,
                                                   fastpath.SynapseChoice(chunk_bytes=plan.chunk_bytes)))


def synapse_layers(graph: IRGraph, batch: int = 1) -> list[SynapseLayer]:
    """The synapse nodes of ``graph`` in order, with their planning keys (``batch`` images per step)."""
    timesteps = int(graph.attrs.get("timesteps", 1))
    layers = []
    for name in graph.order():
        op = graph.op(name)
        if not op.has_weights:
            continue
        source = graph.inputs(name)[0]
        sample = tuple(graph.meta(source)["shape"])
        exec_meta = graph.meta(name).get(META_KEY, {})
        # a linear's output is contiguous anyway: only a convolution's contiguous_out changes a layout
        handoff = (bool(exec_meta.get("contiguous_out")) and not isinstance(op, ops.Linear)
                   or exec_meta.get("out_sample") is not None)
        producer = graph.op(producer_of(graph, source))
        layers.append(SynapseLayer(name, op, sample, layer_key(op, sample), timesteps * batch, batch, handoff,
                                   isinstance(producer, (ops.PoissonEncode, ops.Input)),
                                   isinstance(producer, ops.LIF) and producer.surrogate == "spike_gated",
                                   isinstance(producer, (ops.LIF, ops.PoissonEncode))))
    return layers


def producer_of(graph: IRGraph, node: str) -> str:
    """The node whose output ``node`` is, reshapes aside."""
    while isinstance(graph.op(node), (ops.Flatten, ops.Unflatten)):
        node = graph.inputs(node)[0]
    return node


def network_key(graph: IRGraph, batch: int, dtype: torch.dtype = torch.float32) -> str:
    """What a cached plan is for: batch, T, dtype and every synapse layer's key, in order."""
    timesteps = int(graph.attrs.get("timesteps", 1))
    # a layer whose input is spike-gated has one more knob (input_grad): marked, so that its plan is its own
    layers = " | ".join(layer.key + " gated" * layer.gated_input for layer in synapse_layers(graph))
    return f"B={batch} T={timesteps} {str(dtype).removeprefix('torch.')} | {layers}"


# ---------------------------------------------------------------- measuring
@dataclass
class Trial:
    """One timing of the planner: ``run()`` runs the layer's (or all layers') forward and backward
    once with ``knob`` set to ``value``; ``layer`` is the layer key, None for a global knob."""

    knob: str
    layer: str | None
    value: Any
    run: Callable[[], None]


#: A timing function: seconds one trial takes (the planner keeps each knob's fastest value).
Timer = Callable[[Trial], float]


def median_timer(repeats: int = 3, warmup: int = 1) -> Timer:
    """The real timer: ``warmup`` untimed runs, then the median wall time of ``repeats`` runs."""
    def time_trial(trial: Trial) -> float:
        for _ in range(warmup):
            trial.run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            trial.run()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    return time_trial


class _Bench:
    """Synthetic spikes and weights of every synapse layer of a network, at its real shapes."""

    def __init__(self, graph: IRGraph, layers: list[SynapseLayer], timesteps: int, batch: int,
                 dtype: torch.dtype) -> None:
        self.graph, self.layers, self.lead = graph, {layer.node: layer for layer in layers}, (timesteps, batch)
        gen = torch.Generator().manual_seed(0)
        self.weights: dict[str, tuple[Tensor, Tensor | None]] = {}
        self.inputs: dict[str, Tensor] = {}
        self.fired: dict[str, Tensor] = {}
        for layer in layers:
            shapes = weight_shapes(layer.op)
            weight = (torch.randn(shapes["weight"], generator=gen) * 0.05).to(dtype).requires_grad_()
            bias = torch.zeros(shapes["bias"], dtype=dtype).requires_grad_() if "bias" in shapes else None
            self.weights[layer.node] = (weight, bias)
            rate = SYNTHETIC_ENCODED_RATE if layer.reads_encoder else SYNTHETIC_SPIKE_RATE
            self.inputs[layer.node] = self.spikes((*self.lead, *layer.sample), dtype, gen, rate)
            self.fired[layer.node] = self.inputs[layer.node] != 0

    @staticmethod
    def spikes(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator, rate: float) -> Tensor:
        x = (torch.rand(shape, generator=gen) < rate).to(dtype)
        if len(shape) == 5:  # per step channels-last, as the LIF scan hands out a convolution's spikes
            t, b = shape[:2]
            x = x.reshape(t * b, *shape[2:]).contiguous(memory_format=torch.channels_last).reshape(shape)
        return x

    def readers(self, node: str) -> list[SynapseLayer]:
        """The synapse layers that read ``node``'s spikes (through its LIF layer and reshapes)."""
        found, todo = [], list(self.graph.users(node))
        while todo:
            user = todo.pop()
            if user in self.layers:
                found.append(self.layers[user])
            elif isinstance(self.graph.op(user), (ops.LIF, ops.Flatten, ops.Unflatten)):
                todo.extend(self.graph.users(user))
        return found

    def run(self, layer: SynapseLayer, plan: LayerPlan, with_readers: bool, pool: buffers.BufferPool) -> None:
        """Forward and backward of ``layer`` (and, with ``with_readers``, of its readers on its spikes in
        the layout it hands out) under ``plan``, inside ``pool``."""
        exec_meta = self.graph.meta(layer.node).get(META_KEY, {})
        contiguous_out = bool(exec_meta.get("contiguous_out")) and plan.handoff_layout
        out_sample = exec_meta.get("out_sample") if plan.handoff_layout else None
        choice = ExecutionPlan(layers=((layer.key, plan),)).synapse_choice(layer.key, layer.spike_input)
        x = self.inputs[layer.node]
        x = x.detach().requires_grad_(not layer.reads_encoder)
        weight, bias = self.weights[layer.node]
        with buffers.use_pool(pool):
            y = fastpath.spike_synapse(layer.op, weight, bias, x, self.fired[layer.node], lead_dims=2,
                                       sample=layer.sample,
                                       contiguous_out=contiguous_out,
                                       out_sample=None if out_sample is None else tuple(out_sample), choice=choice,
                                       gated_input=layer.gated_input)
            outputs, grads = [y], [torch.ones_like(y)]
            readers = self.readers(layer.node) if with_readers else []
            if readers:
                fired = y.detach() > 0  # spikes in the layout the layer hands out (elementwise ops keep it)
                spikes = fired.to(y.dtype).requires_grad_()
                for reader in readers:
                    w, b = self.weights[reader.node]
                    z = fastpath.spike_synapse(reader.op, w, b, spikes, fired, lead_dims=2, sample=reader.sample,
                                               gated_input=reader.gated_input,
                                               choice=fastpath.SynapseChoice(forward=BUILTIN_FORWARD))
                    outputs.append(z)
                    grads.append(torch.ones_like(z))
            torch.autograd.backward(outputs, grads)
        for node in (layer.node, *(reader.node for reader in readers)):
            for t in self.weights[node]:
                if t is not None:
                    t.grad = None


def _chunk_candidates(layer: SynapseLayer) -> list[int | None]:
    """None (the byte rule) first, then rows for each candidate size and for one chunk, each only
    when it gives another number of chunks than the candidates before it."""
    in_numel, out_numel = math.prod(layer.sample), math.prod(output_shape(layer.op, layer.sample, "synapse"))

    def count(rows: int) -> int:
        return max(1, layer.rows // max(fastpath.MIN_CHUNK_ROWS, rows))

    counts = {count(fastpath.chunk_rows(in_numel, out_numel, 4))}
    values: list[int | None] = [None]
    for size in (*CHUNK_CANDIDATE_BYTES, None):
        rows = layer.rows if size is None else fastpath.chunk_rows(
            in_numel, out_numel, 4, fastpath.SynapseChoice(chunk_bytes=size))
        if count(rows) not in counts:
            counts.add(count(rows))
            values.append(min(rows, layer.rows))
    return values


def _candidates(layer: SynapseLayer, knob: str) -> list[Any]:
    """The values tried for ``knob`` on ``layer``, the built-in one first."""
    if knob == "chunk_rows":
        return _chunk_candidates(layer)
    if knob == "output_algorithm":
        return list(fastpath.OUTPUT_ALGORITHMS)
    if knob == "weight_grad":  # planned only where the spike-driven kernel can run
        usable = spikedriven.weight_grad_applies(layer.op, torch.empty(0), torch.float32, torch.device("cpu"),
                                                 layer.sample)
        return [None, *fastpath.WEIGHT_GRAD_CHOICES] if usable else [None]
    if knob == "input_grad":  # likewise; the layer's input is spike-gated (SynapseLayer.knobs)
        usable = spikedriven.weight_grad_applies(layer.op, torch.empty(0), torch.float32, torch.device("cpu"),
                                                 layer.sample)
        return [None, *fastpath.INPUT_GRAD_CHOICES] if usable else [None]
    return [True, False]


def plan_candidates(graph: IRGraph, batch: int) -> dict[str, dict[str, list[Any]]]:
    """Every knob's candidate values per layer node of ``graph`` (what :func:`plan_network` tries,
    the built-in value first), and the global knobs under ``"global"``: ``min_pooled_bytes``, ``threads``."""
    found = {layer.node: {knob: _candidates(layer, knob) for knob in layer.knobs()}
             for layer in synapse_layers(graph, batch)}
    found["global"] = {"min_pooled_bytes": [None, *POOL_CANDIDATE_BYTES], "threads": thread_candidates()}
    return found


def _plan_layers(timer: Timer, layers: list[SynapseLayer], bench: _Bench) -> dict[str, LayerPlan]:
    """Each layer's knobs, one after the other, each timed with the knobs chosen so far; layer key -> choices."""
    pool = buffers.BufferPool()
    chosen: dict[str, LayerPlan] = {}
    for layer in layers:
        if layer.key in chosen:
            continue
        current = DEFAULT_LAYER
        for knob in layer.knobs():
            def make_run(value: Any, layer: SynapseLayer = layer, knob: str = knob,
                         current: LayerPlan = current) -> Callable[[], None]:
                candidate = dataclasses.replace(current, **{knob: value})
                return lambda: bench.run(layer, candidate, knob == "handoff_layout", pool)

            best = _fastest(timer, knob, _candidates(layer, knob), make_run, layer.key)
            current = dataclasses.replace(current, **{knob: best})
        chosen[layer.key] = current
    return chosen


def plan_network(graph: IRGraph, batch: int, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, timer: Timer | None = None) -> ExecutionPlan:
    """Measure the candidates of every knob for ``graph`` at ``batch`` images per step; the fastest plan.

    Layer by layer, knob by knob (the output algorithm, the Conv2d layout, the handoff layout, the
    weight and input gradients' kernels, then the chunk size; the forward algorithm is not timed: it
    sets the layer's numerics), each candidate is timed with the knobs chosen so far; then the
    pool's threshold and the thread count, over all layers. Each trial is a layer's forward and backward on
    synthetic spikes of its real shape [T, B, ...] (the handoff layout: with its readers);
    a knob with one candidate is not timed, a layer key seen before is not planned again.
    Ties keep the built-in value.

    Args:
        graph: a compiled IR graph with its exec plan (``meta["exec"]``); T from ``attrs["timesteps"]``.
        batch: images per training step.
        device: only the CPU has knobs; elsewhere (and for a network without spiking layers) the default
            plan comes back at once.
        dtype: the parameters' dtype.
        timer: seconds per trial (default :func:`median_timer`; tests inject a fake one).

    Returns:
        The plan (layers whose choices are all built-in are left out).
    """
    if nothing_to_plan(graph, device):
        return DEFAULT_PLAN
    timer = timer or median_timer()
    timesteps = int(graph.attrs.get("timesteps", 1))
    layers = synapse_layers(graph, batch)
    bench = _Bench(graph, layers, timesteps, batch, dtype)
    chosen = _plan_layers(timer, layers, bench)

    def run_all(trial_pool: buffers.BufferPool, threads: int | None) -> None:
        before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            for layer in layers:
                bench.run(layer, chosen[layer.key], False, trial_pool)
        finally:
            torch.set_num_threads(before)

    pools = {threshold: buffers.BufferPool(threshold) for threshold in (None, *POOL_CANDIDATE_BYTES)}
    best_threshold = _fastest(timer, "min_pooled_bytes", list(pools),
                              lambda threshold: lambda: run_all(pools[threshold], None))
    best_threads = _fastest(timer, "threads", thread_candidates(),
                            lambda threads: lambda: run_all(pools[best_threshold], threads))
    kept = tuple(sorted(((key, layer) for key, layer in chosen.items() if layer != DEFAULT_LAYER),
                        key=lambda item: item[0]))
    return ExecutionPlan(min_pooled_bytes=best_threshold, threads=best_threads, layers=kept)


def nothing_to_plan(graph: IRGraph, device: torch.device | str) -> str:
    """Why nothing is planned for ``graph`` on ``device`` ("" when something is): off the CPU the knobs
    do not apply; an AE or VAE (no spiking layer) runs no spike synapses, chunks or pool."""
    device = torch.device(device)
    if device.type != "cpu":
        return f"nothing to plan on {device.type}"
    if next(iter(graph.nodes(ops.LIF)), None) is None:
        return "nothing to plan for a network without spiking layers"
    return ""


def _fastest(timer: Timer, knob: str, values: list[Any], make_run: Callable[[Any], Callable[[], None]],
             layer: str | None = None) -> Any:
    """The value of ``knob`` (of layer key ``layer``, None: global) whose trial ``timer`` finds fastest;
    ties: the first (the built-in value); a single candidate is not timed."""
    if len(values) < 2:
        return values[0]
    seconds = [timer(Trial(knob, layer, value, make_run(value))) for value in values]
    return values[seconds.index(min(seconds))]


# ---------------------------------------------------------------- the cache
def cache_dir() -> Path:
    """Where plans are cached: ``$SAEC_CACHE_DIR/plans``, else ``$XDG_CACHE_HOME/saec/plans``, else
    ``~/.cache/saec/plans`` (the C kernel's cache sits beside it)."""
    explicit = os.environ.get("SAEC_CACHE_DIR")
    if explicit:
        return Path(explicit) / "plans"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "saec" / "plans"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_fingerprint(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What a plan was measured on: CPU model, logical cores, torch version, torch's thread count, device."""
    device = torch.device(device)
    fingerprint = {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "torch": torch.__version__,
                   "threads": torch.get_num_threads(), "device": device.type}
    if device.type == "cuda" and torch.cuda.is_available():
        fingerprint["device"] = f"cuda: {torch.cuda.get_device_name(device)}"
    return fingerprint


def cache_path(fingerprint: dict[str, Any]) -> Path:
    """The cache file of the machine ``fingerprint`` describes (one per machine)."""
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"plans-{digest}.json"


#: What becomes of an unusable cache file or entry (a short run may not measure one at once).
REPLACED = "the next plan measured replaces it"


def _read_cache(path: Path, fingerprint: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """The plans in ``path`` (network key -> entry); {} when there is none, and after one warning line
    when the file cannot be used."""
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):  # nothing cached (a blocked folder: writing will say so)
        return {}
    except OSError as exc:
        log(f"warning: plan cache {path}: cannot read it ({exc.strerror or exc}); ignored")
        return {}
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT or not isinstance(doc.get("plans"), dict):
            raise ValueError(f"not a saec plan cache of format {CACHE_FORMAT}")
    except ValueError as exc:
        log(f"warning: plan cache {path}: ignored ({_first_line(exc)}); {REPLACED}")
        return {}
    if doc.get("fingerprint") != fingerprint:
        log(f"warning: plan cache {path}: made on another machine or setup ({doc.get('fingerprint')}); "
            f"ignored, {REPLACED}")
        return {}
    return doc["plans"]


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def cached_plan(key: str, fingerprint: dict[str, Any], log: Callable[[str], None]) -> ExecutionPlan | None:
    """The plan cached for network ``key`` on this machine, or None (a bad entry: one warning line)."""
    path = cache_path(fingerprint)
    entry = _read_cache(path, fingerprint, log).get(key)
    if entry is None:
        return None
    try:
        return ExecutionPlan.from_dict(entry.get("plan") if isinstance(entry, dict) else None)
    except (TypeError, ValueError) as exc:
        log(f"warning: plan cache {path}: the entry for this network is unusable ({_first_line(exc)}); "
            f"ignored, {REPLACED}")
        return None


def store_plan(key: str, plan: ExecutionPlan, fingerprint: dict[str, Any], seconds: float,
               log: Callable[[str], None]) -> Path:
    """Add (or replace) network ``key``'s plan in this machine's cache file, written atomically.

    Two processes storing at once each leave a whole file (temporary name, then rename); the
    entry of the one that wrote first may be lost and is then measured again on its next use.

    Raises:
        OSError: the cache folder cannot be written.
    """
    path = cache_path(fingerprint)
    plans = dict(_read_cache(path, fingerprint, lambda line: None))  # unusable: replaced by this one
    plans[key] = {"plan": plan.to_dict(), "measured_seconds": round(seconds, 3),
                  "planned_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    doc = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "plans": plans}
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    return write_atomically(path, lambda tmp: tmp.write_text(text))


# ---------------------------------------------------------------- policy
def plan_policy(default: str, given: str | None = None) -> str:
    """The plan policy to use: ``given`` when not None, else ``$SAEC_PLAN`` when set, else ``default``.

    Raises:
        UserError: the policy is none of :data:`PLAN_POLICIES` (one line naming ``SAEC_PLAN`` or ``plan``).
    """
    env = os.environ.get(ENV_PLAN, "").strip()
    value, where = (given, "plan") if given is not None else (env, ENV_PLAN) if env else (default, "plan")
    if value not in PLAN_POLICIES:
        raise UserError(f"must be one of {', '.join(PLAN_POLICIES)}, got {value!r}", path=where)
    return value


@dataclass(frozen=True)
class ResolvedPlan:
    """The plan a run uses and where it came from.

    Attributes:
        plan: the plan.
        source: ``default`` (policy or nothing to plan), ``cached``, ``measured`` or ``unplanned``
            (none cached and measuring was not allowed).
        path: the cache file (read or written), or None.
        seconds: how long measuring took (``measured`` only).
        reason: why the default plan is used, where it is.
    """

    plan: ExecutionPlan
    source: str
    path: Path | None = None
    seconds: float = 0.0
    reason: str = ""

    def line(self, graph: IRGraph | None = None) -> str:
        """The one line a command prints: ``plan: ...``."""
        if self.source == "measured":
            where = f"cached in {self.path}" if self.path is not None else "not cached"
            return f"plan: {self.plan.summary(graph)} (measured in {self.seconds:.1f} s, {where})"
        if self.source == "cached":
            return f"plan: cached ({self.path}): {self.plan.summary(graph)}"
        return f"plan: default ({self.reason})" if self.reason else "plan: default"


def resolve_plan(graph: IRGraph, batch: int, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, policy: str = "default", measure: bool = True,
                 timer: Timer | None = None, log: Callable[[str], None] | None = None) -> ResolvedPlan:
    """The plan to run ``graph`` with at ``batch`` images per step, by ``policy``.

    Args:
        policy: ``default`` (nothing read or measured), ``auto`` (the cached plan; on a miss,
            measured when ``measure``) or ``replan`` (measured again, the cache entry replaced).
        measure: whether ``auto`` may measure on a miss (a short run need not pay for planning).
        timer: the planner's timing function (:func:`plan_network`).
        log: where warning lines go (an unusable cache, a cache that cannot be written); stderr by default.

    Raises:
        ValueError: an unknown policy.
    """
    if policy not in PLAN_POLICIES:
        raise ValueError(f"plan policy must be one of {PLAN_POLICIES}, got {policy!r}")
    log = log or (lambda line: print(line, file=sys.stderr))
    device = torch.device(device)
    if policy == "default":
        return ResolvedPlan(DEFAULT_PLAN, "default", reason="policy default: nothing read or measured")
    reason = nothing_to_plan(graph, device)
    if reason:
        return ResolvedPlan(DEFAULT_PLAN, "default", reason=reason)
    fingerprint = machine_fingerprint(device)
    key = network_key(graph, batch, dtype)
    path = cache_path(fingerprint)
    if policy == "auto":
        plan = cached_plan(key, fingerprint, log)
        if plan is not None:
            return ResolvedPlan(plan, "cached", path)
        if not measure:
            return ResolvedPlan(DEFAULT_PLAN, "unplanned", reason="none cached for this network; `saec plan SPEC` "
                                                                 "measures one")
    start = time.perf_counter()
    plan = plan_network(graph, batch, device=device, dtype=dtype, timer=timer)
    seconds = time.perf_counter() - start
    try:
        written: Path | None = store_plan(key, plan, fingerprint, seconds, log)
    except OSError as exc:
        log(f"warning: plan cache {path}: cannot write it ({exc.strerror or exc}); the plan is used uncached")
        written = None
    return ResolvedPlan(plan, "measured", written, seconds)


