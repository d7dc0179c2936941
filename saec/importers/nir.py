"""NIR -> saec: read a NIR graph into saec's IR and simulate it (``saec simulate``).

saec as a reference simulator for NIR, which the ``nir`` package lacks. With
:mod:`saec.exporters.nir`, the only modules that import ``nir``.

Supported nodes (one input and one output; a chain or tree of single-input
nodes, no recurrence): Input, Output, LIF, LI, IF, Conv2d, Affine, Linear,
Flatten, SumPool2d. One table, :data:`NIR_IMPORT`, keyed by NIR node class,
handles each of them and refuses every other node class ``nir`` defines, with
the reason (``tests/compiler/test_dispatch.py`` checks it covers them all).
The unit conversions (decay <-> tau, gain <-> r) are those of
:mod:`saec.compiler.nir_units`. Time is discrete with step ``dt`` (the graph's
metadata ``dt`` when present, else :data:`saec.compiler.nir_units.DT`),
forward Euler; an op invariant a node's parameters break (a tau shorter than
dt gives decay < 0) is refused, naming the node:

- LIF ``tau dv/dt = (v_leak - v) + r I``: saec LIF with decay = 1 - dt/tau
  and, since v = (dt r / tau) u, threshold = v_threshold / (dt r / tau);
  strict ``>``, reset to 0, no floor. Needs v_leak = v_reset = 0 and one
  value per parameter across the layer.
- IF ``dv/dt = r I``: saec LIF with decay 1, threshold = v_threshold / (dt r).
- LI: :class:`saec.compiler.ops.LeakyIntegrator` (decay = 1 - dt/tau,
  gain = dt r / tau); its output is v.

A neuron node written by saec carries its op in metadata ``saec_op``; when
that op agrees with the NIR parameters (to 1e-9), its exact decay, threshold
and spike test are used, so saec -> NIR -> saec gives identical spikes. The
membrane floor is never taken from metadata: NIR has none, and this module
simulates NIR.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import nir
import numpy as np

from saec.atomicwrite import write_atomically
from saec.compiler import ops
from saec.compiler.dispatch import OpTable
from saec.compiler.errors import CompileError, InvalidOp
from saec.compiler.graph import IRGraph
from saec.compiler.nir_units import DT, decay_from_tau, gain_from_tau, if_gain, threshold_from_v
from saec.compiler.passes.shapes import fmt, infer_shapes
from saec.errors import UserError

#: Relative tolerance within which a node's ``saec_op`` metadata must agree with its NIR parameters.
METADATA_TOLERANCE = 1e-9
#: NIR names of the graph ends: what NIR consumers such as snn-mlir require (the exporter,
#: :mod:`saec.exporters.nir`, renames an inner node of the same name and records the mapping).
INPUT_NODE, OUTPUT_NODE = "input", "output"
#: The ends' names in files written by earlier saec versions (still read).
LEGACY_END_NAMES = {"_input": INPUT_NODE, "_output": OUTPUT_NODE}


def read_golden(path: str | Path) -> dict[str, np.ndarray]:
    """Spike trains of a golden file: node name -> bool [B, T, neurons].

    The ends are returned as ``input`` / ``output`` also from files that name them ``_input`` / ``_output``.
    """
    data = nir.read_data(str(path))
    trains = {name: node.observables["spikes"].data for name, node in data.nodes.items()}
    for old, new in LEGACY_END_NAMES.items():
        if old in trains and new not in trains:
            trains[new] = trains.pop(old)
    return trains


def read_nir(path: str | Path) -> nir.NIRGraph:
    """Read and type-check a ``.nir`` file.

    Raises:
        UserError: missing file, not an HDF5 NIR file, or a graph ``nir`` rejects.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("no such NIR file", file=str(path))
    try:
        return nir.read(path, type_check=True)
    except OSError as exc:  # h5py: not HDF5, truncated
        raise UserError(f"not a readable NIR file ({_first_line(exc)})", file=str(path)) from None
    except (KeyError, ValueError, TypeError, AssertionError, AttributeError, IndexError) as exc:
        raise UserError(f"not a valid NIR graph ({type(exc).__name__}: {_first_line(exc)})", file=str(path)) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------- parameters
def _uniform(name: str, field: str, value: Any) -> float:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        raise CompileError(f"parameter {field} is empty", node=name)
    first = float(arr.reshape(-1)[0])
    if not np.all(arr == first):
        raise CompileError(f"parameter {field} differs across neurons (from {arr.min():g} to {arr.max():g}); "
                           "saec's neurons take one value per layer", node=name)
    return first


def _require_zero(name: str, field: str, value: Any) -> None:
    if value is not None and np.any(np.asarray(value) != 0):
        raise CompileError(f"{field} must be 0 (saec's neurons rest and reset at 0), got "
                           f"{_uniform(name, field, value):g}", node=name)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=METADATA_TOLERANCE, abs_tol=METADATA_TOLERANCE)


def _saec_op(node: nir.NIRNode) -> ops.Op | None:
    raw = (node.metadata or {}).get("saec_op")
    if isinstance(raw, bytes):
        raw = raw.decode()
    if not isinstance(raw, str):
        return None
    try:
        return ops.op_from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError):
        return None


def _lif_op(name: str, node: nir.NIRNode, dt: float) -> ops.LIF:
    _require_zero(name, "v_leak", node.v_leak)
    _require_zero(name, "v_reset", node.v_reset)
    tau, r, thr = (_uniform(name, f, getattr(node, f)) for f in ("tau", "r", "v_threshold"))
    if tau <= 0:
        raise CompileError(f"tau must be > 0, got {tau:g}", node=name)
    decay, gain = decay_from_tau(tau, dt), gain_from_tau(tau, r, dt)
    if gain <= 0:
        raise CompileError(f"r must be > 0, got {r:g}", node=name)
    threshold = threshold_from_v(thr, gain)
    known = _saec_op(node)
    # The exporter writes float32 thresholds (and nextafter(threshold, 0) for ">="): agree to float32 precision.
    if isinstance(known, ops.LIF) and _close(known.decay, decay) and \
            math.isclose(known.threshold, threshold, rel_tol=1e-6):
        return ops.LIF(decay=known.decay, threshold=known.threshold, spike_when=known.spike_when,
                       reset="zero", lower_bound=None)
    with _step_too_long(name, tau, dt):
        return ops.LIF(decay=decay, threshold=threshold, spike_when="gt", reset="zero", lower_bound=None)


@contextmanager
def _step_too_long(name: str, tau: float, dt: float) -> Iterator[None]:
    """Locate an op invariant broken by a NIR neuron; say why when its tau is shorter than dt."""
    try:
        yield
    except InvalidOp as exc:
        exc.node = name
        if tau < dt:
            exc.add_context(f"decay = 1 - dt/tau < 0 because tau = {tau:g} s is shorter than the time step "
                            f"dt = {dt:g} s; forward Euler needs tau >= dt (simulate with a smaller --dt)")
        raise


def _if_op(name: str, node: nir.IF, dt: float) -> ops.LIF:
    _require_zero(name, "v_reset", node.v_reset)
    r, thr = _uniform(name, "r", node.r), _uniform(name, "v_threshold", node.v_threshold)
    if r <= 0:
        raise CompileError(f"r must be > 0, got {r:g}", node=name)
    threshold = threshold_from_v(thr, if_gain(r, dt))
    known = _saec_op(node)
    if isinstance(known, ops.LIF) and known.decay == 1.0 and math.isclose(known.threshold, threshold, rel_tol=1e-6):
        return ops.LIF(decay=1.0, threshold=known.threshold, spike_when=known.spike_when, reset="zero",
                       lower_bound=None)
    return ops.LIF(decay=1.0, threshold=threshold, spike_when="gt", reset="zero", lower_bound=None)


def _li_op(name: str, node: nir.LI, dt: float) -> ops.LeakyIntegrator:
    _require_zero(name, "v_leak", node.v_leak)
    tau, r = _uniform(name, "tau", node.tau), _uniform(name, "r", node.r)
    if tau <= 0:
        raise CompileError(f"tau must be > 0, got {tau:g}", node=name)
    with _step_too_long(name, tau, dt):
        return ops.LeakyIntegrator(decay=decay_from_tau(tau, dt), gain=gain_from_tau(tau, r, dt))


def _pair(value: Any, name: str, field: str) -> tuple[int, int]:
    arr = np.asarray(value).reshape(-1)
    if arr.size == 1:
        return (int(arr[0]), int(arr[0]))
    if arr.size == 2:
        return (int(arr[0]), int(arr[1]))
    raise CompileError(f"{field} must be one or two integers, got {arr.tolist()}", node=name)


def _conv_padding(node: nir.Conv2d, name: str) -> tuple[int, int]:
    if isinstance(node.padding, str):
        if node.padding == "valid":
            return (0, 0)
        kh, kw = node.weight.shape[2:]
        if kh % 2 == 0 or kw % 2 == 0:
            raise CompileError("padding 'same' with an even kernel is asymmetric; saec pads symmetrically",
                               node=name)
        return ((kh - 1) // 2, (kw - 1) // 2)
    return _pair(node.padding, name, "padding")


# ---------------------------------------------------------------- graph
def _order(graph: nir.NIRGraph) -> tuple[list[str], dict[str, str]]:
    """Topological order of the nodes and each node's single input."""
    source: dict[str, str] = {}
    for a, b in graph.edges:
        if b in source:
            raise CompileError(f"has inputs from `{source[b]}` and `{a}`; saec reads graphs in which every node "
                               "has one input", node=b)
        source[b] = a
    inputs = [n for n, v in graph.nodes.items() if isinstance(v, nir.Input)]
    outputs = [n for n, v in graph.nodes.items() if isinstance(v, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise CompileError(f"saec reads graphs with one Input and one Output node; this one has "
                           f"{len(inputs)} and {len(outputs)}")
    order, seen = [], set()

    def visit(n: str, trail: tuple[str, ...]) -> None:
        if n in seen:
            return
        if n in trail:
            raise CompileError("is part of a cycle; saec simulates feed-forward graphs only", node=n)
        if n in source:
            visit(source[n], trail + (n,))
        elif not isinstance(graph.nodes[n], nir.Input):
            raise CompileError("has no input", node=n)
        seen.add(n)
        order.append(n)

    for n in graph.nodes:
        visit(n, ())
    return order, source


def nir_to_ir(graph: nir.NIRGraph, *, dt: float | None = None) -> tuple[IRGraph, dict[str, np.ndarray]]:
    """saec's IR and weights for a NIR graph.

    Args:
        graph: a (type-checked) NIR graph.
        dt: time step in seconds; None = the graph's metadata ``dt``, else
            :data:`saec.compiler.nir_units.DT`.
    Returns:
        (IR graph with shapes inferred, weights keyed ``<node>.weight`` / ``.bias``).
        Neuron nodes keep their NIR names, which are also their ``layer``.
    Raises:
        CompileError: a node saec cannot simulate (names it).
    """
    meta = graph.metadata or {}
    if dt is None:
        dt = float(meta.get("dt", DT))
    if not dt > 0:
        raise CompileError(f"dt must be > 0 seconds, got {dt:g}")
    order, source = _order(graph)
    ir = IRGraph({"name": str(meta.get("spec_name", "nir")), "kind": "nir", "dt": dt,
                  "latent": None, "latent_node": None, "activation_layers": [], "losses": {}})
    state = _Import(ir, {}, dt)
    shapes: dict[str, tuple[int, ...]] = {}
    alias: dict[str, str] = {}
    for name in order:
        node = graph.nodes[name]
        src = alias.get(source.get(name, ""), None)
        in_shape = shapes.get(src, ())
        ins = (src,) if src else ()
        reason = NIR_IMPORT.refusal(node)
        if reason is not None:
            raise CompileError(f"NIR node type {type(node).__name__} is not supported by saec's simulator: {reason} "
                               f"(supported: {', '.join(supported_nir_nodes())})", node=name)
        try:
            alias[name] = NIR_IMPORT.lookup(node, node=name)(state, name, node, ins, in_shape)
        except InvalidOp as exc:  # a parameter that breaks the op's invariants: name the NIR node
            exc.node = exc.node or name
            raise
        infer_shapes(ir)
        shapes[alias[name]] = tuple(ir.meta(alias[name])["shape"])
    return ir, state.weights


@dataclass
class _Import:
    """What the NIR node handlers build: the IR, its weights, and the time step."""

    ir: IRGraph
    weights: dict[str, np.ndarray]
    dt: float  # seconds per step


def _nir_node_types() -> dict[str, type]:
    """Every node class the ``nir`` package defines (the table must handle or refuse each)."""
    return {n: c for n, c in vars(nir).items() if isinstance(c, type) and issubclass(c, nir.NIRNode)
            and c is not nir.NIRNode}


#: NIR node class -> fn(state, name, node, inputs, input shape) -> the IR node carrying its value.
NIR_IMPORT: OpTable[Callable[[_Import, str, Any, tuple[str, ...], tuple[int, ...]], str]] = OpTable(
    "NIR import", universe=_nir_node_types)


def supported_nir_nodes() -> list[str]:
    """Names of the NIR node types saec reads, in a fixed order."""
    return [c.__name__ for c in NIR_IMPORT.handlers]


@NIR_IMPORT.register(nir.Input)
def _input(state: _Import, name: str, node: nir.Input, ins: tuple[str, ...], in_shape: tuple[int, ...]) -> str:
    shape = tuple(int(v) for v in np.asarray(node.input_type["input"]).reshape(-1))
    return state.ir.add(name, ops.Input(shape=shape))


@NIR_IMPORT.register(nir.Output)
def _output(state: _Import, name: str, node: nir.Output, ins: tuple[str, ...], in_shape: tuple[int, ...]) -> str:
    return state.ir.add(name, ops.Output(), ins)


@NIR_IMPORT.register(nir.LIF)
def _lif(state: _Import, name: str, node: nir.LIF, ins: tuple[str, ...], in_shape: tuple[int, ...]) -> str:
    return state.ir.add(name, _lif_op(name, node, state.dt), ins, layer=name)


@NIR_IMPORT.register(nir.IF)
def _if(state: _Import, name: str, node: nir.IF, ins: tuple[str, ...], in_shape: tuple[int, ...]) -> str:
    return state.ir.add(name, _if_op(name, node, state.dt), ins, layer=name)


@NIR_IMPORT.register(nir.LI)
def _li(state: _Import, name: str, node: nir.LI, ins: tuple[str, ...], in_shape: tuple[int, ...]) -> str:
    return state.ir.add(name, _li_op(name, node, state.dt), ins, layer=name)


@NIR_IMPORT.register(nir.Conv2d)
def _conv2d(state: _Import, name: str, node: nir.Conv2d, ins: tuple[str, ...], in_shape: tuple[int, ...]) -> str:
    w = np.asarray(node.weight)
    if w.ndim != 4:
        raise CompileError(f"Conv2d weight must be [out, in, kh, kw], got {list(w.shape)}", node=name)
    if _pair(node.dilation, name, "dilation") != (1, 1) or int(node.groups) != 1:
        raise CompileError("dilated or grouped convolutions are not supported", node=name)
    bias = np.asarray(node.bias).reshape(-1) if node.bias is not None else np.zeros(0)
    has_bias = bool(np.any(bias != 0))
    op = ops.Conv2d(in_channels=int(w.shape[1]), out_channels=int(w.shape[0]),
                    kernel_size=(int(w.shape[2]), int(w.shape[3])), stride=_pair(node.stride, name, "stride"),
                    padding=_conv_padding(node, name), bias=has_bias)
    return _with_weights(state, name, op, ins, w, bias if has_bias else None)


@NIR_IMPORT.register(nir.Affine, nir.Linear)
def _affine(state: _Import, name: str, node: nir.Affine | nir.Linear, ins: tuple[str, ...],
            in_shape: tuple[int, ...]) -> str:
    w = np.asarray(node.weight)
    if w.ndim != 2:
        raise CompileError(f"weight must be 2-D [out, in], got {list(w.shape)}", node=name)
    bias = np.asarray(node.bias).reshape(-1) if type(node) is nir.Affine else np.zeros(0)
    has_bias = bool(np.any(bias != 0))
    op = ops.Linear(in_features=int(w.shape[1]), out_features=int(w.shape[0]), bias=has_bias)
    return _with_weights(state, name, op, ins, w, bias if has_bias else None)


def _with_weights(state: _Import, name: str, op: ops.Op, ins: tuple[str, ...], weight: np.ndarray,
                  bias: np.ndarray | None) -> str:
    node = state.ir.add(name, op, ins, layer=name)
    state.weights[f"{name}.weight"] = weight
    if bias is not None:
        state.weights[f"{name}.bias"] = bias
    return node


@NIR_IMPORT.register(nir.Flatten)
def _flatten(state: _Import, name: str, node: nir.Flatten, ins: tuple[str, ...], in_shape: tuple[int, ...]) -> str:
    return _add_flatten(state.ir, name, node, ins, in_shape)


@NIR_IMPORT.register(nir.SumPool2d)
def _sum_pool2d(state: _Import, name: str, node: nir.SumPool2d, ins: tuple[str, ...],
                in_shape: tuple[int, ...]) -> str:
    op = ops.SumPool2d(kernel_size=_pair(node.kernel_size, name, "kernel_size"),
                       stride=_pair(node.stride, name, "stride"), padding=_pair(node.padding, name, "padding"))
    return state.ir.add(name, op, ins, layer=name)


NIR_IMPORT.refuse((nir.CubaLIF, nir.CubaLI), "a current-based neuron has a synaptic state saec's neurons lack")
NIR_IMPORT.refuse(nir.I, "a pure integrator's output is its potential; saec reads it as LI (set tau) or IF")
NIR_IMPORT.refuse(nir.Threshold, "a bare threshold has no membrane; saec's neurons integrate")
NIR_IMPORT.refuse(nir.Scale, "no elementwise scaling op; fold the scale into the weights before")
NIR_IMPORT.refuse(nir.Delay, "saec's graphs have no synaptic delays")
NIR_IMPORT.refuse(nir.AvgPool2d, "saec pools by summing only (SumPool2d)")
NIR_IMPORT.refuse(nir.Conv1d, "saec's convolutions are 2-D")
NIR_IMPORT.refuse(nir.NIRGraph, "nested graphs are not read; flatten the graph first")


def _add_flatten(ir: IRGraph, name: str, node: nir.Flatten, ins: tuple[str, ...], in_shape: tuple[int, ...]) -> str:
    """NIR Flatten(start, end) over dims without batch: a saec Flatten, then an Unflatten if dims remain."""
    n = len(in_shape)
    start, end = int(node.start_dim), int(node.end_dim)
    start, end = start + n if start < 0 else start, end + n if end < 0 else end
    if not 0 <= start <= end < n:
        raise CompileError(f"flatten dims {node.start_dim}..{node.end_dim} do not fit its input {fmt(in_shape)}",
                           node=name)
    out = in_shape[:start] + (math.prod(in_shape[start:end + 1]),) + in_shape[end + 1:]
    flat = ir.add(name, ops.Flatten(), ins)
    if len(out) == 1:
        return flat
    return ir.add(f"{name}.reshape", ops.Unflatten(shape=out), (flat,))


def load_nir(graph_or_path: nir.NIRGraph | str | Path, *, dt: float | None = None
             ) -> tuple[IRGraph, dict[str, np.ndarray]]:
    """:func:`nir_to_ir` of a graph or a file; errors as one-line :class:`UserError`."""
    where = None
    if isinstance(graph_or_path, (str, Path)):
        where = str(graph_or_path)
        graph = read_nir(graph_or_path)
    else:
        graph = graph_or_path
    try:
        return nir_to_ir(graph, dt=dt)
    except CompileError as exc:
        raise UserError(f"cannot simulate: {exc}", file=where) from None


# ---------------------------------------------------------------- simulation
def read_input_spikes(path: str | Path, shape: tuple[int, ...]) -> np.ndarray:
    """An input spike train from ``.npy`` ([T, B, *shape] or [T, *shape]) or a golden ``.nir`` data file.

    Raises:
        UserError: unreadable file or a shape that does not fit ``shape``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("no such input file", file=str(path))
    if path.suffix == ".nir":
        try:
            data = read_golden(path)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise UserError(f"not a NIR data file ({_first_line(exc)})", file=str(path)) from None
        if INPUT_NODE not in data:  # read_golden also maps a legacy `_input`
            raise UserError(f"NIR data file has no `{INPUT_NODE}` node to take the input from", file=str(path))
        spikes = data[INPUT_NODE]  # [B, T, neurons]
        return np.ascontiguousarray(spikes.transpose(1, 0, 2).reshape(spikes.shape[1], spikes.shape[0], *shape))
    try:
        spikes = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"not a .npy array ({_first_line(exc)})", file=str(path)) from None
    return check_input_spikes(spikes, shape, where=str(path))


def check_input_spikes(spikes: Any, shape: tuple[int, ...], where: str | None = None) -> np.ndarray:
    """``spikes`` as float [T, B, *shape] (a missing batch axis is added).

    Raises:
        UserError: not numeric, wrong shape, or not finite.
    """
    arr = np.asarray(spikes)
    if arr.dtype.kind not in "biuf":
        raise UserError(f"input spikes must be numbers, got dtype {arr.dtype}", file=where)
    if arr.shape[1:] == shape:
        arr = arr[:, None]
    if arr.ndim != len(shape) + 2 or arr.shape[2:] != shape or arr.shape[0] < 1:
        raise UserError(f"input spikes must be [T, B, {fmt(shape)}] or [T, {fmt(shape)}] for this graph, "
                        f"got {list(arr.shape)}", file=where)
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise UserError("input spikes contain NaN or infinity", file=where)
    return arr


def simulate_nir(graph_or_path: nir.NIRGraph | str | Path, spikes: Any, *, dt: float | None = None,
                 dtype: str = "float32") -> dict[str, np.ndarray]:
    """Simulate a NIR graph with saec's runtime.

    Args:
        graph_or_path: a NIR graph or a ``.nir`` file.
        spikes: input spike train [T, B, *input shape] (or [T, *input shape]), 0/1 or any real values.
        dt: time step in seconds (default: the graph's metadata ``dt``, else 1e-4).
        dtype: ``float32`` (what importers compute in) or ``float64``.
    Returns:
        Node name -> [T, B, *shape] arrays: the output node's value under
        ``output`` (the graph's Output name as well), and every neuron
        node's spikes (LIF, IF) or potential (LI).
    Raises:
        UserError: unreadable graph, unsupported node, input of the wrong shape.
    """
    import torch

    from saec.runtime.model import SpikingAutoencoder
    from saec.runtime.spikedriven import training_forward

    ir, weights = load_nir(graph_or_path, dt=dt)
    (inp,) = ir.nodes(ops.Input)
    (out_node,) = ir.nodes(ops.Output)
    x = check_input_spikes(spikes, tuple(ir.meta(inp)["shape"]))
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    ir.attrs["timesteps"] = int(x.shape[0])
    model = SpikingAutoencoder(ir).to(torch_dtype)
    model.load_ir_state_dict({k: torch.from_numpy(np.asarray(v)).to(torch_dtype) for k, v in weights.items()})
    model.eval()
    train = torch.from_numpy(x).to(torch_dtype)
    neurons = [n for n in ir.order() if isinstance(ir.op(n), (ops.LIF, ops.LeakyIntegrator))]
    with torch.no_grad(), training_forward(model):  # each layer's planned forward, as the golden data's
        out = model(train[0], encoded=train, record={*neurons, out_node})
    result = {n: out.trains[n].numpy() for n in neurons}
    result[out_node] = out.trains[out_node].numpy()
    result.setdefault(OUTPUT_NODE, result[out_node])  # unless an inner node of a foreign graph has that name
    return result


def agreement(reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]) -> dict[str, dict[str, int]]:
    """Whole spike trains compared position by position, per node in both.

    Args:
        reference, other: node name -> spike trains of the same size (e.g. [T, B, neurons]);
            an entry is a spike where it is > 0.
    Returns:
        node -> ``entries`` (positions (t, example, neuron)), ``reference_spikes`` and
        ``spikes`` (counts in each), ``matched`` (spikes in both) and ``mismatches``
        (positions that differ: a spike moved in time counts twice, equal counts do not hide it).
    """
    report = {}
    for node in reference:
        if node in other:
            a = np.asarray(reference[node]) > 0
            b = np.asarray(other[node]).reshape(a.shape) > 0
            report[node] = {"reference_spikes": int(a.sum()), "spikes": int(b.sum()), "matched": int((a & b).sum()),
                            "mismatches": int((a != b).sum()), "entries": int(a.size)}
    return report


def nir_input_shape(graph: nir.NIRGraph) -> tuple[int, ...]:
    """Per-example shape of the graph's (single) Input node."""
    shapes = [np.asarray(v.input_type["input"]).reshape(-1) for v in graph.nodes.values() if isinstance(v, nir.Input)]
    if len(shapes) != 1:
        raise UserError(f"saec reads graphs with one Input node; this one has {len(shapes)}")
    return tuple(int(v) for v in shapes[0])


def golden_reference(path: str | Path) -> dict[str, np.ndarray] | None:
    """Spike trains [T, B, neurons] of a golden ``.nir`` data file, or None for other files.

    Raises:
        UserError: a ``.nir`` file that is not NIR data (names the file).
    """
    if Path(path).suffix != ".nir":
        return None
    try:
        trains = read_golden(path)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"not a NIR data file ({_first_line(exc)})", file=str(path)) from None
    return {name: np.ascontiguousarray(v.transpose(1, 0, 2)) for name, v in trains.items()}


def agreement_rows(report: Mapping[str, Mapping[str, int]]) -> list[tuple[str, str, str, str, str]]:
    """Table rows (node, reference spikes, simulated spikes, positions that differ, verdict) of :func:`agreement`."""
    rows = []
    for node, r in report.items():
        verdict = "identical" if r["mismatches"] == 0 else "DIFFERS"
        rows.append((node, f"{r['reference_spikes']:,}", f"{r['spikes']:,}",
                     f"{r['mismatches']:,} of {r['entries']:,}", verdict))
    return rows


def write_simulation(path: str | Path, result: Mapping[str, np.ndarray]) -> None:
    """Save node name -> array as a compressed ``.npz`` (temp name + rename)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{k: np.asarray(v) for k, v in result.items()})

    write_atomically(path, write)
