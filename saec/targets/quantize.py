"""Quantisation to a target's number formats, and the integer simulation of the result.

``quantize(graph, weights, profile)`` turns a trained network (an IR graph and its
weights keyed ``<node>.weight`` / ``<node>.bias``) into the integers a chip stores:
weights, thresholds, biases and decay registers, one scale per layer. ``simulate``
then runs those integers in the chip's own arithmetic, step by step, so what a chip
would compute can be compared spike for spike with saec's float runtime.

Each profile names its quantiser (``quantizer:``); a new target with a new neuron or
number format adds one entry to :data:`QUANTIZERS`.

Scales are powers of two (the largest that keeps every weight in range): a network
whose weights and threshold are dyadic then quantises exactly, which is how the
integer simulation is tested against the float runtime. Numpy only (no torch), like
the rest of ``saec.targets``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from saec.compiler import ops
from saec.compiler.dispatch import OpTable, UnsupportedOp
from saec.compiler.graph import IRGraph
from saec.errors import UserError
from saec.targets.fit import check_fit, chip_decay
from saec.targets.profile import Profile

# ---------------------------------------------------------------- Loihi (lava fixed point)
#: lava-nc 0.10.0 lava/proc/lif/models.py (AbstractPyLifModelFixed): decays are MSB-aligned to 12 bits,
#: threshold and input activation are shifted left by 6, u and v are 24-bit.
LOIHI_DECAY_SHIFT = 12
LOIHI_VTH_SHIFT = 6
LOIHI_ACT_SHIFT = 6
LOIHI_UV_LIMIT = 2 ** 23  # max_uv_val
LOIHI_VTH_MAX = 2 ** 17 - 1  # vth: unsigned 17-bit
LOIHI_WEIGHT_RANGE = (-256, 254)  # mixed-sign 8-bit weights are even integers (lava/utils/weightutils.py)
LOIHI_BIAS_MANT = (-4096, 4095)  # signed 13-bit mantissa; exponent 0..7

# ---------------------------------------------------------------- Speck (sinabs DYNAP-CNN)
#: sinabs 3.1.3 sinabs/backend/dynapcnn/discretize.py: 8-bit weights and bias, 16-bit state and threshold.
SPECK_WEIGHT_MAX = 2 ** 7 - 1
SPECK_STATE_LIMIT = 2 ** 15  # min_v_mem defaults to -2**15: the clamp the chip applies


@dataclass
class QuantizedLayer:
    """One spiking layer as the chip stores it.

    Float equivalents: weight / scale, bias / scale, threshold_float = threshold / scale (the
    state's unit is 1 / scale of saec's membrane; Loihi's v is a further 2**6 finer).
    """

    node: str  # synapse node
    neuron: str  # its LIF node
    weight: np.ndarray  # int64, the synapse op's layout
    bias: np.ndarray | None  # int64 per output channel, in the state's units (None: no bias)
    scale: float  # integer units per unit of saec's membrane potential (a power of two)
    threshold: int  # the threshold register
    decay: float  # the decay the chip runs (saec's decay after the chip's rounding)
    decay_register: int | None  # Loihi: dv (12-bit); None where the chip has no leak register
    reset: str  # zero | subtract
    spike_at: int  # the membrane value at or above which the chip spikes (its units)
    float_threshold: float  # the threshold of saec's float LIF that spikes exactly where the chip does
    synapse_register: int | None = None  # Xylo: dash_syn of the synaptic current; None: no synaptic state


@dataclass
class QuantizedNetwork:
    """A network in a target's integers, and how to run it there."""

    target: str
    graph: IRGraph  # the compiled graph it came from
    layers: dict[str, QuantizedLayer]  # by synapse node
    step: Callable  # the chip's neuron update: step(v, a_in, layer) -> (v, spikes)
    notes: list[str] = field(default_factory=list)

    def chip_graph(self) -> IRGraph:
        """The float network the chip computes: the graph with the chip's decays and thresholds.

        With :meth:`dequantized_weights` it is what saec's float runtime must match.
        """
        graph = self.graph.copy()
        for q in self.layers.values():
            graph.replace_op(q.neuron, replace(graph.op(q.neuron), decay=q.decay, threshold=q.float_threshold))
        return graph

    def dequantized_weights(self) -> dict[str, np.ndarray]:
        """Weights (and biases) as floats, keyed like the IR state dict: integer / scale."""
        out = {}
        for node, q in self.layers.items():
            out[f"{node}.weight"] = q.weight / q.scale
            if q.bias is not None:
                out[f"{node}.bias"] = q.bias / q.scale / self._bias_unit(q)
        return out

    def _bias_unit(self, q: QuantizedLayer) -> float:
        return float(2 ** LOIHI_ACT_SHIFT) if self.target == "loihi" else 1.0

    def simulate(self, spikes: np.ndarray) -> dict[str, np.ndarray]:
        """Run the integer network on an input spike train.

        Args:
            spikes: [T, B, *input shape] of 0/1 (saec's encoded input).
        Returns:
            Per spiking layer (spec layer name) its spike train [T, B, ...] as uint8, and
            ``"<layer>:v"`` the output layer's membrane [T, B, ...] (int64, chip units).
        """
        walk = _Simulation(self, spikes.shape[0], spikes.shape[1], spikes, list(self.graph.nodes(ops.LIF))[-1])
        values: dict[str, np.ndarray | None] = {}
        for name in self.graph.order():
            op = self.graph.op(name)
            ins = self.graph.inputs(name)
            try:
                step = INTEGER_SIMULATION.lookup(op, node=name)
            except UnsupportedOp as exc:
                raise UserError(exc.message, path=name) from None
            values[name] = step(walk, name, op, values[ins[0]] if ins else None)
        return walk.out

    def reconstruct(self, spikes: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Simulate, then read the reconstruction out on the host as saec's readout does.

        The readout (paper Eq. 8) takes the output layer's cumulative potential U, which no chip
        keeps: it is computed here in float64 from the chip's integer input current of the output
        layer, I = a_in / scale (+ bias), and the chip's decay: U(t) = decay (U(t-1) + I(t)).

        Args:
            spikes: [T, B, *input shape] of 0/1.
        Returns:
            (the simulation's result, see :meth:`simulate`; x_hat [B, *input shape] float64).
        Raises:
            UserError: the output layer integrates its potential (``integrate: potential``) or the
                graph has no max-cumulative readout.
        """
        sim = self.simulate(spikes)
        readouts = list(self.graph.nodes(ops.MaxCumulativeReadout))
        last_lif = list(self.graph.nodes(ops.LIF))[-1]
        op = self.graph.op(last_lif)
        if not readouts:
            raise UserError("the graph has no max_cumulative_potential readout to reconstruct with", path="readout")
        if op.integrate != "current":
            raise UserError("the quantised readout supports integrate: current only (U sums the input current)",
                            path="neuron.integrate")
        q = next(layer for layer in self.layers.values() if layer.neuron == last_lif)
        current = sim[f"{self.graph.meta(last_lif)['layer']}:current"] / q.scale
        if q.bias is not None:
            current = current + (q.bias / q.scale / self._bias_unit(q)).reshape((-1,) + (1,) * (current.ndim - 3))
        readout = self.graph.op(readouts[0])
        cumulative = np.zeros(current.shape[1:])
        history = []
        for t in range(current.shape[0]):
            cumulative = q.decay * (cumulative + current[t])
            history.append(cumulative)
        window = np.stack(history)[max(readout.t_min, 1) - 1:]
        peak = window.max(axis=0)
        if readout.t_min == 0:
            peak = np.maximum(peak, 0.0)
        divisor = readout.divisor(current.shape[0])
        # the output layer may be flat ahead of an unflatten: x_hat has the network output's shape
        (output,) = self.graph.nodes(ops.Output)
        return sim, (peak / divisor).reshape(peak.shape[0], *self.graph.meta(output)["shape"])


# ---------------------------------------------------------------- integer synapses
@dataclass
class _Simulation:
    """One run of :meth:`QuantizedNetwork.simulate`: what each op's step reads and writes."""

    network: "QuantizedNetwork"
    t_steps: int
    batch: int
    spikes: np.ndarray  # the input spike train [T, B, ...]
    last_lif: str  # the output layer's neurons (their membrane and input current are kept)
    out: dict[str, np.ndarray] = field(default_factory=dict)

    def shaped(self, name: str, y: np.ndarray) -> np.ndarray:
        """``y`` as [T, B, *shape of node ``name``]."""
        return y.reshape(self.t_steps, self.batch, *self.network.graph.meta(name)["shape"])

    def rows(self, h: np.ndarray) -> np.ndarray:
        """[T, B, ...] as [T*B, ...]."""
        return h.reshape(self.t_steps * self.batch, *h.shape[2:])


#: op -> fn(simulation, node, op, input values [T, B, ...] int64) -> output values: the integer network.
INTEGER_SIMULATION: OpTable[Callable[[_Simulation, str, ops.Op, np.ndarray | None], np.ndarray | None]] = \
    OpTable("integer simulation")
INTEGER_SIMULATION.refuse((ops.ReLU, ops.Reparameterize), "chips run spiking (LIF) networks only")
INTEGER_SIMULATION.refuse(ops.LeakyIntegrator, "the quantisers map LIF neurons only; a non-spiking leaky "
                                               "integrator has no chip neuron here")


@INTEGER_SIMULATION.register(ops.Input)
def _sim_input(sim: _Simulation, name: str, op: ops.Input, h: None) -> None:
    return None  # the encoder's spike train is the chip's input


@INTEGER_SIMULATION.register(ops.PoissonEncode)
def _sim_encode(sim: _Simulation, name: str, op: ops.PoissonEncode, h: None) -> np.ndarray:
    return np.asarray(sim.spikes, dtype=np.int64)


@INTEGER_SIMULATION.register(ops.Linear)
def _sim_linear(sim: _Simulation, name: str, op: ops.Linear, h: np.ndarray) -> np.ndarray:
    return sim.shaped(name, _exact(sim.rows(h), sim.network.layers[name].weight, lambda x, w: x @ w.T))


@INTEGER_SIMULATION.register(ops.Conv2d)
def _sim_conv2d(sim: _Simulation, name: str, op: ops.Conv2d, h: np.ndarray) -> np.ndarray:
    return sim.shaped(name, _exact(sim.rows(h), sim.network.layers[name].weight,
                                   lambda x, w: _integer_conv2d(op, w, x)))


@INTEGER_SIMULATION.register(ops.ConvTranspose2d)
def _sim_conv_transpose2d(sim: _Simulation, name: str, op: ops.ConvTranspose2d, h: np.ndarray) -> np.ndarray:
    return sim.shaped(name, _exact(sim.rows(h), sim.network.layers[name].weight,
                                   lambda x, w: _integer_conv_transpose2d(op, w, x)))


@INTEGER_SIMULATION.register(ops.Flatten, ops.Unflatten)
def _sim_reshape(sim: _Simulation, name: str, op: ops.Op, h: np.ndarray) -> np.ndarray:
    return sim.shaped(name, h)


@INTEGER_SIMULATION.register(ops.SumPool2d)
def _sim_sum_pool2d(sim: _Simulation, name: str, op: ops.SumPool2d, h: np.ndarray) -> np.ndarray:
    return sim.shaped(name, _sum_pool(sim.rows(h), op))


@INTEGER_SIMULATION.register(ops.LIF)
def _sim_lif(sim: _Simulation, name: str, op: ops.LIF, h: np.ndarray) -> np.ndarray:
    net = sim.network
    q = next(layer for layer in net.layers.values() if layer.neuron == name)
    v = np.zeros(h.shape[1:], dtype=np.int64)
    trains, potentials = [], []
    for t in range(sim.t_steps):
        v, fired = net.step(v, h[t], q)
        trains.append(fired)
        potentials.append(v.copy())
    y = np.stack(trains).astype(np.int64)
    layer = net.graph.meta(name)["layer"]
    sim.out[layer] = y.astype(np.uint8)
    if name == sim.last_lif:
        sim.out[f"{layer}:v"] = np.stack(potentials)
        sim.out[f"{layer}:current"] = h  # the chip's integer input current a_in, [T, B, ...]
    return y


@INTEGER_SIMULATION.register(ops.MaxCumulativeReadout, ops.Output)
def _sim_host(sim: _Simulation, name: str, op: ops.Op, h: np.ndarray) -> np.ndarray:
    return h  # the readout runs on the host (see reconstruct)


def _exact(x: np.ndarray, weight: np.ndarray, synapse: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """An integer synapse of int64 x and weight, computed in float64 and returned as int64.

    BLAS multiplies float64 an order of magnitude faster than numpy's int64 loops, and exactly here:
    inputs are spike counts (at most a pooling window's size or Xylo's 31), weights 8 or 9 bits, so
    every partial sum is an integer far below 2**53.
    """
    return np.rint(synapse(x.astype(np.float64), weight.astype(np.float64))).astype(np.int64)


def _integer_conv2d(op: ops.Conv2d, weight: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Exact integer convolution of x [N, C, H, W] (int64)."""
    (ph, pw), (sh, sw) = op.padding, op.stride
    kh, kw = weight.shape[2:]
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    windows = sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]  # [N, C, Ho, Wo, kh, kw]
    return np.tensordot(windows, weight, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)


def _integer_conv_transpose2d(op: ops.ConvTranspose2d, weight: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Exact integer transposed convolution of x [N, C, H, W] (int64)."""
    # transposed conv: every input position adds the kernel, scaled, at stride steps; then crop the padding
    (ph, pw), (sh, sw), (oph, opw) = op.padding, op.stride, op.output_padding
    n, _, h, w = x.shape
    kh, kw = weight.shape[2:]
    full = np.zeros((n, weight.shape[1], (h - 1) * sh + kh + oph, (w - 1) * sw + kw + opw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            full[:, :, i:i + (h - 1) * sh + 1:sh, j:j + (w - 1) * sw + 1:sw] += np.tensordot(
                x, weight[:, :, i, j], axes=([1], [0])).transpose(0, 3, 1, 2)
    out_h, out_w = (h - 1) * sh - 2 * ph + kh + oph, (w - 1) * sw - 2 * pw + kw + opw
    return full[:, :, ph:ph + out_h, pw:pw + out_w]


def _sum_pool(x: np.ndarray, op: ops.SumPool2d) -> np.ndarray:
    (ph, pw), (sh, sw), (kh, kw) = op.padding, op.stride, op.kernel_size
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    return sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw].sum(axis=(4, 5))


# ---------------------------------------------------------------- neuron arithmetic
def loihi_decay(x: np.ndarray, decay_register: int) -> np.ndarray:
    """x * (4096 - d) / 4096 rounded toward zero, as lava's fixed-point model decays u and v."""
    product = x.astype(np.int64) * ((1 << LOIHI_DECAY_SHIFT) - decay_register)
    return np.sign(product) * (np.abs(product) >> LOIHI_DECAY_SHIFT)


def loihi_cuba_step(v: np.ndarray, a_in: np.ndarray, q: QuantizedLayer) -> tuple[np.ndarray, np.ndarray]:
    """One step of lava's PyLifModelBitAcc with du = 4096 (u is this step's input), as saec's LIF maps.

    u = a_in << 6 (wrapped to 24 bits); v = decay(v) + u + bias, clipped to +-(2**23 - 1);
    spike where v > vth << 6; spiking neurons reset to 0.
    """
    u = a_in.astype(np.int64) << LOIHI_ACT_SHIFT
    # lava's 24-bit wrap, written as lava writes it (its second test reads the unwrapped value)
    wrapped = np.where(u > LOIHI_UV_LIMIT, u - 2 * LOIHI_UV_LIMIT, u)
    u = np.where(wrapped <= -LOIHI_UV_LIMIT, u + 2 * LOIHI_UV_LIMIT, wrapped)
    v = loihi_decay(v, q.decay_register) + u
    if q.bias is not None:
        v = v + q.bias.reshape((-1,) + (1,) * (v.ndim - 2))
    v = np.clip(v, -LOIHI_UV_LIMIT + 1, LOIHI_UV_LIMIT - 1)
    fired = v >= q.spike_at
    return np.where(fired, 0, v), fired


def speck_iaf_step(v: np.ndarray, a_in: np.ndarray, q: QuantizedLayer) -> tuple[np.ndarray, np.ndarray]:
    """One step of a DYNAP-CNN integrate-and-fire neuron: v += a_in (+ bias); one spike where
    v >= threshold; reset to zero or by subtraction; v clamped at -2**15 (min_v_mem) and kept in 16 bits."""
    v = v + a_in.astype(np.int64)
    if q.bias is not None:
        v = v + q.bias.reshape((-1,) + (1,) * (v.ndim - 2))
    fired = v >= q.spike_at
    v = np.where(fired, 0 if q.reset == "zero" else v - q.spike_at, v)
    return np.clip(v, -SPECK_STATE_LIMIT, SPECK_STATE_LIMIT - 1), fired


# ---------------------------------------------------------------- Xylo (XyloSim)
#: xylosim 0.1.3 src/v2/cpp/XyloIAFNeuron.h: 16-bit state, 8-bit weights; spikes per step and neuron:
#: at most 15 per input channel, 31 per hidden neuron, 1 per output neuron.
XYLO_STATE_BITS = 16
XYLO_WEIGHT_MAX = 2 ** 7 - 1
XYLO_THRESHOLD_MAX = 2 ** 15 - 1
XYLO_MAX_INPUT_SPIKES = 15
XYLO_MAX_HIDDEN_SPIKES = 31
XYLO_MAX_OUTPUT_SPIKES = 1
#: the shortest synaptic decay Xylo has: isyn -= isyn >> 1 (dash_syn 0 would clear every input)
XYLO_DASH_SYN = 1


def xylo_decay(x: np.ndarray, dash: int) -> np.ndarray:
    """xylosim's bit-shift decay step: dv = x >> dash, at least 1 LSB toward zero (XyloIAFNeuron.cpp: decay)."""
    dv = x >> dash
    return np.where((dv == 0) & (x != 0), np.sign(x), dv)


def _saturate(x: np.ndarray) -> np.ndarray:
    limit = 1 << (XYLO_STATE_BITS - 1)
    return np.clip(x, -limit, limit - 1)


class XyloNetwork(QuantizedNetwork):
    """A network in Xylo's integers, simulated as XyloSim (xylosim 0.1.3 XyloLayer.cpp) computes it.

    Per step: input spikes (at most 15 per channel) reach the first layer in the same step; every
    later layer receives the spikes its source layer emitted one step earlier (Xylo delivers
    hidden-neuron spikes through its recurrent and readout weights in the next step). Each neuron
    (XyloIAFNeuron::evolve): isyn += weight x spikes (saturating 16 bits), isyn -= decay(isyn,
    dash_syn), v += isyn - decay(v, dash_mem) (+ bias), then while v >= threshold and fewer than the
    layer's maximum: one more spike, v -= threshold. Hidden neurons may spike up to 31 times a step,
    output neurons once. Per-neuron scales (rockpool's channel_quantize) make ``scale`` and
    ``threshold`` arrays over a layer's neurons.
    """

    def dequantized_weights(self) -> dict[str, np.ndarray]:
        return {f"{node}.weight": q.weight / np.asarray(q.scale, dtype=np.float64)[:, None]
                for node, q in self.layers.items()}

    def simulate(self, spikes: np.ndarray) -> dict[str, np.ndarray]:
        """See :meth:`QuantizedNetwork.simulate`; spike trains are counts per step (uint8), and
        ``"<output layer>:current"`` is the output layer's synaptic current isyn [T, B, neurons]."""
        t_steps, batch = spikes.shape[:2]
        order = [(node, q) for node, q in self.layers.items()]
        out: dict[str, np.ndarray] = {}
        source = np.minimum(np.asarray(spikes, dtype=np.int64).reshape(t_steps, batch, -1), XYLO_MAX_INPUT_SPIKES)
        for index, (node, q) in enumerate(order):
            if index > 0:  # one step of delay between neuron layers
                source = np.concatenate([np.zeros_like(source[:1]), source[:-1]])
            last = index == len(order) - 1
            a_in = np.rint(source.astype(np.float64) @ q.weight.T.astype(np.float64)).astype(np.int64)
            isyn = np.zeros((batch, q.weight.shape[0]), dtype=np.int64)
            v = np.zeros_like(isyn)
            threshold = np.asarray(q.threshold, dtype=np.int64)
            most = XYLO_MAX_OUTPUT_SPIKES if last else XYLO_MAX_HIDDEN_SPIKES
            trains, currents = [], []
            for t in range(t_steps):
                isyn = _saturate(isyn + a_in[t])
                isyn = isyn - xylo_decay(isyn, q.synapse_register)
                dv = _saturate(isyn - xylo_decay(v, q.decay_register)
                               + (q.bias if q.bias is not None else 0))
                v = _saturate(v + dv)
                # while v >= th: one more spike, v -= th (thresholds are positive here)
                count = np.where(v >= threshold, np.minimum((v - threshold) // np.maximum(threshold, 1) + 1, most), 0)
                v = v - count * threshold
                trains.append(count)
                currents.append(isyn.copy())
            train = np.stack(trains)
            layer = self.graph.meta(q.neuron)["layer"]
            shape = tuple(self.graph.meta(q.neuron)["shape"])
            out[layer] = train.reshape(t_steps, batch, *shape).astype(np.uint8)
            if last:
                out[f"{layer}:current"] = np.stack(currents)
            source = train
        return out


# ---------------------------------------------------------------- quantisers
def _power_of_two_scale(largest: float, limit: int) -> float:
    """The largest 2**k with largest * 2**k <= limit (1 when everything is 0)."""
    if largest <= 0:
        return 1.0
    return 2.0 ** math.floor(math.log2(limit / largest))


def _spiking_layers(graph: IRGraph) -> list[tuple[str, str]]:
    """(synapse node, LIF node) of every spiking layer, in order."""
    pairs = []
    for lif in graph.nodes(ops.LIF):
        src = graph.inputs(lif)[0]
        pairs.append((src, lif))
    return pairs


def loihi_scale(largest_weight: float, threshold: float) -> float:
    """Integer units per unit of saec's membrane for one Loihi layer: the largest power of two that keeps
    the layer's largest weight magnitude within [-256, 254] and its threshold within vth's 17 bits.

    The one rule both :func:`quantize_loihi` and quantisation-aware training (saec.runtime.qat) use.
    """
    # tiny weights would want a scale that pushes the threshold past vth's 17 bits: the threshold wins
    return min(_power_of_two_scale(largest_weight, LOIHI_WEIGHT_RANGE[1]),
               _power_of_two_scale(threshold, LOIHI_VTH_MAX))


def quantize_loihi(graph: IRGraph, weights: dict[str, np.ndarray], profile: Profile) -> QuantizedNetwork:
    """Loihi's formats: even 8-bit weights, vth mantissa (used << 6), dv = round(4096 (1 - decay)).

    One power-of-two scale per layer maps saec's membrane to the chip's integers: the
    largest that keeps every weight in [-256, 254] and the threshold in vth's 17 bits. The
    weight exponent stays 0: a power-of-two scale shared by weights and threshold is what
    an exponent would express. Weights round to the nearest even integer; the threshold
    rounds to the mantissa; the decay becomes the chip's (dv = round(4096 (1 - decay))).
    """
    layers = {}
    for node, lif in _spiking_layers(graph):
        op = graph.op(lif)
        w = np.asarray(weights[f"{node}.weight"], dtype=np.float64)
        scale = loihi_scale(float(np.abs(w).max()), op.threshold)
        w_int = (2 * np.round(w * scale / 2)).astype(np.int64)
        w_int = np.clip(w_int, *LOIHI_WEIGHT_RANGE)
        vth = int(round(op.threshold * scale))
        decay, _ = chip_decay(op.decay, profile)
        dv = round((1 << LOIHI_DECAY_SHIFT) * (1 - op.decay))
        bias = None
        if f"{node}.bias" in weights:
            # lava adds bias_mant << bias_exp to v, and netx fixes bias_exp = 6 (lava-dl 0.6.0
            # netx/hdf5.py): the mantissa is in the input's unit, kept here as the value v receives
            mantissa = np.clip(np.round(np.asarray(weights[f"{node}.bias"], dtype=np.float64) * scale),
                               *LOIHI_BIAS_MANT).astype(np.int64)
            bias = mantissa << LOIHI_ACT_SHIFT
        # v > vth << 6: the first value that spikes is (vth << 6) + 1
        layers[node] = QuantizedLayer(node=node, neuron=lif, weight=w_int, bias=bias, scale=scale, threshold=vth,
                                      decay=decay, decay_register=dv, reset=op.reset,
                                      spike_at=(vth << LOIHI_VTH_SHIFT) + 1, float_threshold=vth / scale)
    return QuantizedNetwork("loihi", graph, layers, loihi_cuba_step,
                            notes=["u decays fully each step: du register 4095, plus lava's ds_offset 1 = 4096 "
                                   "(saec's current is the step's input)"])


def speck_scale(largest_weight: float, threshold: float) -> float:
    """Integer units per unit of saec's membrane for one DYNAP-CNN layer: the largest power of two that
    keeps the layer's largest weight within 8 bits and its threshold within the 16-bit state.

    The one rule both :func:`quantize_speck` and quantisation-aware training (saec.runtime.qat) use.
    """
    return min(_power_of_two_scale(largest_weight, SPECK_WEIGHT_MAX),
               _power_of_two_scale(threshold, SPECK_STATE_LIMIT - 2))


def quantize_speck(graph: IRGraph, weights: dict[str, np.ndarray], profile: Profile) -> QuantizedNetwork:
    """DYNAP-CNN's formats: 8-bit weights and bias, 16-bit threshold, one power-of-two scale per layer.

    sinabs' own discretisation (discretize.py) picks the largest real scale that fits; a power
    of two loses at most one bit and keeps dyadic networks exact.
    """
    layers = {}
    for node, lif in _spiking_layers(graph):
        op = graph.op(lif)
        w = np.asarray(weights[f"{node}.weight"], dtype=np.float64)
        scale = speck_scale(float(np.abs(w).max()), op.threshold)
        threshold = int(round(op.threshold * scale))
        bias = None
        if f"{node}.bias" in weights:
            bias = np.clip(np.round(np.asarray(weights[f"{node}.bias"]) * scale), -128, 127).astype(np.int64)
        # saec's u > th on integers is u >= th + 1 (the fit check allows it with reset to zero only: the
        # chip subtracts its threshold register); u >= th stays as it is
        spike_at = threshold + 1 if op.spike_when == "gt" else threshold
        layers[node] = QuantizedLayer(node=node, neuron=lif, weight=np.round(w * scale).astype(np.int64),
                                      bias=bias, scale=scale, threshold=spike_at, decay=1.0, decay_register=None,
                                      reset=op.reset, spike_at=spike_at, float_threshold=threshold / scale)
    return QuantizedNetwork("speck", graph, layers, speck_iaf_step,
                            notes=["one spike per neuron and step (saec's semantics; sinabs' default IAF "
                                   "MultiSpike can emit several)"])


def quantize_xylo(graph: IRGraph, weights: dict[str, np.ndarray], profile: Profile) -> QuantizedNetwork:
    """Xylo's formats, as rockpool's ``channel_quantize`` (rockpool 3.1.0 transform/quantize_methods.py) makes them.

    Per neuron (an output row of the weight matrix) one real scale, 127 / max |w| of its weights, or
    (2**15 - 1) / threshold when the threshold would not fit 16 bits; weights and threshold are
    ``np.round``-ed at that scale. The same arithmetic (float64 products of the float32 weights,
    round half to even) gives the integers rockpool writes for the NIR file saec exports for Xylo, so
    XyloSim runs exactly these. The decay becomes dash_mem (v -= v >> dash_mem, the chip's decay
    1 - 2**-dash_mem); the synaptic current gets Xylo's shortest decay, dash_syn = 1.
    """
    layers = {}
    for node, lif in _spiking_layers(graph):
        op = graph.op(lif)
        if f"{node}.bias" in weights:
            raise UserError("Xylo takes no weight biases (rockpool 3.1.0 xylo_mapper.py: weight_nodes_have_no_biases); "
                            "set bias: false", path=f"layers.{graph.meta(node)['layer']}.bias")
        w = np.asarray(weights[f"{node}.weight"], dtype=np.float32).astype(np.float64)
        largest = np.abs(w).max(axis=1)
        scale = np.where(largest > 0, XYLO_WEIGHT_MAX / np.where(largest > 0, largest, 1.0), 1.0)
        threshold = float(np.float32(op.threshold))
        th_int = np.round(threshold * scale)
        too_big = (np.abs(th_int) > XYLO_THRESHOLD_MAX) & (largest > 0)
        scale = np.where(too_big, XYLO_THRESHOLD_MAX / threshold, scale)
        th_int = np.round(threshold * scale).astype(np.int64)
        w_int = np.round(w * scale[:, None]).astype(np.int64)
        decay, how = chip_decay(op.decay, profile)
        dash_mem = int(how.split("=")[1])
        layers[node] = QuantizedLayer(node=node, neuron=lif, weight=w_int, bias=None, scale=scale, threshold=th_int,
                                      decay=decay, decay_register=dash_mem, reset=op.reset, spike_at=th_int,
                                      float_threshold=op.threshold, synapse_register=XYLO_DASH_SYN)
    return XyloNetwork("xylo", graph, layers, step=None,
                       notes=["synaptic current with decay 1/2 per step (dash_syn 1, Xylo's shortest): each step's "
                              "input reaches the membrane spread over the following steps, its sum preserved",
                              "one step of delay between neuron layers; hidden neurons spike up to 31 times a step"])


QUANTIZERS: dict[str, Callable[[IRGraph, dict[str, np.ndarray], Profile], QuantizedNetwork]] = {
    "loihi_cuba": quantize_loihi,
    "dynapcnn_iaf": quantize_speck,
    "xylo_iaf": quantize_xylo,
}


def quantize(graph: IRGraph, weights: dict[str, np.ndarray], profile: Profile) -> QuantizedNetwork:
    """Quantise a compiled, trained network for ``profile``'s chip.

    Args:
        graph: the IR graph after the ``compile`` flow.
        weights: float arrays keyed ``<node>.weight`` / ``<node>.bias`` (the IR state dict).
        profile: the target; it must name a quantiser, and the graph must fit it.
    Returns:
        The quantised network (integers per layer, and its integer simulation).
    Raises:
        UserError: no quantiser for the target, or the network does not fit it (the first
            problem of the fit report, naming the layer).
    """
    quantizer = QUANTIZERS.get(profile.quantizer or "")
    if quantizer is None:
        raise UserError(f"no quantiser for target {profile.name!r} yet (quantisers: {', '.join(QUANTIZERS)})",
                        path="--target")
    report = check_fit(graph, profile)
    if report.violations:
        first = report.violations[0]
        layer = graph.meta(first.node).get("layer", first.node)
        raise UserError(f"does not fit {profile.name}: {first.message}"
                        + (f" (and {more} more problem{'s' if more > 1 else ''})" if (more := len(report.violations) - 1)
                           else ""),
                        path=f"layers.{layer}")
    return quantizer(graph, weights, profile)
