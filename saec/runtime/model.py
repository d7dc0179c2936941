"""IR -> ``nn.Module``. The module only holds parameters and walks the IR.

Execution is layer-wise multi-step: every layer processes all T time steps
before the next starts (the network is feed-forward with no synaptic delay).
A conv or linear runs once on a [T*B, ...] tensor; the LIF recurrence over T is
:func:`saec.runtime.lif.lif_scan`. :meth:`SpikingAutoencoder.forward_stepwise`
is the step-by-step reference (each step runs the whole network) and gives
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
import torch.nn.functional as F
from torch import Tensor, nn

from saec.compiler import ops
from saec.compiler.graph import IRGraph
from saec.compiler.passes.params import weight_shapes
from saec.runtime import fastpath
from saec.runtime.encoding import poisson_encode
from saec.runtime.execution import Execution
from saec.runtime.lif import lif_scan, lif_scan_autograd, lif_step
from saec.runtime.pool import BufferPool, use_pool
from saec.runtime.readout import max_cumulative_readout


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


def apply_synapse(op: ops.Op, p: SynapseParams, x: Tensor) -> Tensor:
    """Conv / linear on x of shape [N, ...] (N = T*B, or B)."""
    return fastpath.synapse_forward(op, p.weight, getattr(p, "bias", None), x)


def leaky_integrate(current: Tensor, op: ops.LeakyIntegrator) -> Tensor:
    """v(t) = decay * v(t-1) + gain * I(t), v(0) = 0, over current [T, B, ...]; returns v(1..T)."""
    v = torch.zeros_like(current[0])
    out = torch.empty_like(current)
    for t in range(current.shape[0]):
        v = v * op.decay + current[t] * op.gain
        out[t] = v
    return out


class SpikingAutoencoder(nn.Module):
    """The network an IR graph describes (SAE, AE or VAE).

    Args:
        graph: a compiled IR graph (after the ``compile`` flow: shapes known).
    """

    def __init__(self, graph: IRGraph) -> None:
        super().__init__()
        self.graph = graph
        self.order = graph.order()
        self.kind = graph.attrs.get("kind", "sae")
        self.synapses = nn.ModuleDict()
        for name in self.order:
            if graph.op(name).has_weights:
                self.synapses[module_key(name)] = SynapseParams(graph.op(name))
        losses = graph.attrs.get("losses", {})
        need = set()
        for term in ("p1", "p2"):
            if losses.get(term):
                need.update(losses[term]["layers"])
        #: layers whose U(T) the loss needs
        self.u_last_layers = need
        (self.input_node,) = graph.nodes(ops.Input)
        self.input_shape = tuple(graph.meta(self.input_node)["shape"])
        #: False for graphs read from NIR: their input is already a spike train (``encoded``).
        self.encodes = any(True for _ in graph.nodes(ops.PoissonEncode))
        self.latent_node = graph.attrs.get("latent_node")
        #: how forward runs (see the module docstring)
        self.execution = Execution()
        # forward drops a value once its last user has run, so it can be freed early
        position = {name: i for i, name in enumerate(self.order)}
        self._last_use = {name: max((position[u] for u in graph.users(name)), default=len(self.order))
                          for name in self.order}
        self._feeds_synapses_only = {name: bool(graph.users(name)) and all(
            graph.op(u).has_weights for u in graph.users(name)) for name in self.order}
        # synapses whose LIF layer's spikes a Linear reads next (through a flatten): their current
        # is kept contiguous, so the spikes need no layout change before the matrix product
        def linear_reads(node: str) -> bool:
            return any(isinstance(graph.op(u), ops.Linear) or (isinstance(graph.op(u), ops.Flatten)
                                                                and linear_reads(u)) for u in graph.users(node))

        self._feeds_linear = {name: graph.op(name).has_weights and any(
            isinstance(graph.op(u), ops.LIF) and linear_reads(u) for u in graph.users(name)) for name in self.order}
        # linear synapses whose LIF layer feeds an unflatten into convolutions: in fast training
        # they hand out their current already unflattened and channels-last (the LIF layer is
        # elementwise, so it may run before the unflatten), and the convolutions read the spikes
        # without a layout change
        self._unflatten_early = {}
        for name in self.order:
            users = graph.users(name)
            if not (isinstance(graph.op(name), ops.Linear) and len(users) == 1
                    and isinstance(graph.op(users[0]), ops.LIF)):
                continue
            after = graph.users(users[0])
            if (len(after) == 1 and isinstance(graph.op(after[0]), ops.Unflatten)
                    and len(graph.op(after[0]).shape) == 3 and graph.users(after[0])
                    and all(isinstance(graph.op(u), (ops.Conv2d, ops.ConvTranspose2d))
                            for u in graph.users(after[0]))):
                self._unflatten_early[name] = tuple(graph.op(after[0]).shape)
        #: reusable large buffers of the training step (CPU; see saec.runtime.pool)
        self._pool = BufferPool()
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
            encoded: a precomputed input spike train [T, B, ...] (skips encoding).
            record_potentials: also return u(1..T) and U(1..T) of the recorded spiking
                layers (``NetOutput.potentials`` / ``.cumulative``); costs memory, for tests and analysis.
        """
        out = NetOutput(x_hat=x)
        values: dict[str, Tensor] = {}
        batch = x.shape[0]
        if not isinstance(self.execution, Execution):
            raise TypeError(f"execution must be a saec.runtime.execution.Execution, got {self.execution!r}")
        fast = self.execution.fast
        # values known to be spike trains (fast execution): their bool copies, which the
        # synapses keep for backward when training, or None (inference)
        binary: dict[str, Tensor | None] = {}
        keep_binary = fast and torch.is_grad_enabled()
        # flatten / unflatten nodes left to their synapses: the per-row shape they stand for
        deferred: dict[str, tuple[int, ...]] = {}
        if keep_binary:
            fastpath.keep_freed_memory()
        with use_pool(self._pool if fast and x.device.type == "cpu" else None):
            return self._walk(x, out, values, binary, deferred, batch, fast, keep_binary, generator, record,
                              encoded, record_potentials)

    def _walk(self, x, out, values, binary, deferred, batch, fast, keep_binary, generator, record, encoded,
              record_potentials) -> NetOutput:
        for index, name in enumerate(self.order):
            op = self.graph.op(name)
            ins = self.graph.inputs(name)
            h = values[ins[0]] if ins else None
            layer = self.graph.meta(name).get("layer")
            if isinstance(op, ops.Input):
                # [1, B, ...]: T = 1 until encoded; a graph without encoder takes the train as it is
                y = encoded if encoded is not None and not self.encodes else x.unsqueeze(0)
            elif isinstance(op, ops.PoissonEncode):
                y = encoded if encoded is not None else poisson_encode(x, op, generator=generator)
                if "_encode" in record:
                    out.encoded = y
                if fast and encoded is None:
                    binary[name] = y.to(torch.bool) if keep_binary else None
            elif op.has_weights:
                t = h.shape[0]
                p = self.synapses[module_key(name)]
                if ins[0] in binary:
                    # the producer's spikes in their own shape and layout; the synapse reshapes
                    # them chunk by chunk (a deferred flatten / unflatten)
                    y = fastpath.spike_synapse(op, p.weight, getattr(p, "bias", None), h, binary[ins[0]],
                                               lead_dims=2, sample=deferred.get(ins[0]),
                                               contiguous_out=self._feeds_linear[name],
                                               out_sample=self._unflatten_early.get(name))
                else:
                    flat = apply_synapse(op, p, h.reshape(t * batch, *h.shape[2:]))
                    y = flat.reshape(t, batch, *flat.shape[1:])
            elif isinstance(op, (ops.Flatten, ops.Unflatten)):
                shape = (-1,) if isinstance(op, ops.Flatten) else tuple(op.shape)
                if ins[0] in binary and self._feeds_synapses_only[name]:
                    y = h  # the synapses after it take the producer's spikes as they are
                    deferred[name] = tuple(self.graph.meta(name)["shape"])
                else:
                    y = h.reshape(h.shape[0], batch, *shape)
                if ins[0] in binary:  # same spikes; the synapse reshapes them
                    binary[name] = binary[ins[0]]
            elif isinstance(op, ops.LIF):
                want = "last" if layer in self.u_last_layers else "none"
                if self.graph.inputs(self.graph.users(name)[0]) and isinstance(
                        self.graph.op(self.graph.users(name)[0]), ops.MaxCumulativeReadout):
                    want = "all"
                keep_state = record_potentials and layer in record
                if keep_state:
                    want = "all"
                if h.dtype in (torch.bfloat16, torch.float16):
                    h = h.float()  # under autocast: synapses in low precision, the LIF recurrence in fp32
                if fast:
                    res = lif_scan(h, op, cumulative=want, record_potential=keep_state, bool_spikes=keep_binary,
                                   counts=True, backend=self.execution.scan_backend)
                else:
                    res = lif_scan_autograd(h, op, cumulative=want, record_potential=keep_state)
                y = res.spikes
                if fast:
                    binary[name] = res.fired
                # what the user sees has the layer's own shape (the layer may have run unflattened)
                shape = tuple(self.graph.meta(name)["shape"])

                def own(t: Tensor, lead: int) -> Tensor:
                    return t if tuple(t.shape[lead:]) == shape else t.reshape(*t.shape[:lead], *shape)

                out.counts[layer] = own(res.counts if res.counts is not None else y.sum(0), 1)
                if want == "last":
                    out.u_last[layer] = own(res.U, 1)
                elif want == "all":
                    values[name + ":U"] = own(res.U, 2)
                    if layer in self.u_last_layers:
                        out.u_last[layer] = own(res.U[-1], 1)
                if layer in record:
                    out.trains[layer] = own(y, 2)
                if keep_state:
                    out.potentials[layer], out.cumulative[layer] = own(res.u, 2), own(res.U, 2)
            elif isinstance(op, ops.ReLU):
                y = torch.relu(h)
                out.counts[layer] = y[0]
            elif isinstance(op, ops.Reparameterize):
                mu, logvar = h[0].chunk(2, dim=-1)
                out.mu, out.logvar = mu, logvar
                if self.training:
                    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
                    z = mu + torch.exp(0.5 * logvar) * eps
                else:
                    z = mu
                y = z.unsqueeze(0)
            elif isinstance(op, ops.MaxCumulativeReadout):
                y = max_cumulative_readout(values[ins[0] + ":U"], op).unsqueeze(0)
            elif isinstance(op, ops.SumPool2d):
                pooled = F.avg_pool2d(h.reshape(-1, *h.shape[2:]), op.kernel_size, op.stride, op.padding,
                                      divisor_override=1)  # divisor 1: the window's sum
                y = pooled.reshape(h.shape[0], batch, *pooled.shape[1:])
            elif isinstance(op, ops.LeakyIntegrator):
                y = leaky_integrate(h, op)
                if layer in record:
                    out.trains[layer] = y
            elif isinstance(op, ops.Output):
                y = h
                out.x_hat = h[0]
                if name in record:
                    out.trains[name] = h
            else:  # pragma: no cover - closed op set
                raise TypeError(f"no runtime rule for op {op.type!r}")
            values[name] = y
            if name == self.latent_node:
                out.latent = y.float().mean(0) if isinstance(op, ops.LIF) else y[0]
            for i in ins:
                if self._last_use[i] == index:  # its last user has run: let it be freed
                    values.pop(i)
                    binary.pop(i, None)
        return out

    @torch.no_grad()
    def forward_stepwise(self, x: Tensor, encoded: Tensor) -> dict[str, Tensor]:
        """Reference execution: each time step runs the whole network (no gradients).

        Returns the spike train [T, B, ...] of every spiking layer, keyed by layer name.
        """
        T, batch = encoded.shape[0], x.shape[0]
        state: dict[str, tuple] = {}
        trains: dict[str, list[Tensor]] = {}
        for t in range(T):
            values: dict[str, Tensor] = {}
            for name in self.order:
                op = self.graph.op(name)
                ins = self.graph.inputs(name)
                h = values[ins[0]] if ins else None
                if isinstance(op, ops.Input):
                    y = x
                elif isinstance(op, ops.PoissonEncode):
                    y = encoded[t]
                elif op.has_weights:
                    y = apply_synapse(op, self.synapses[module_key(name)], h)
                elif isinstance(op, ops.Flatten):
                    y = h.reshape(batch, -1)
                elif isinstance(op, ops.Unflatten):
                    y = h.reshape(batch, *op.shape)
                elif isinstance(op, ops.LIF):
                    y, state[name] = lif_step(h, state.get(name), op)
                    trains.setdefault(self.graph.meta(name)["layer"], []).append(y)
                elif isinstance(op, ops.SumPool2d):
                    y = F.avg_pool2d(h, op.kernel_size, op.stride, op.padding, divisor_override=1)  # window sums
                else:
                    y = h
                values[name] = y
        return {k: torch.stack(v) for k, v in trains.items()}
