"""Export a trained run to ONNX: the network unrolled over its T time steps.

The only module of saec that imports ``onnx`` and ``onnxruntime``.

The ONNX graph is emitted straight from the IR and the run's weights (no
tracing): one lowering per IR op type (:data:`_LOWERINGS`). Execution is
layer-wise like the runtime's: a conv or linear runs once on all T*B slices,
then the LIF recurrence is unrolled over T with the runtime's floating-point
operations in the runtime's order (:func:`saec.runtime.lif.lif_scan`)::

    u      = decay * u' + I              (t = 1: u = I, since u'(0) = 0)
    v      = floor_value if u < lower_bound else u     (clamp_first only)
    phi    = v > threshold   (>= for spike_when="ge")
    u'     = 0 | v - threshold | v       (reset zero | subtract | none), where phi
    u'     = floor_value where u < lower_bound and not phi   (floor after the test)
    U      = decay * (U + I)  |  decay * U + u               (current | potential)

Every rounding step (``decay * x`` and ``+``) is the same float32 operation
in both, and every other step (select, compare) is exact. The matrix
products (Conv, ConvTranspose, Gemm) are where onnxruntime and PyTorch may
differ in the last bits (different summation order), so a potential that
lands within an ulp of the threshold can spike in one and not the other;
:func:`compare_with_runtime` counts such disagreements.

Graph interface (``T`` fixed, batch dimension ``batch`` symbolic unless fixed):

- SAE: input ``spikes`` float [T, batch, C, H, W] (the encoded input train);
  outputs ``x_hat`` [batch, C, H, W], and for every spiking layer its spike
  train ``spikes.<layer>`` [T, batch, *shape] (0/1) and ``counts.<layer>``
  [batch, *shape] (spikes over the T steps).
- AE / VAE (T = 1, no encoding; the VAE in eval mode: z = mu): input ``x``
  [batch, C, H, W]; outputs ``x_hat``, ``activations.<layer>`` for every
  ReLU layer and, for the VAE, ``mu`` and ``logvar``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from saec import __version__
from saec.atomicwrite import write_atomically
from saec.compiler import ops
from saec.compiler.dispatch import OpTable
from saec.compiler.graph import IRGraph
from saec.errors import UserError

#: ONNX opset the graph is written for (Split with ``num_outputs`` needs 18).
OPSET = 18
#: ONNX IR version written: the oldest that carries opset 18 (ONNX 1.13). onnx's
#: helper would stamp its own newest one, which older onnxruntime builds refuse
#: ("Unsupported model IR version: 14, max supported IR version: 13" with ORT 1.30).
IR_VERSION = 8
MODEL_FILE = "model.onnx"
SPIKES_INPUT = "spikes"
IMAGE_INPUT = "x"
RECONSTRUCTION_OUTPUT = "x_hat"


def counts_output(layer: str) -> str:
    """Name of the graph output holding a spiking layer's spike counts."""
    return f"counts.{layer}"


def train_output(layer: str) -> str:
    """Name of the graph output holding a spiking layer's spike train [T, batch, *shape]."""
    return f"spikes.{layer}"


def activations_output(layer: str) -> str:
    """Name of the graph output holding a ReLU layer's activations (AE / VAE)."""
    return f"activations.{layer}"


# ---------------------------------------------------------------- emission
class _Emitter:
    """Collects nodes and initializers; hands out unique value names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._used: set[str] = set()
        self._scalars: dict[tuple[str, float], str] = {}

    def reserve(self, name: str) -> str:
        """Claim an exact name (a graph input)."""
        if name in self._used:
            raise ValueError(f"ONNX value name {name!r} used twice")
        self._used.add(name)
        return name

    def fresh(self, hint: str) -> str:
        name, i = hint, 1
        while name in self._used:
            i += 1
            name = f"{hint}_{i}"
        self._used.add(name)
        return name

    def constant(self, hint: str, array: np.ndarray) -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def scalar(self, value: float, dtype: type = np.float32) -> str:
        """A rank-0 constant, shared by every node that uses the same value."""
        key = (np.dtype(dtype).name, float(value))
        if key not in self._scalars:
            self._scalars[key] = self.constant(f"c_{key[0]}_{value:g}", np.array(value, dtype=dtype))
        return self._scalars[key]

    def shape(self, hint: str, dims: tuple[int, ...]) -> str:
        return self.constant(hint, np.array(dims, dtype=np.int64))

    def node(self, op_type: str, inputs: list[str], hint: str, *, outputs: int = 1,
             name: str | None = None, **attrs) -> str | list[str]:
        """Add one node; returns its output name (a list when ``outputs > 1``).

        ``name`` fixes the (single) output's name, e.g. for a graph output.
        """
        if name is not None:
            outs = [self.reserve(name)]
        else:
            outs = [self.fresh(f"{hint}:{i}" if outputs > 1 else hint) for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh(f"{hint}/{op_type}"), **attrs))
        return outs if outputs > 1 else outs[0]


@dataclass
class _Lowering:
    """State of one IR -> ONNX lowering."""

    graph: IRGraph
    weights: dict[str, np.ndarray]
    timesteps: int
    emit: _Emitter
    #: ONNX value of every lowered IR node, time-major [T, batch, ...]
    values: dict[str, str]
    #: cumulative potential U(1..T) [T, batch, ...] of LIF nodes feeding a readout
    cumulative: dict[str, str]
    #: graph inputs and outputs: (name, per-example shape[, leading dims before the batch])
    inputs: list[tuple[str, tuple[int, ...], tuple[int | str, ...]]]
    outputs: list[tuple]


def _shape(lo: _Lowering, node: str) -> tuple[int, ...]:
    return tuple(lo.graph.meta(node)["shape"])


def _pair_pads(padding: tuple[int, int]) -> list[int]:
    return [padding[0], padding[1], padding[0], padding[1]]


def _lower_input(lo: _Lowering, name: str, op: ops.Input, h: str | None) -> str | None:
    if lo.graph.attrs.get("kind", "sae") == "sae":
        return None  # the encoded spike train is the graph input (see _lower_encode)
    lo.inputs.append((IMAGE_INPUT, tuple(op.shape), ()))
    return lo.emit.node("Unsqueeze", [lo.emit.reserve(IMAGE_INPUT), lo.emit.shape("axis0", (0,))], name)


def _lower_encode(lo: _Lowering, name: str, op: ops.PoissonEncode, h: str | None) -> str:
    # Encoding draws random numbers; the exported network takes the train itself.
    lo.inputs.append((SPIKES_INPUT, _shape(lo, name), (lo.timesteps,)))
    return lo.emit.reserve(SPIKES_INPUT)


def _synapse(lo: _Lowering, name: str, h: str, make: Callable[[list[str]], str]) -> str:
    """A synapse on all T*batch rows at once: flatten the lead axes, ``make`` the node from its args, restore."""
    emit = lo.emit
    in_shape = _shape(lo, lo.graph.inputs(name)[0])
    out_shape = _shape(lo, name)
    flat = emit.node("Reshape", [h, emit.shape(f"{name}.in_shape", (-1, *in_shape))], f"{name}.flat_in")
    weight = emit.constant(f"{name}.weight", lo.weights[f"{name}.weight"])
    args = [flat, weight]
    if f"{name}.bias" in lo.weights:
        args.append(emit.constant(f"{name}.bias", lo.weights[f"{name}.bias"]))
    y = make(args)
    return emit.node("Reshape", [y, emit.shape(f"{name}.out_shape", (lo.timesteps, -1, *out_shape))],
                     f"{name}.out")


def _lower_conv2d(lo: _Lowering, name: str, op: ops.Conv2d, h: str) -> str:
    return _synapse(lo, name, h, lambda args: lo.emit.node(
        "Conv", args, name, kernel_shape=list(op.kernel_size), strides=list(op.stride),
        pads=_pair_pads(op.padding), dilations=[1, 1], group=1))


def _lower_conv_transpose2d(lo: _Lowering, name: str, op: ops.ConvTranspose2d, h: str) -> str:
    return _synapse(lo, name, h, lambda args: lo.emit.node(
        "ConvTranspose", args, name, kernel_shape=list(op.kernel_size), strides=list(op.stride),
        pads=_pair_pads(op.padding), output_padding=list(op.output_padding), dilations=[1, 1], group=1))


def _lower_linear(lo: _Lowering, name: str, op: ops.Linear, h: str) -> str:
    return _synapse(lo, name, h, lambda args: lo.emit.node("Gemm", args, name, transB=1))


def _lower_reshape(lo: _Lowering, name: str, op: ops.Op, h: str) -> str:
    shape = (lo.timesteps, -1, *_shape(lo, name))  # values stay time-major [T, batch, ...]
    return lo.emit.node("Reshape", [h, lo.emit.shape(f"{name}.shape", shape)], name)


def _feeds_readout(lo: _Lowering, name: str) -> bool:
    return any(isinstance(lo.graph.op(u), ops.MaxCumulativeReadout) for u in lo.graph.users(name))


def _lower_lif(lo: _Lowering, name: str, op: ops.LIF, h: str) -> str:
    """The LIF recurrence, unrolled: one slice of the current per step."""
    emit, T = lo.emit, lo.timesteps
    layer = lo.graph.meta(name)["layer"]
    decay, thr = emit.scalar(op.decay), emit.scalar(op.threshold)
    floor = op.lower_bound is not None
    lb = emit.scalar(op.lower_bound) if floor else None
    fv = emit.scalar(op.floor_value) if floor else None
    spike_test = "GreaterOrEqual" if op.spike_when == "ge" else "Greater"
    keep_U = _feeds_readout(lo, name)
    currents = [h] if T == 1 else emit.node("Split", [h], f"{name}.I", outputs=T, axis=0, num_outputs=T)
    spikes, Us = [], []
    u_prev = U_prev = None
    for t, I_t in enumerate(currents):
        step = f"{name}.t{t + 1}"
        # u'(0) = 0 and 0 * decay + I == I exactly, so the first step is the current itself.
        u = I_t if u_prev is None else emit.node(
            "Add", [emit.node("Mul", [u_prev, decay], f"{step}.decayed"), I_t], f"{step}.u")
        if floor and op.clamp_first:
            below = emit.node("Less", [u, lb], f"{step}.below")
            v = emit.node("Where", [below, fv, u], f"{step}.v")
        else:
            v = u
        fired = emit.node(spike_test, [v, thr], f"{step}.fired")
        spikes.append(emit.node("Cast", [fired], f"{step}.spikes", to=TensorProto.FLOAT))
        if op.reset == "zero":
            nxt = emit.node("Where", [fired, emit.scalar(0.0), v], f"{step}.reset")
        elif op.reset == "subtract":
            nxt = emit.node("Where", [fired, emit.node("Sub", [v, thr], f"{step}.sub"), v], f"{step}.reset")
        else:
            nxt = v
        if floor and not op.clamp_first:
            below = emit.node("Less", [u, lb], f"{step}.below")
            if op.lower_bound > op.threshold:  # only then can a spike and the floor rule coincide
                below = emit.node("And", [below, emit.node("Not", [fired], f"{step}.silent")], f"{step}.floored")
            nxt = emit.node("Where", [below, fv, nxt], f"{step}.floor")
        u_prev = nxt
        if keep_U:
            if op.integrate == "potential":
                U = u if U_prev is None else emit.node(
                    "Add", [emit.node("Mul", [U_prev, decay], f"{step}.Udecayed"), u], f"{step}.U")
            else:
                summed = I_t if U_prev is None else emit.node("Add", [U_prev, I_t], f"{step}.UI")
                U = emit.node("Mul", [summed, decay], f"{step}.U")
            Us.append(U)
            U_prev = U
    if T == 1:
        train = emit.node("Identity", spikes, f"{name}.spikes", name=train_output(layer))
    else:
        train = emit.node("Concat", spikes, f"{name}.spikes", name=train_output(layer), axis=0)
    lo.outputs.append((train_output(layer), _shape(lo, name), (T,)))
    emit.node("ReduceSum", [train, emit.shape(f"{name}.time_axis", (0,))], f"{name}.counts",
              name=counts_output(layer), keepdims=0)
    lo.outputs.append((counts_output(layer), _shape(lo, name)))
    if keep_U:
        lo.cumulative[name] = Us[0] if T == 1 else emit.node("Concat", Us, f"{name}.U", axis=0)
    return train


def _lower_relu(lo: _Lowering, name: str, op: ops.ReLU, h: str) -> str:
    y = lo.emit.node("Relu", [h], name)
    layer = lo.graph.meta(name)["layer"]
    lo.emit.node("Squeeze", [y, lo.emit.shape(f"{name}.axis0", (0,))], f"{name}.act",
                 name=activations_output(layer))
    lo.outputs.append((activations_output(layer), _shape(lo, name)))
    return y


def _lower_reparameterize(lo: _Lowering, name: str, op: ops.Reparameterize, h: str) -> str:
    # Eval mode: z = mu (the sampling noise is a training-time device).
    emit = lo.emit
    mu, logvar = emit.node("Split", [h], name, outputs=2, axis=-1, num_outputs=2)
    axis0 = emit.shape(f"{name}.axis0", (0,))
    for value, out in ((mu, "mu"), (logvar, "logvar")):
        emit.node("Squeeze", [value, axis0], out, name=out)
        lo.outputs.append((out, (op.latent_features,)))
    return mu


def _lower_readout(lo: _Lowering, name: str, op: ops.MaxCumulativeReadout, h: str) -> str:
    emit, T = lo.emit, lo.timesteps
    if not 0 <= op.t_min <= T:
        raise UserError(f"readout t_min = {op.t_min} lies outside [0, T] = [0, {T}]", path="--timesteps")
    U_all = lo.cumulative[lo.graph.inputs(name)[0]]
    start = max(op.t_min, 1) - 1
    if start > 0:
        U_all = emit.node("Slice", [U_all, emit.shape(f"{name}.start", (start,)), emit.shape(f"{name}.end", (T,)),
                                    emit.shape(f"{name}.axis", (0,))], f"{name}.window")
    peak = emit.node("ReduceMax", [U_all, emit.shape(f"{name}.time_axis", (0,))], f"{name}.peak", keepdims=0)
    if op.t_min == 0:
        peak = emit.node("Relu", [peak], f"{name}.peak0")  # U(0) = 0 takes part in the max
    divisor = op.divisor(T)
    x_hat = emit.node("Div", [peak, emit.scalar(divisor)], f"{name}.x_hat")
    return emit.node("Unsqueeze", [x_hat, emit.shape(f"{name}.axis0", (0,))], name)


def _lower_output(lo: _Lowering, name: str, op: ops.Output, h: str) -> str:
    out = lo.emit.node("Squeeze", [h, lo.emit.shape(f"{name}.axis0", (0,))], name, name=RECONSTRUCTION_OUTPUT)
    lo.outputs.insert(0, (RECONSTRUCTION_OUTPUT, _shape(lo, name)))
    return out


#: IR op type -> fn(lowering state, node, op, input value name) -> output value name: one ONNX lowering each.
_LOWERINGS: OpTable[Callable[[_Lowering, str, ops.Op, str | None], str | None]] = OpTable("ONNX export")
for _op_type, _lower in {
    ops.Input: _lower_input,
    ops.PoissonEncode: _lower_encode,
    ops.Conv2d: _lower_conv2d,
    ops.ConvTranspose2d: _lower_conv_transpose2d,
    ops.Linear: _lower_linear,
    ops.Flatten: _lower_reshape,
    ops.Unflatten: _lower_reshape,
    ops.LIF: _lower_lif,
    ops.ReLU: _lower_relu,
    ops.Reparameterize: _lower_reparameterize,
    ops.MaxCumulativeReadout: _lower_readout,
    ops.Output: _lower_output,
}.items():
    _LOWERINGS.add(_op_type, _lower)
_LOWERINGS.refuse(ops.SumPool2d, "ONNX has no sum pooling and saec does not lower it yet (an average pool times "
                                 "the window would round differently from the runtime's sum)")
_LOWERINGS.refuse(ops.LeakyIntegrator, "the leaky integrator of NIR graphs is simulated by `saec simulate`, "
                                       "not exported")


def _value_info(name: str, shape: tuple[int | str, ...]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def build_onnx_model(graph: IRGraph, weights: dict[str, torch.Tensor | np.ndarray], *,
                     timesteps: int | None = None, batch: int | None = None) -> onnx.ModelProto:
    """The ONNX model of ``graph`` with ``weights``, unrolled over ``timesteps``.

    Args:
        graph: a compiled IR graph (shapes known).
        weights: float32 weights keyed ``<node>.weight`` / ``<node>.bias`` (IR state dict).
        timesteps: T to unroll over (SAE only; default: the graph's T). The readout
            divisor T*s follows it, as in the runtime.
        batch: a fixed batch size; None leaves the batch dimension symbolic (``batch``).

    Returns:
        The model (opset :data:`OPSET`), not yet checked or saved.

    Raises:
        UserError: an impossible T or batch, or an IR op without an ONNX lowering.
    """
    kind = graph.attrs.get("kind", "sae")
    T = int(graph.attrs.get("timesteps", 1)) if timesteps is None else int(timesteps)
    if kind != "sae" and T != 1:
        raise UserError(f"a {kind} network has no time steps; it exports with T = 1, not {T}", path="--timesteps")
    if T < 1:
        raise UserError(f"timesteps must be >= 1, got {T}", path="--timesteps")
    if batch is not None and batch < 1:
        raise UserError(f"batch must be >= 1, got {batch}", path="--batch")
    lo = _Lowering(graph=graph, timesteps=T, emit=_Emitter(), values={}, cumulative={}, inputs=[], outputs=[],
                   weights={k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
                            .astype(np.float32) for k, v in weights.items()})
    for name in graph.order():
        op = graph.op(name)
        reason = _LOWERINGS.refusal(op)
        if reason is not None:
            raise UserError(f"node `{name}`: ONNX export has no lowering for IR op {op.type!r}: {reason}")
        lower = _LOWERINGS.lookup(op, node=name)
        ins = graph.inputs(name)
        lo.values[name] = lower(lo, name, op, lo.values[ins[0]] if ins else None)
    b: int | str = "batch" if batch is None else batch
    onnx_graph = helper.make_graph(
        lo.emit.nodes, f"saec_{graph.attrs.get('name', 'model')}",
        inputs=[_value_info(n, (*lead, b, *shape)) for n, shape, lead in lo.inputs],
        outputs=[_value_info(o[0], (*(o[2] if len(o) > 2 else ()), b, *o[1])) for o in lo.outputs],
        initializer=lo.emit.initializers,
        doc_string=f"saec {kind} network unrolled over T={T} time steps (layer-wise); see saec.exporters.onnx",
    )
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="saec",
                              producer_version=__version__, ir_version=IR_VERSION)
    lifs = {graph.meta(n)["layer"]: ops.op_to_dict(graph.op(n)) for n in graph.nodes(ops.LIF)}
    helper.set_model_props(model, {
        "saec_version": __version__,
        "spec_sha256": str(graph.attrs.get("spec_sha256", "")),
        "name": str(graph.attrs.get("name", "")),
        "kind": kind,
        "timesteps": str(T),
        "neurons": json.dumps(lifs),
    })
    return model


# ---------------------------------------------------------------- writing
def write_model(model: onnx.ModelProto, path: Path) -> Path:
    """Save ``model`` to ``path`` atomically (temporary name in the same folder, then rename)."""
    return write_atomically(Path(path), lambda tmp: onnx.save_model(model, str(tmp)))


def check_model(model: onnx.ModelProto) -> None:
    """ONNX's own checker, in full (shapes and types included).

    Raises:
        UserError: the first problem ``onnx.checker.check_model(full_check=True)`` reports.
    """
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"the exported ONNX model fails onnx.checker: {first}") from None


# ---------------------------------------------------------------- verification
def run_onnx(model: onnx.ModelProto | str | Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run an exported model with onnxruntime (CPU, default graph optimisations).

    Args:
        model: the model or its file.
        feeds: input name -> float32 array.

    Returns:
        Every graph output by name.
    """
    import onnxruntime as ort

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: np.ascontiguousarray(v, dtype=np.float32)
                                               for k, v in feeds.items()})))


@dataclass(frozen=True)
class OnnxAgreement:
    """How closely onnxruntime reproduced the PyTorch runtime on one input.

    Relative errors are norm-wise, max |onnx - torch| / max |torch| (the
    infinity norm): entry-wise relative error is meaningless where the
    reference is (close to) zero, and these outputs are sums whose rounding
    error scales with the magnitude of their terms, not of their result.

    Attributes:
        train_mismatches: SAE: positions (t, example, neuron) of the whole spike train that
            differ, per layer (a spike moved in time counts twice).
        count_mismatches: SAE: entries (example, neuron) whose spike count differs, per layer.
        spikes: SAE: spikes per layer in the PyTorch run.
        neurons: entries compared per layer (batch * neurons).
        activation_rel_err: AE / VAE: norm-wise relative error of each ReLU layer's activations.
        x_hat_max_abs_err: max |x_hat_onnx - x_hat_torch|.
        x_hat_rel_err: norm-wise relative error of x_hat.
        x_hat_max_entry_rel_err: the largest entry-wise relative error over entries with
            |x_hat_torch| >= 1e-3 * max |x_hat_torch| (for the record).
    """

    train_mismatches: dict[str, int]
    count_mismatches: dict[str, int]
    spikes: dict[str, int]
    neurons: dict[str, int]
    activation_rel_err: dict[str, float]
    x_hat_max_abs_err: float
    x_hat_rel_err: float
    x_hat_max_entry_rel_err: float

    @property
    def spikes_exact(self) -> bool:
        """Every layer's whole spike train identical (not only the counts)."""
        return not any(self.train_mismatches.values()) and not any(self.count_mismatches.values())


def spike_train_mismatches(have: np.ndarray, want: np.ndarray) -> int:
    """Positions (t, example, neuron) where two spike trains [T, B, ...] differ (0/1 values).

    Raises:
        ValueError: the shapes differ.
    """
    have, want = np.asarray(have), np.asarray(want)
    if have.shape != want.shape:
        raise ValueError(f"spike trains of shapes {list(have.shape)} and {list(want.shape)} cannot be compared")
    return int(np.count_nonzero((have > 0) != (want > 0)))


def _normwise_rel_err(have: np.ndarray, want: np.ndarray) -> float:
    err = float(np.abs(have.astype(np.float64) - want.astype(np.float64)).max(initial=0.0))
    scale = float(np.abs(want).max(initial=0.0))
    return err / scale if scale > 0 else err


def compare_with_runtime(onnx_model: onnx.ModelProto | str | Path, model, inputs: torch.Tensor) -> OnnxAgreement:
    """Run the exported model and saec's runtime on the same input and compare.

    Args:
        onnx_model: the exported model (or its file).
        model: the :class:`~saec.runtime.model.SpikingAutoencoder` it was exported from
            (run in eval mode).
        inputs: SAE: the input spike train [T, B, C, H, W] (0/1 floats); AE / VAE:
            images [B, C, H, W].

    Returns:
        An :class:`OnnxAgreement`.
    """
    from saec.runtime.spikedriven import training_forward

    was_training = model.training
    model.eval()
    sae = model.kind == "sae"
    with torch.inference_mode(), training_forward(model):  # the training forward's numerics, spike for spike
        x = torch.zeros(inputs.shape[1:]) if sae else inputs
        record = {model.graph.meta(n)["layer"] for n in model.graph.nodes(ops.LIF)} if sae else frozenset()
        ref = model(x.float(), encoded=inputs.float() if sae else None, record=record)
    model.train(was_training)
    got = run_onnx(onnx_model, {SPIKES_INPUT if sae else IMAGE_INPUT: inputs.float().numpy()})
    trains, mismatches, spikes, neurons, act_err = {}, {}, {}, {}, {}
    for layer, want in ref.counts.items():
        want_np = want.float().numpy()
        neurons[layer] = int(want_np.size)
        if sae:
            trains[layer] = spike_train_mismatches(got[train_output(layer)], ref.trains[layer].float().numpy())
            mismatches[layer] = int(np.count_nonzero(got[counts_output(layer)] != want_np))
            spikes[layer] = int(want_np.sum())
        else:
            act_err[layer] = _normwise_rel_err(got[activations_output(layer)], want_np)
    have_x, want_x = got[RECONSTRUCTION_OUTPUT].astype(np.float64), ref.x_hat.double().numpy()
    err = np.abs(have_x - want_x)
    big = np.abs(want_x) >= 1e-3 * np.abs(want_x).max(initial=0.0)
    entry = float((err[big] / np.abs(want_x[big])).max()) if big.any() and want_x.any() else 0.0
    return OnnxAgreement(trains, mismatches, spikes, neurons, act_err, float(err.max(initial=0.0)),
                         _normwise_rel_err(have_x, want_x), entry)


def onnx_input_shape(graph: IRGraph, timesteps: int | None = None, batch: int = 1) -> tuple[int, ...]:
    """Shape of the exported model's input for ``batch`` examples."""
    (inp,) = graph.nodes(ops.Input)
    shape = tuple(graph.meta(inp)["shape"])
    if graph.attrs.get("kind", "sae") != "sae":
        return (batch, *shape)
    T = int(graph.attrs.get("timesteps", 1)) if timesteps is None else timesteps
    return (T, batch, *shape)


__all__ = [
    "OPSET", "IR_VERSION", "MODEL_FILE", "SPIKES_INPUT", "IMAGE_INPUT", "RECONSTRUCTION_OUTPUT", "OnnxAgreement",
    "activations_output", "build_onnx_model", "check_model", "compare_with_runtime", "counts_output",
    "onnx_input_shape", "run_onnx", "spike_train_mismatches", "train_output", "write_model",
]
