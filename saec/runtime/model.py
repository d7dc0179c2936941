"""IR -> ``nn.Module``. The module only holds parameters and walks the IR.

Execution is layer-wise multi-step: every layer processes all T time steps
before the next starts (the network is feed-forward with no synaptic delay).
A conv or linear runs once on a [T*B, ...] tensor; the LIF recurrence over T is
:func:`saec.runtime.lif.lif_scan`. The walk is :mod:`saec.runtime.layerwise` (one
handler per op type); what it needs to know about the graph beforehand is the
execution plan in each node's ``meta["exec"]``
(:mod:`saec.compiler.passes.exec_plan`, run here on a copy when the graph has none).
:meth:`SpikingAutoencoder.forward_stepwise` is the step-by-step reference
(:mod:`saec.runtime.stepwise`: each step runs the whole network) and gives
bit-identical spikes.

``SpikingAutoencoder.execution`` (an :class:`~saec.runtime.execution.Execution`)
picks how a training forward runs: path ``"fast"`` (the default) uses the fused
LIF scan and synapses that keep their binary input as bool for backward
(:mod:`saec.runtime.fastpath`); ``"reference"`` uses the autograd-oracle scan and
plain autograd synapses. Both give bit-identical spikes and the same gradients
(fp32 rounding).

AE and VAE baselines run through the same walk with T = 1 and no encoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from saec.compiler import ops
from saec.compiler.graph import IRGraph
from saec.compiler.passes.exec_plan import plan_is_current, planned_copy, u_last_layers
from saec.compiler.passes.params import weight_shapes
from saec.runtime import fastpath
from saec.runtime.execution import Execution
from saec.runtime.layerwise import Walk, run_layerwise
from saec.runtime.plan import layer_key, producer_of
from saec.runtime.pool import BufferPool, use_pool
from saec.runtime.qat import LayerQuantization, target_quantizer
from saec.runtime.stepwise import run_stepwise


@dataclass
class NetOutput:
    """What one forward pass produces (per batch).

    Attributes:
        x_hat: reconstruction [B, C, H, W].
        counts: spike counts per spiking layer name, [B, *shape] (sum over T;
            differentiable through the surrogate), or ReLU activations for AE/VAE.
        u_last: U(T) per spiking layer name, [B, *shape] (for P1 / P2).
        trains: spike trains [T, B, *shape] of the layers asked for in ``record``.
        potentials: with ``record_potentials``, u(1..T) [T, B, *shape] of the recorded
            spiking layers (membrane before the floor rule and the reset).
        cumulative: with ``record_potentials``, U(1..T) [T, B, *shape] of the recorded
            spiking layers.
        encoded: the input spike train [T, B, C, H, W] (when recorded).
        mu, logvar: the VAE's posterior parameters.
        latent: the latent representation [B, nz] (firing rate for SAE, z or activation for AE/VAE).
    """

    x_hat: Tensor
    counts: dict[str, Tensor] = field(default_factory=dict)
    u_last: dict[str, Tensor] = field(default_factory=dict)
    trains: dict[str, Tensor] = field(default_factory=dict)
    potentials: dict[str, Tensor] = field(default_factory=dict)
    cumulative: dict[str, Tensor] = field(default_factory=dict)
    encoded: Tensor | None = None
    mu: Tensor | None = None
    logvar: Tensor | None = None
    latent: Tensor | None = None


def module_key(node: str) -> str:
    """``nn.ModuleDict`` keys cannot hold dots; IR node names of weighted ops never do."""
    return node.replace(".", "__")


def init_weights(op: ops.Op, params: dict[str, Tensor], generator: torch.Generator | None = None) -> None:
    """Paper Eq. 13: weights ~ N(0, factor * sqrt(2 / fan_in)), biases zero.

    fan_in is k*k*C_in for convolutions and transposed convolutions, in_features for linear.
    """
    if isinstance(op, ops.Linear):
        fan_in = op.in_features
    else:
        fan_in = op.in_channels * math.prod(op.kernel_size)
    std = op.init_std_factor * math.sqrt(2.0 / fan_in)
    with torch.no_grad():
        params["weight"].normal_(0.0, std, generator=generator)
        if "bias" in params:
            params["bias"].zero_()


class SynapseParams(nn.Module):
    """Holds ``weight`` (and ``bias``) of one weighted IR node."""

    def __init__(self, op: ops.Op) -> None:
        super().__init__()
        for pname, shape in weight_shapes(op).items():
            self.register_parameter(pname, nn.Parameter(torch.empty(shape)))


def apply_synapse(op: ops.Op, p: SynapseParams, x: Tensor,
                  choice: fastpath.SynapseChoice = fastpath.DEFAULT_CHOICE) -> Tensor:
    """Conv / linear on x of shape [N, ...] (N = T*B, or B); ``choice``: the layer's planned kernels."""
    return fastpath.synapse_forward(op, p.weight, getattr(p, "bias", None), x, choice)


class SpikingAutoencoder(nn.Module):
    """The network an IR graph describes (SAE, AE or VAE).

    Args:
        graph: a compiled IR graph (after the ``compile`` flow: shapes known).
    """

    def __init__(self, graph: IRGraph) -> None:
        super().__init__()
        #: the IR this network runs, with the execution plan in ``meta["exec"]``: the graph given when
        #: it carries a current plan, else a planned copy (the caller's graph is left as it is)
        self.graph = graph if plan_is_current(graph) else planned_copy(graph)
        self.order = self.graph.order()
        self.kind = self.graph.attrs.get("kind", "sae")
        self.synapses = nn.ModuleDict()
        for name in self.order:
            if self.graph.op(name).has_weights:
                self.synapses[module_key(name)] = SynapseParams(self.graph.op(name))
        #: layers whose U(T) the loss needs
        self.u_last_layers = u_last_layers(self.graph)
        (self.input_node,) = self.graph.nodes(ops.Input)
        self.input_shape = tuple(self.graph.meta(self.input_node)["shape"])
        #: False for graphs read from NIR: their input is already a spike train (``encoded``).
        self.encodes = any(True for _ in self.graph.nodes(ops.PoissonEncode))
        self.latent_node = self.graph.attrs.get("latent_node")
        #: how forward runs (see the module docstring)
        self.execution = Execution()
        #: quantisation-aware execution for graph.attrs["target"] (saec.runtime.qat), else None
        self.quantizer = target_quantizer(self.graph)
        #: this forward's quantised layers, by synapse node and by LIF node (see :meth:`_quantize`)
        self._quantized: dict[str, LayerQuantization] = {}
        #: reusable large buffers of the training step (CPU; see saec.runtime.pool)
        self._pool = BufferPool()
        #: each synapse node's planning key (saec.runtime.plan.layer_key), and the choices of the
        #: plan last asked for (a plan is an immutable record: a new one is looked up afresh)
        self._layer_keys = {name: layer_key(self.graph.op(name), tuple(self.graph.meta(self.graph.inputs(name)[0])
                                                                       ["shape"]))
                            for name in self.order if self.graph.op(name).has_weights}
        #: the synapse nodes whose input is a spike train (a LIF layer's or the encoder's, reshapes aside)
        self._spike_input = {name for name in self._layer_keys
                             if isinstance(self.graph.op(producer_of(self.graph, self.graph.inputs(name)[0])),
                                           (ops.LIF, ops.PoissonEncode))}
        self._choices: tuple[object, dict[str, fastpath.SynapseChoice]] = (None, {})
        self.reset_parameters()

    def release_buffers(self) -> None:
        """Give back the large buffers the fast path keeps for reuse between steps
        (:mod:`saec.runtime.pool`); the next forward allocates afresh."""
        self._pool.clear()

    # ------------------------------------------------------------ parameters
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for name in self.order:
            op = self.graph.op(name)
            if op.has_weights:
                p = self.synapses[module_key(name)]
                init_weights(op, dict(p.named_parameters()), generator)

    def ir_state_dict(self) -> dict[str, Tensor]:
        """Weights keyed by IR node name: ``<node>.weight`` / ``<node>.bias``."""
        out = {}
        for name in self.order:
            if self.graph.op(name).has_weights:
                for pname, t in self.synapses[module_key(name)].named_parameters():
                    out[f"{name}.{pname}"] = t.detach()
        return out

    def load_ir_state_dict(self, state: dict[str, Tensor]) -> None:
        expected = set(self.ir_state_dict())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"weights do not match the IR (missing {missing}, unexpected {extra})")
        with torch.no_grad():
            for key, value in state.items():
                node, pname = key.rsplit(".", 1)
                getattr(self.synapses[module_key(node)], pname).copy_(value)

    def synapse(self, node: str) -> SynapseParams:
        """The parameters of weighted node ``node``."""
        return self.synapses[module_key(node)]

    def synapse_weights(self, node: str) -> tuple[Tensor, Tensor | None]:
        """The weight and bias of weighted node ``node`` as the forward uses them: the parameters, or,
        quantisation-aware, their quantised values (straight-through gradient to the parameters)."""
        layer = self._quantized.get(node)
        if layer is not None:
            return layer.weight, layer.bias
        p = self.synapse(node)
        return p.weight, getattr(p, "bias", None)

    def synapse_choice(self, node: str) -> fastpath.SynapseChoice:
        """Weighted node ``node``'s chunk size, layout and algorithm under the execution's plan."""
        plan = self.execution.plan
        if self._choices[0] is not plan:
            self._choices = (plan, {name: plan.synapse_choice(key, name in self._spike_input)
                                    for name, key in self._layer_keys.items()})
        return self._choices[1][node]

    def handoff(self, node: str) -> tuple[bool, tuple[int, int, int] | None]:
        """(contiguous_out, out_sample) of weighted node ``node`` on the fast path: the IR's suggestion
        (``meta["exec"]``), unless the plan turns the layer's handoff layout off."""
        suggested = self.graph.meta(node)["exec"]
        if not self.execution.plan.layer(self._layer_keys[node]).handoff_layout:
            return False, None
        out_sample = suggested["out_sample"]
        return suggested["contiguous_out"], None if out_sample is None else tuple(out_sample)

    def neuron(self, node: str, op: ops.LIF) -> ops.LIF:
        """LIF node ``node``'s op as the forward runs it: ``op``, or, quantisation-aware, with the
        chip's decay and the threshold its register holds."""
        layer = self._quantized.get(node)
        return op if layer is None else layer.neuron

    def _quantize(self) -> None:
        """Quantise the parameters for this forward (quantisation-aware execution only)."""
        self._quantized = {}
        if self.quantizer is None:
            return
        for name in self.order:
            if self.graph.op(name).has_weights:
                p = self.synapse(name)
                layer = self.quantizer.synapse(self.graph, name, p.weight, getattr(p, "bias", None))
                if layer is not None:
                    self._quantized[name] = self._quantized[self.quantizer.layers[name][0]] = layer

    def weights(self) -> list[Tensor]:
        """All weight tensors (not biases), for the L2 term."""
        return [p.weight for p in self.synapses.values()]

    # ------------------------------------------------------------ forward
    @property
    def timesteps(self) -> int:
        return int(self.graph.attrs.get("timesteps", 1))

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None,
                record: set[str] | frozenset[str] = frozenset(), encoded: Tensor | None = None,
                record_potentials: bool = False) -> NetOutput:
        """Run the whole network on a batch ``x`` [B, C, H, W] in [0, 1].

        Args:
            generator: random source for the Poisson encoding and VAE sampling.
            record: layer names whose full spike trains to return (``"_encode"`` for the input train).
            encoded: a precomputed input spike train [T, B, ...] (skips encoding): 0s and 1s.
            record_potentials: also return u(1..T) and U(1..T) of the recorded spiking
                layers (``NetOutput.potentials`` / ``.cumulative``); costs memory, for tests and analysis.

        Raises:
            ValueError: ``encoded`` holds other values than 0 and 1 in a graph with an encoder.
        """
        if not isinstance(self.execution, Execution):
            raise TypeError(f"execution must be a saec.runtime.execution.Execution, got {self.execution!r}")
        self._check_train(encoded)
        fast = self.execution.fast
        keep_binary = fast and torch.is_grad_enabled()
        walk = Walk(self, x, NetOutput(x_hat=x), generator, frozenset(record), encoded, record_potentials,
                    fast=fast, keep_binary=keep_binary)
        if keep_binary:
            fastpath.keep_freed_memory()
        plan = self.execution.plan
        self._pool.min_pooled_bytes = plan.min_pooled_bytes
        if plan.threads is not None and torch.get_num_threads() != plan.threads:
            torch.set_num_threads(plan.threads)  # process-wide, as the plan says (saec.runtime.plan)
        self._quantize()
        with use_pool(self._pool if fast and x.device.type == "cpu" else None):
            return run_layerwise(walk)

    def forward_stepwise(self, x: Tensor, encoded: Tensor) -> dict[str, Tensor]:
        """Reference execution: each time step runs the whole network (no gradients).

        Args:
            x: the input batch [B, C, H, W].
            encoded: the input spike train [T, B, C, H, W].

        Returns:
            The spike train [T, B, ...] of every spiking layer, keyed by layer name
            (:func:`saec.runtime.stepwise.run_stepwise` also gives the reconstruction).
        """
        self._check_train(encoded)
        self._quantize()
        return run_stepwise(self, x, encoded).trains

    def _check_train(self, encoded: Tensor | None) -> None:
        """A given input spike train stands for the encoder's, which the layers reading it may take as
        binary (a spike-driven forward counts any nonzero as a 1): it must hold 0s and 1s only."""
        if encoded is not None and self.encodes and not ((encoded == 0) | (encoded == 1)).all():
            raise ValueError("the input spike train (encoded) must hold only 0s and 1s")
