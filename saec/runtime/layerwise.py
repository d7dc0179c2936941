"""The layer-wise forward: every node processes all T time steps before the next node runs.

One handler per op type in :data:`LAYERWISE` (an :class:`~saec.compiler.dispatch.OpTable`:
every op type is handled, an unknown one is an error, nothing falls through). A
handler takes the walk's state (:class:`Walk`), the node's name, its op and its
input ``h`` ([T, B, ...]; T = 1 before the encoder and in AE/VAE graphs) and
returns the node's output. What does not change between batches (when to free a
value, which reshapes the synapses take over, the layouts synapses hand out,
which U a LIF layer returns) comes from the execution plan in ``meta["exec"]``
(:mod:`saec.compiler.passes.exec_plan`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from saec.compiler import ops
from saec.compiler.dispatch import OpTable
from saec.compiler.passes.exec_plan import META_KEY
from saec.runtime import fastpath
from saec.runtime import pool as buffers
from saec.runtime.encoding import poisson_encode
from saec.runtime.layers import leaky_integrate, reparameterize, sum_pool2d
from saec.runtime.lif import LIFResult, lif_scan, lif_scan_autograd
from saec.runtime.readout import max_cumulative_readout, readout_source

if TYPE_CHECKING:
    from saec.runtime.model import NetOutput, SpikingAutoencoder


@dataclass
class Walk:
    """The state of one layer-wise forward pass.

    Attributes:
        model: the network (parameters, graph, plan, execution, training flag).
        x: the input batch [B, C, H, W].
        out: what the pass returns, filled in as nodes run.
        generator: random source of the encoding and of VAE sampling.
        record: layers whose spike trains to return (``"_encode"``: the input train).
        encoded: a given input spike train [T, B, ...] (skips the encoder), or None.
        record_potentials: also return u(1..T) and U(1..T) of the recorded spiking layers.
        fast: the fast path (:class:`~saec.runtime.execution.Execution`).
        keep_binary: fast path with autograd on: spike trains travel with bool copies,
            which the synapses keep for backward.
        values: each node's output by name (``"<lif>:U"``: a LIF layer's U(1..T)), dropped
            once its last user has run.
        binary: values known to be spike trains (fast path): their bool copies, or None
            when no copy is needed (inference).
        gated: spike trains whose gradient is read only where they are 1: a ``spike_gated`` LIF
            layer's (its surrogate is zero where the neuron did not fire), and reshapes of them.
        deferred: Flatten / Unflatten nodes left to their synapses: the per-row shape
            they stand for.
    """

    model: SpikingAutoencoder
    x: Tensor
    out: NetOutput
    generator: torch.Generator | None
    record: frozenset[str]
    encoded: Tensor | None
    record_potentials: bool
    fast: bool
    keep_binary: bool
    values: dict[str, Tensor] = field(default_factory=dict)
    binary: dict[str, Tensor | None] = field(default_factory=dict)
    gated: set[str] = field(default_factory=set)
    deferred: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.x.shape[0]


Handler = Callable[[Walk, str, ops.Op, "Tensor | None"], Tensor]
#: The layer-wise forward of every op type.
LAYERWISE: OpTable[Handler] = OpTable("layer-wise forward")


def run_layerwise(walk: Walk) -> NetOutput:
    """Run every node of ``walk.model`` in order; return ``walk.out`` filled in."""
    model, graph = walk.model, walk.model.graph
    for name in model.order:
        op = graph.op(name)
        ins = graph.inputs(name)
        y = LAYERWISE.lookup(op, node=name)(walk, name, op, walk.values[ins[0]] if ins else None)
        walk.values[name] = y
        if name == model.latent_node:
            walk.out.latent = y.float().mean(0) if isinstance(op, ops.LIF) else y[0]
        for i in graph.meta(name)[META_KEY]["frees"]:  # its last user has run: let it be freed
            walk.values.pop(i)
            walk.binary.pop(i, None)
    return walk.out


@LAYERWISE.register(ops.Input)
def _input(walk: Walk, name: str, op: ops.Input, h: None) -> Tensor:
    # [1, B, ...]: T = 1 until encoded; a graph without encoder takes the train as it is
    return walk.encoded if walk.encoded is not None and not walk.model.encodes else walk.x.unsqueeze(0)


@LAYERWISE.register(ops.PoissonEncode)
def _encode(walk: Walk, name: str, op: ops.PoissonEncode, h: Tensor) -> Tensor:
    y = walk.encoded if walk.encoded is not None else poisson_encode(walk.x, op, generator=walk.generator)
    if "_encode" in walk.record:
        walk.out.encoded = y
    if walk.fast and walk.encoded is None:
        walk.binary[name] = y.to(torch.bool) if walk.keep_binary else None
    return y


@LAYERWISE.register(ops.Conv2d, ops.ConvTranspose2d, ops.Linear)
def _synapse(walk: Walk, name: str, op: ops.Op, h: Tensor) -> Tensor:
    graph = walk.model.graph
    source = graph.inputs(name)[0]
    weight, bias = walk.model.synapse_weights(name)  # quantised under quantisation-aware execution
    choice = walk.model.synapse_choice(name)  # the per-machine plan's kernels for this layer
    if source in walk.binary:
        # the producer's spikes in their own shape and layout; the synapse reshapes them
        # chunk by chunk (a deferred flatten / unflatten)
        contiguous_out, out_sample = walk.model.handoff(name)
        return fastpath.spike_synapse(op, weight, bias, h, walk.binary[source], lead_dims=2,
                                      sample=walk.deferred.get(source), contiguous_out=contiguous_out,
                                      out_sample=out_sample, choice=choice,
                                      spike_driven=walk.model.execution.spike_driven,
                                      gated_input=source in walk.gated)
    t = h.shape[0]
    flat = fastpath.synapse_forward(op, weight, bias, h.reshape(t * walk.batch, *h.shape[2:]), choice)
    return flat.reshape(t, walk.batch, *flat.shape[1:])


@LAYERWISE.register(ops.Flatten, ops.Unflatten)
def _reshape(walk: Walk, name: str, op: ops.Op, h: Tensor) -> Tensor:
    graph = walk.model.graph
    source = graph.inputs(name)[0]
    spikes = source in walk.binary
    if spikes:  # same spikes; the synapse reshapes them
        walk.binary[name] = walk.binary[source]
        if source in walk.gated:
            walk.gated.add(name)
    if spikes and graph.meta(name)[META_KEY]["defer_reshape"]:
        walk.deferred[name] = tuple(graph.meta(name)["shape"])
        return h  # the synapses after it take the producer's spikes as they are
    shape = (-1,) if isinstance(op, ops.Flatten) else tuple(op.shape)
    return h.reshape(h.shape[0], walk.batch, *shape)


def state_precision(current: Tensor) -> Tensor:
    """``current`` in float32 when it comes in bf16 or fp16, else as it is.

    Under ``torch.autocast`` (``training.precision: bf16``) the synapses hand out low-precision
    currents; the neurons' state (the LIF membrane and its fused C or Triton scan, which take
    float32 only, the leaky integrator) and the VAE's sampling stay float32, so rounding to 8
    mantissa bits happens once per synapse and never accumulates over the T steps. The float32
    copy keeps the current's layout and comes from the step's buffer pool where one is active
    (the fast path on the CPU, :mod:`saec.runtime.pool`), like the step's other large tensors;
    the copy is differentiable (the gradient goes back to the current in its own dtype).
    """
    if current.dtype not in (torch.bfloat16, torch.float16):
        return current
    pool = buffers.active()
    if pool is None or not _dense(current):  # the pool hands out dense layouts only
        return current.float()
    return buffers.empty_like(pool, current, torch.float32).copy_(current)


def _dense(t: Tensor) -> bool:
    """Whether ``t``'s elements fill its memory without gaps or overlaps (any order of dimensions)."""
    expected = 1
    for stride, size in sorted((st, n) for st, n in zip(t.stride(), t.shape) if n > 1):
        if stride != expected:
            return False
        expected *= size
    return True


@LAYERWISE.register(ops.LIF)
def _lif(walk: Walk, name: str, op: ops.LIF, h: Tensor) -> Tensor:
    op = walk.model.neuron(name, op)  # the chip's decay and threshold under quantisation-aware execution
    layer = walk.model.graph.meta(name).get("layer")
    keep_state = walk.record_potentials and layer in walk.record
    want = "all" if keep_state else walk.model.graph.meta(name)[META_KEY]["cumulative"]
    h = state_precision(h)
    if walk.fast:
        res = lif_scan(h, op, cumulative=want, record_potential=keep_state, bool_spikes=walk.keep_binary,
                       counts=True, backend=walk.model.execution.scan_backend)
        walk.binary[name] = res.fired
        if op.surrogate == "spike_gated":
            walk.gated.add(name)
    else:
        res = lif_scan_autograd(h, op, cumulative=want, record_potential=keep_state)
    _record_lif(walk, name, layer, res, want, keep_state)
    return res.spikes


def _record_lif(walk: Walk, name: str, layer: str | None, res: LIFResult, want: str, keep_state: bool) -> None:
    """Put a LIF layer's counts, U and (when asked) trains and potentials into the output."""
    out = walk.out
    # what the user sees has the layer's own shape (the layer may have run unflattened)
    shape = tuple(walk.model.graph.meta(name)["shape"])

    def own(t: Tensor, lead: int) -> Tensor:
        return t if tuple(t.shape[lead:]) == shape else t.reshape(*t.shape[:lead], *shape)

    out.counts[layer] = own(res.counts if res.counts is not None else res.spikes.sum(0), 1)
    if want == "last":
        out.u_last[layer] = own(res.U, 1)
    elif want == "all":
        walk.values[name + ":U"] = own(res.U, 2)
        if layer in walk.model.u_last_layers:
            out.u_last[layer] = own(res.U[-1], 1)
    if layer in walk.record:
        out.trains[layer] = own(res.spikes, 2)
    if keep_state:
        out.potentials[layer], out.cumulative[layer] = own(res.u, 2), own(res.U, 2)


@LAYERWISE.register(ops.ReLU)
def _relu(walk: Walk, name: str, op: ops.ReLU, h: Tensor) -> Tensor:
    y = torch.relu(h)
    walk.out.counts[walk.model.graph.meta(name).get("layer")] = y[0]
    return y


@LAYERWISE.register(ops.Reparameterize)
def _reparameterize(walk: Walk, name: str, op: ops.Reparameterize, h: Tensor) -> Tensor:
    z, walk.out.mu, walk.out.logvar = reparameterize(state_precision(h[0]), walk.model.training, walk.generator)
    return z.unsqueeze(0)


@LAYERWISE.register(ops.MaxCumulativeReadout)
def _readout(walk: Walk, name: str, op: ops.MaxCumulativeReadout, h: Tensor) -> Tensor:
    graph = walk.model.graph
    U = walk.values[readout_source(graph, name) + ":U"]
    return max_cumulative_readout(U.reshape(*U.shape[:2], *graph.meta(name)["shape"]), op).unsqueeze(0)


@LAYERWISE.register(ops.SumPool2d)
def _sum_pool(walk: Walk, name: str, op: ops.SumPool2d, h: Tensor) -> Tensor:
    pooled = sum_pool2d(h.reshape(-1, *h.shape[2:]), op)
    return pooled.reshape(h.shape[0], walk.batch, *pooled.shape[1:])


@LAYERWISE.register(ops.LeakyIntegrator)
def _leaky_integrator(walk: Walk, name: str, op: ops.LeakyIntegrator, h: Tensor) -> Tensor:
    y = leaky_integrate(state_precision(h), op)
    layer = walk.model.graph.meta(name).get("layer")
    if layer in walk.record:
        walk.out.trains[layer] = y
    return y


@LAYERWISE.register(ops.Output)
def _output(walk: Walk, name: str, op: ops.Output, h: Tensor) -> Tensor:
    walk.out.x_hat = h[0]
    if name in walk.record:
        walk.out.trains[name] = h
    return h  # the reconstruction passes through unchanged
