"""The step-by-step reference: each time step runs the whole network (no gradients).

The layer-wise forward (:mod:`saec.runtime.layerwise`) must give bit-identical
spikes; this walk is what it is checked against. One handler per op type in
:data:`STEPWISE` (an :class:`~saec.compiler.dispatch.OpTable`); a handler takes
the walk's state (:class:`StepWalk`), the node's name, its op and its input
``h`` at step t ([B, ...]) and returns the node's output at step t. Ops that keep
state over time (LIF, the leaky integrator, the readout's running peak) keep it
in ``StepWalk.state``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

from saec.compiler import ops
from saec.compiler.dispatch import OpTable
from saec.runtime import fastpath
from saec.runtime.layers import leaky_integrator_step, sum_pool2d
from saec.runtime.lif import lif_step
from saec.runtime.readout import check_t_min, readout_source

if TYPE_CHECKING:
    from saec.runtime.model import SpikingAutoencoder


@dataclass
class StepWalk:
    """The state of one step-by-step pass.

    Attributes:
        model: the network.
        x: the input batch [B, C, H, W].
        encoded: the input spike train [T, B, ...] (step t reads ``encoded[t]``).
        t: the step running (0-based).
        values: each node's output at step t, by name (``"<lif>:U"``: a LIF layer's U(t)).
        state: what a node carries from step to step (LIF: (u', U); leaky integrator: v;
            readout: the running peak of U).
        trains: per spiking layer, its spikes at each step so far.
    """

    model: SpikingAutoencoder
    x: Tensor
    encoded: Tensor
    t: int = 0
    values: dict[str, Tensor] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    trains: dict[str, list[Tensor]] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    @property
    def timesteps(self) -> int:
        return self.encoded.shape[0]


@dataclass
class StepwiseResult:
    """What the step-by-step reference computes.

    Attributes:
        trains: the spike train [T, B, ...] of every spiking layer, keyed by layer name.
        x_hat: the Output node's value at the last step [B, ...]: for an SAE the readout, equal to
            the layer-wise ``NetOutput.x_hat``; for a graph whose Output follows a leaky integrator
            (read from NIR) v(T), where the layer-wise ``x_hat`` holds the first step's value.
    """

    trains: dict[str, Tensor]
    x_hat: Tensor


StepHandler = Callable[[StepWalk, str, ops.Op, "Tensor | None"], Tensor]
#: The step-by-step forward of every op type.
STEPWISE: OpTable[StepHandler] = OpTable("step-by-step forward")
STEPWISE.refuse(ops.Reparameterize, "VAE sampling belongs to the non-spiking VAE baseline, which runs one "
                                    "step (T = 1); use the layer-wise forward")


@torch.no_grad()
def run_stepwise(model: SpikingAutoencoder, x: Tensor, encoded: Tensor) -> StepwiseResult:
    """Run ``model`` one time step at a time over ``encoded`` [T, B, ...] (inputs ``x`` [B, ...]).

    Raises:
        UnsupportedOp: the graph holds an op this walk refuses (the message says why).
    """
    walk = StepWalk(model, x, encoded)
    graph = model.graph
    handlers = [(name, graph.op(name), graph.inputs(name), STEPWISE.lookup(graph.op(name), node=name))
                for name in model.order]
    for t in range(walk.timesteps):
        walk.t, walk.values = t, {}
        for name, op, ins, handler in handlers:
            walk.values[name] = handler(walk, name, op, walk.values[ins[0]] if ins else None)
    (output,) = graph.nodes(ops.Output)
    return StepwiseResult({k: torch.stack(v) for k, v in walk.trains.items()}, walk.values[output])


@STEPWISE.register(ops.Input)
def _input(walk: StepWalk, name: str, op: ops.Input, h: None) -> Tensor:
    # a graph without encoder (read from NIR, AE/VAE) takes the given train as its input
    return walk.x if walk.model.encodes else walk.encoded[walk.t]


@STEPWISE.register(ops.PoissonEncode)
def _encode(walk: StepWalk, name: str, op: ops.PoissonEncode, h: Tensor) -> Tensor:
    return walk.encoded[walk.t]


@STEPWISE.register(ops.Conv2d, ops.ConvTranspose2d, ops.Linear)
def _synapse(walk: StepWalk, name: str, op: ops.Op, h: Tensor) -> Tensor:
    return fastpath.synapse_forward(op, *walk.model.synapse_weights(name), h, walk.model.synapse_choice(name))


@STEPWISE.register(ops.Flatten)
def _flatten(walk: StepWalk, name: str, op: ops.Flatten, h: Tensor) -> Tensor:
    return h.reshape(walk.batch, -1)


@STEPWISE.register(ops.Unflatten)
def _unflatten(walk: StepWalk, name: str, op: ops.Unflatten, h: Tensor) -> Tensor:
    return h.reshape(walk.batch, *op.shape)


@STEPWISE.register(ops.LIF)
def _lif(walk: StepWalk, name: str, op: ops.LIF, h: Tensor) -> Tensor:
    y, walk.state[name] = lif_step(h, walk.state.get(name), walk.model.neuron(name, op))
    walk.values[name + ":U"] = walk.state[name][1]
    walk.trains.setdefault(walk.model.graph.meta(name)["layer"], []).append(y)
    return y


@STEPWISE.register(ops.LeakyIntegrator)
def _leaky_integrator(walk: StepWalk, name: str, op: ops.LeakyIntegrator, h: Tensor) -> Tensor:
    walk.state[name] = leaky_integrator_step(h, walk.state.get(name), op)
    return walk.state[name]


@STEPWISE.register(ops.SumPool2d)
def _sum_pool(walk: StepWalk, name: str, op: ops.SumPool2d, h: Tensor) -> Tensor:
    return sum_pool2d(h, op)


@STEPWISE.register(ops.ReLU)
def _relu(walk: StepWalk, name: str, op: ops.ReLU, h: Tensor) -> Tensor:
    return torch.relu(h)


@STEPWISE.register(ops.MaxCumulativeReadout)
def _readout(walk: StepWalk, name: str, op: ops.MaxCumulativeReadout, h: Tensor) -> Tensor:
    """The readout over the steps so far: the running peak of U(t), t >= max(t_min, 1), over the divisor
    (zeros while the window has not opened; after step T it is the layer-wise readout's value)."""
    check_t_min(op, walk.timesteps)
    graph = walk.model.graph
    U_t = walk.values[readout_source(graph, name) + ":U"]
    U_t = U_t.reshape(U_t.shape[0], *graph.meta(name)["shape"])
    peak = walk.state.get(name)
    if walk.t + 1 >= max(op.t_min, 1):  # U(t) with t = walk.t + 1 (1-based) lies in the window
        # strict >: the first maximal step wins, as in the layer-wise readout
        peak = U_t.clone() if peak is None else torch.where(U_t > peak, U_t, peak)
        walk.state[name] = peak
    if peak is None:
        return torch.zeros_like(U_t)
    if op.t_min == 0:
        peak = torch.relu(peak)  # U(0) = 0 takes part
    return peak / op.divisor(walk.timesteps)


@STEPWISE.register(ops.Output)
def _output(walk: StepWalk, name: str, op: ops.Output, h: Tensor) -> Tensor:
    return h  # the reconstruction passes through unchanged
