"""saec -> NIR: the verified export of a trained run (``saec export RUN --format nir``).

Together with :mod:`saec.importers.nir` the only modules that import ``nir``.

What is written (``RUN/export/``):

- ``model.nir``: the network as standard NIR. The IR is first lowered with
  the ``nir`` flow (:mod:`saec.compiler.passes.lower_nir`) so every synapse is
  a ``Conv2d`` (or ``Affine``/``Linear`` on flat data); each LIF becomes a NIR
  ``LIF`` (``IF`` when decay = 1). The graph's input is the spike train (the
  Poisson encoder stays outside); its output is the output layer's spikes.
  Written to a temporary name, read back with ``nir.read(type_check=True)``,
  then renamed. The ends are ``input`` / ``output`` (:func:`nir_names`).
- ``golden.nir``: NIR data (``nir.write_data``): the input spike train of a
  few validation images (saec's Poisson encoder, fixed seed) and the spikes
  saec computes for it at every neuron node and at the output, so any
  toolchain can check itself.
- ``model.<target>.nir`` for ``target`` ``snntorch`` / ``norse``: the same
  network in an equivalent NIR parametrisation that the target's importer
  (with its known bugs, docs/deployment.md) runs exactly. ``model.nir``
  stays standard.

Time: NIR neurons are continuous-time and carry no dt. One saec step is one
forward-Euler step of :data:`DT` (1e-4 s, the value snnTorch's importer fixes;
give Norse ``dt=DT``). A discrete LIF u(t) = decay * u(t-1) + I(t) is then
NIR's ``tau dv/dt = (v_leak - v) + r I`` with

    tau = DT / (1 - decay)   [s]      r = 1 / (1 - decay)   v_leak = 0
    v_threshold = threshold  (strict >, saec's ``gt``)
                = nextafter(threshold, 0) in float32  (saec's ``ge``: u >= threshold)
    v_reset = 0

and v = u exactly in real arithmetic. Neuron rules NIR's LIF cannot express
(a membrane floor, reset ``subtract`` / ``none``: :func:`nir_blockers`) make
:func:`export_nir` refuse, naming the spec field and the layers, unless
``approximate``; the readout, the encoder and dt are written into the graph's
metadata and listed by :attr:`NirExport.not_carried`. Every export simulates
the written file with saec's NIR simulator on the golden input and compares
whole spike trains (:attr:`NirExport.agreement`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import nir
import numpy as np

from saec import __version__
from saec.atomicwrite import write_atomically
from saec.compiler import ops
from saec.compiler.dispatch import OpTable
from saec.compiler.errors import CompileError
from saec.compiler.graph import IRGraph
from saec.importers.nir import INPUT_NODE, LEGACY_END_NAMES, OUTPUT_NODE, read_golden  # noqa: F401 (re-exported)
# DT: seconds of NIR time per saec step, defined with the unit conversions (still saec.exporters.nir.DT)
from saec.compiler.nir_units import DT, if_r, li_tau_r, lif_tau_r
from saec.errors import UserError

#: Targets of ``saec export --target``: standard NIR, or a variant an importer runs exactly.
TARGETS = ("standard", "snntorch", "norse")
MODEL_FILE = "model.nir"
GOLDEN_FILE = "golden.nir"
# INPUT_NODE, OUTPUT_NODE (the NIR names of the graph ends; an inner node of the same name is renamed by
# :func:`nir_names`), LEGACY_END_NAMES and read_golden live with the reader, saec.importers.nir.
#: Ops with no NIR node: the encoder (the graph's input is its spike train) and the readout.
OUTSIDE_NIR = (ops.PoissonEncode, ops.MaxCumulativeReadout)


def target_file(target: str) -> str:
    """File name of the graph for ``target`` (``model.nir`` for standard NIR)."""
    return MODEL_FILE if target == "standard" else f"model.{target}.nir"


# ---------------------------------------------------------------- neuron parameters
def lif_threshold(op: ops.LIF) -> np.float32:
    """v_threshold (float32) whose strict ``v > v_threshold`` reproduces the op's spike test."""
    return _strict_threshold(np.float32(op.threshold), op.spike_when)


def _strict_threshold(v_at_threshold: np.float32, spike_when: str) -> np.float32:
    """The float32 threshold for NIR's strict ``>`` given the float32 value v takes when u == threshold.

    ``ge`` needs the float32 step below *that* value: taken before a scaling it can be
    rounded away (float32(nextafter(1, 0) * 0.01) == float32(0.01)).
    """
    v = np.float32(v_at_threshold)
    thr = np.nextafter(v, np.float32(0)) if spike_when == "ge" else v
    # Checked in float32: u == threshold (v) must spike for `ge` and must not for `gt`.
    if bool(v > thr) != (spike_when == "ge"):
        raise CompileError(f"no float32 threshold reproduces spike_when={spike_when!r} at v = {float(v)!r}")
    return thr


def norse_gain(tau: np.ndarray) -> np.float32:
    """The float32 factor Norse 1.1's LIF multiplies its input by: ``dt * (1 / tau)`` (its own arithmetic).

    ``norse.torch.from_nir`` keeps ``tau_mem_inv = 1 / tensor(tau).float()`` and steps
    ``v += dt * tau_mem_inv * (I + v_leak - v)``; from rest a current I gives ``v = gain * I``.
    """
    import torch

    tau_mem_inv = 1 / torch.from_numpy(np.asarray(tau).reshape(-1)[:1]).float()
    return np.float32((DT * tau_mem_inv).item())


def _full(shape: tuple[int, ...], value: float, dtype=np.float64) -> np.ndarray:
    # NIR's type check wants neuron parameters of the full activation shape, not scalars.
    return np.full(shape, value, dtype=dtype)


def _neuron_metadata(op: ops.Op) -> dict[str, Any]:
    # One JSON string: lossless (None survives) and HDF5 stores it as a plain string.
    return {"saec_op": json.dumps(ops.op_to_dict(op))}


def _lif_node(name: str, op: ops.LIF, in_shape, shape, weights, target: str) -> nir.NIRNode:
    # reset "subtract" / "none" and a membrane floor are refused (or approximated) before this: nir_blockers.
    thr = float(lif_threshold(op))
    if op.decay == 1.0:  # no leak: NIR IF, dv/dt = r I, so r = 1/dt makes one Euler step add I
        return nir.IF(r=_full(shape, if_r(DT)), v_threshold=_full(shape, thr, np.float32),
                      v_reset=_full(shape, 0.0, np.float32), metadata=_neuron_metadata(op))
    tau_s, r = lif_tau_r(op.decay, DT)
    tau = _full(shape, tau_s)
    if target == "norse":
        # Norse's LIF ignores r: use the equivalent r = 1, which scales v (and the threshold) by 1 - decay,
        # with the scale computed as Norse computes it and the float32 step below taken after scaling.
        v_at_threshold = np.float32(norse_gain(tau) * np.float32(op.threshold))
        r, thr = 1.0, float(_strict_threshold(v_at_threshold, op.spike_when))
    return nir.LIF(tau=tau, r=_full(shape, r), v_leak=_full(shape, 0.0),
                   v_threshold=_full(shape, thr, np.float32), v_reset=_full(shape, 0.0, np.float32),
                   metadata=_neuron_metadata(op))


def _li_node(name: str, op: ops.LeakyIntegrator, in_shape, shape, weights, target: str) -> nir.NIRNode:
    try:
        tau, r = li_tau_r(op.decay, op.gain, DT)
    except ValueError:
        raise CompileError("a leaky integrator with decay 1 has no NIR LI equivalent", node=name) from None
    return nir.LI(tau=_full(shape, tau), r=_full(shape, r), v_leak=_full(shape, 0.0),
                  metadata=_neuron_metadata(op))


# ---------------------------------------------------------------- synapses and structure
def _bias(name: str, weights, out: int) -> np.ndarray:
    b = weights.get(f"{name}.bias")
    return np.zeros(out, dtype=np.float32) if b is None else np.asarray(b, dtype=np.float32)


def _conv_node(name: str, op: ops.Conv2d, in_shape, shape, weights, target: str) -> nir.NIRNode:
    w = np.asarray(weights[f"{name}.weight"], dtype=np.float32)
    return nir.Conv2d(input_shape=tuple(int(v) for v in in_shape[1:]), weight=w, stride=op.stride,
                      padding=op.padding, dilation=1, groups=1, bias=_bias(name, weights, op.out_channels))


def _linear_node(name: str, op: ops.Linear, in_shape, shape, weights, target: str) -> nir.NIRNode:
    w = np.asarray(weights[f"{name}.weight"], dtype=np.float32)
    if op.bias:
        return nir.Affine(weight=w, bias=_bias(name, weights, op.out_features))
    return nir.Linear(weight=w)


def _flatten_node(name: str, op: ops.Flatten, in_shape, shape, weights, target: str) -> nir.NIRNode:
    # NIR dims exclude batch. snnTorch and Norse build torch's Flatten from these dims as they stand,
    # which then flattens the batch too; their targets shift the dims past the batch axis.
    shift = 1 if target in ("snntorch", "norse") else 0
    return nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0 + shift, end_dim=-1)


def _sum_pool_node(name: str, op: ops.SumPool2d, in_shape, shape, weights, target: str) -> nir.NIRNode:
    return nir.SumPool2d(kernel_size=np.array(op.kernel_size), stride=np.array(op.stride),
                         padding=np.array(op.padding))


def _input_node(name: str, op: ops.Input, in_shape, shape, weights, target: str) -> nir.NIRNode:
    return nir.Input(input_type={"input": np.array(shape)})


def _output_node(name: str, op: ops.Output, in_shape, shape, weights, target: str) -> nir.NIRNode:
    return nir.Output(output_type={"output": np.array(shape)})


def _outside(name: str, op: ops.Op, in_shape, shape, weights, target: str) -> None:
    """No NIR node: the value passes through (see :data:`OUTSIDE_NIR`)."""
    return None


#: IR op type -> fn(name, op, input shape, output shape, weights, target) -> its NIR node, or None for an op
#: outside NIR (the value passes through). Refused: what NIR cannot express, even after the ``nir`` flow.
NODE_MAP: OpTable[Callable[..., nir.NIRNode | None]] = OpTable("NIR export")
for _op_type, _make in {
    ops.Input: _input_node,
    ops.Output: _output_node,
    ops.PoissonEncode: _outside,
    ops.MaxCumulativeReadout: _outside,
    ops.LIF: _lif_node,
    ops.LeakyIntegrator: _li_node,
    ops.Conv2d: _conv_node,
    ops.Linear: _linear_node,
    ops.Flatten: _flatten_node,
    ops.SumPool2d: _sum_pool_node,
}.items():
    NODE_MAP.add(_op_type, _make)
NODE_MAP.refuse(ops.ConvTranspose2d, "NIR has no transposed convolution (the nir flow lowers those of stride 1 "
                                     "to a convolution)")
NODE_MAP.refuse(ops.Unflatten, "NIR has no reshape back from flat data (the nir flow folds an unflatten after a "
                               "linear layer into a convolution)")
NODE_MAP.refuse((ops.ReLU, ops.Reparameterize), "NIR graphs are spiking networks; an AE / VAE has no NIR "
                                                "equivalent (export it to ONNX)")
#: The names of the graph ends in NIR.
END_NAMES = {ops.Input: INPUT_NODE, ops.Output: OUTPUT_NODE}


def nir_names(graph: IRGraph) -> dict[str, str]:
    """NIR node name of every IR node that becomes a NIR node (the ends: ``input`` / ``output``).

    An inner node named like an end (``output``: the synapse of the SAE's layer ``output``)
    becomes ``<name>.<op type>`` (``output.conv2d``), made unique.
    """
    taken = set(graph.order())
    names: dict[str, str] = {}
    for name in graph.order():
        op = graph.op(name)
        if type(op) in END_NAMES:
            names[name] = END_NAMES[type(op)]
        elif type(op) in OUTSIDE_NIR:
            continue
        elif name in (INPUT_NODE, OUTPUT_NODE):
            new, i = f"{name}.{op.type}", 1
            while new in taken:
                i += 1
                new = f"{name}.{op.type}{i}"
            taken.add(new)
            names[name] = new
        else:
            names[name] = name
    return names


def renamed_nodes(graph: IRGraph) -> dict[str, str]:
    """NIR name -> IR node name for inner nodes :func:`nir_names` renamed (written as metadata ``renamed_nodes``)."""
    return {new: old for old, new in nir_names(graph).items()
            if new != old and type(graph.op(old)) not in END_NAMES}


def ir_to_nir(graph: IRGraph, weights: Mapping[str, Any], *, target: str = "standard",
              metadata: Mapping[str, Any] | None = None) -> nir.NIRGraph:
    """The NIR graph of a lowered IR graph (type-checked by ``nir``).

    Args:
        graph: an IR graph every node of which NIR can express (after the
            ``nir`` flow for a compiled spec); the encoder and the readout are skipped.
            Neuron semantics NIR cannot carry (:func:`nir_blockers`) are not refused
            here: their LIF is written as if they were absent (``--approximate``).
        weights: weights keyed ``<node>.weight`` / ``<node>.bias`` (numpy-readable).
        target: one of :data:`TARGETS`.
        metadata: the graph's metadata (str / number / bool / dict values only).
    Returns:
        A NIR graph named like the IR (:func:`nir_names`): ``input``, one node per
        synapse and neuron, ``output``. Type-checked, except a ``snntorch`` / ``norse``
        graph with a Flatten: its dims are shifted past the batch axis for
        that importer, which NIR's own type check (rightly) rejects.
    Raises:
        CompileError: a node NIR cannot express (names it).
        ValueError: ``nir``'s type check rejected the graph.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown NIR target {target!r}; use one of {', '.join(TARGETS)}")
    names = nir_names(graph)
    nodes: dict[str, nir.NIRNode] = {}
    edges: list[tuple[str, str]] = []
    alias: dict[str, str] = {}  # IR node -> NIR node carrying its value
    for name in graph.order():
        op, ins = graph.op(name), graph.inputs(name)
        shape = tuple(int(v) for v in graph.meta(name)["shape"])
        src = alias[ins[0]] if ins else None
        make = NODE_MAP.lookup(op, node=name)
        in_shape = tuple(int(v) for v in graph.meta(ins[0])["shape"]) if ins else ()
        node = make(name, op, in_shape, shape, weights, target)
        if node is None:
            alias[name] = src
            continue
        nodes[names[name]] = node
        if src is not None:
            edges.append((src, names[name]))
        alias[name] = names[name]
    meta = dict(metadata or {})
    renamed = renamed_nodes(graph)
    if renamed:
        meta["renamed_nodes"] = renamed
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=type_checks(graph, target))


def type_checks(graph: IRGraph, target: str) -> bool:
    """Whether the NIR graph of ``graph`` for ``target`` passes ``nir``'s type check (see :func:`ir_to_nir`)."""
    return target == "standard" or not any(True for _ in graph.nodes(ops.Flatten))


# ---------------------------------------------------------------- what NIR does not carry
@dataclass(frozen=True)
class Blocker:
    """Neuron semantics NIR's LIF cannot express, on some layers."""

    field: str  # the LIF spec field: "lower_bound" or "reset"
    layers: tuple[str, ...]  # spec layer names, in graph order
    reason: str  # why NIR cannot carry it, one clause


def nir_blockers(graph: IRGraph) -> list[Blocker]:
    """What in ``graph``'s neurons NIR cannot express exactly, grouped by spec field and rule.

    NIR's LIF (and IF) has no floor on the membrane and always resets to ``v_reset``
    after a spike (docs/deployment.md), so a ``lower_bound`` (either mode) and a
    ``reset`` of ``subtract`` or ``none`` cannot be carried. ``spike_when: ge`` can
    (one float32 step below the threshold) and the max-over-time readout is
    post-processing described in the metadata, so neither is a blocker.
    """
    found: dict[tuple[str, str], list[str]] = {}
    for n in graph.nodes(ops.LIF):
        op, layer = graph.op(n), graph.meta(n)["layer"]
        if op.lower_bound is not None:
            rule = (f"u < {op.lower_bound:g} is set to +threshold" if op.lower_bound_mode == "revive"
                    else f"u < {op.lower_bound:g} is clamped to {op.lower_bound:g}")
            found.setdefault(("lower_bound", f"NIR's LIF has no membrane floor ({rule})"), []).append(layer)
        if op.reset == "subtract":
            found.setdefault(("reset", "NIR's LIF resets to v_reset after a spike; it cannot subtract the "
                                       "threshold (reset: subtract)"), []).append(layer)
        elif op.reset == "none":
            found.setdefault(("reset", "NIR's LIF always resets to v_reset after a spike (reset: none keeps "
                                       "the potential)"), []).append(layer)
    return [Blocker(field, tuple(layers), reason) for (field, reason), layers in found.items()]


def not_carried(graph: IRGraph) -> list[str]:
    """What a NIR consumer of ``graph`` will not see, one sentence each (also in the metadata)."""
    lifs = [graph.op(n) for n in graph.nodes(ops.LIF)]
    items = [
        "the readout: the graph outputs the output layer's spikes; the reconstruction "
        "x_hat = max_t U(t) / divisor is described in metadata 'readout'",
        "the Poisson encoder: the graph's input is the spike train (metadata 'encoding')",
        f"dt: one saec step is one Euler step of dt = {DT:g} s (metadata 'dt'; snnTorch fixes this dt, "
        "give Norse dt=1e-4)",
    ]
    floored = sorted({graph.meta(n)["layer"] for n in graph.nodes(ops.LIF) if graph.op(n).lower_bound is not None})
    if floored:
        op = next(o for o in lifs if o.lower_bound is not None)
        rule = "set to +threshold" if op.lower_bound_mode == "revive" else "clamped"
        items.append(f"the membrane floor (u < {op.lower_bound:g} is {rule}) on layers {', '.join(floored)}: "
                     "NIR has none, so other simulators differ wherever it acts")
    reset = sorted({graph.meta(n)["layer"] for n in graph.nodes(ops.LIF) if graph.op(n).reset != "zero"})
    if reset:
        items.append(f"the reset rule (not to zero) on layers {', '.join(reset)}: NIR neurons reset to v_reset")
    if any(o.spike_when == "ge" for o in lifs):
        items.append("spiking at u >= threshold: written as v_threshold = nextafter(threshold, 0), "
                     "exact in float32 only")
    return items


def graph_metadata(graph: IRGraph, target: str) -> dict[str, Any]:
    """Graph-level metadata: provenance, time, encoder, readout, neuron conventions, what is not carried."""
    attrs = graph.attrs
    meta: dict[str, Any] = {
        "producer": "saec",
        "saec_version": __version__,
        "spec_name": str(attrs.get("name", "")),
        "spec_sha256": str(attrs.get("spec_sha256", "")),
        "nir_target": target,
        "dt": DT,
        "timesteps": int(attrs.get("timesteps", 1)),
        "time": f"one saec step = one forward-Euler step of dt; LIF tau = dt/(1-decay), r = 1/(1-decay)"
                + (" (norse target: r = 1, v_threshold scaled by 1-decay)" if target == "norse" else ""),
        "output": "spikes of the output layer's neurons",
        "not_carried": " | ".join(not_carried(graph)),
    }
    for name in graph.nodes(ops.PoissonEncode):
        op = graph.op(name)
        meta["encoding"] = {
            "type": "poisson", "rule": "spike(t) = [encoder_scale * x' > r(t)], r ~ U(0,1) per pixel and step; "
            "x' = (1-noise) x + noise xi", "timesteps": op.timesteps, "scale": op.scale,
            "encoder_scale": op.effective_scale, "noise": op.noise, "noise_resample": op.noise_resample}
    for name in graph.nodes(ops.MaxCumulativeReadout):
        op = graph.op(name)
        src = graph.inputs(name)[0]
        lif: ops.LIF = graph.op(src)
        T = int(attrs.get("timesteps", 1))
        divisor = op.divisor(T)
        rule = ("U(t) = decay * (U(t-1) + I(t)), I = input current of the output neurons"
                if lif.integrate == "current" else "U(t) = decay * U(t-1) + u(t), u = output membrane")
        meta["readout"] = {
            "type": "max_cumulative_readout", "neurons": src, "integrate": lif.integrate, "decay": lif.decay,
            "rule": f"{rule}; x_hat = max over t in [{op.t_min}, T] of U(t) / {divisor:g}",
            "t_min": op.t_min, "scale": op.scale, "divide_by_timesteps": op.divide_by_timesteps,
            "divisor": divisor}
    lif_ops = [graph.op(n) for n in graph.nodes(ops.LIF)]
    if lif_ops:
        first = lif_ops[0]
        meta["neuron"] = {
            "model": "u(t) = decay * u(t-1) + I(t); spike if u " + (">=" if first.spike_when == "ge" else ">")
            + " threshold; then u = 0 (per-layer values in node metadata 'saec_op')",
            "decay": first.decay, "threshold": first.threshold, "reset": first.reset,
            "spike_when": first.spike_when,
            "lower_bound": "none" if first.lower_bound is None else first.lower_bound,
            "lower_bound_mode": first.lower_bound_mode, "clamp_first": first.clamp_first,
            "integrate": first.integrate}
    return meta


# ---------------------------------------------------------------- writing and checking
def write_checked(path: Path, graph: nir.NIRGraph, *, type_check: bool = True) -> None:
    """Write ``graph`` to ``path`` only after ``nir.read(type_check=...)`` accepted it (temp name + rename)."""

    def write_and_check(tmp: Path) -> None:
        nir.write(tmp, graph)
        nir.read(tmp, type_check=type_check)

    write_atomically(path, write_and_check)


def golden_data(spikes: Mapping[str, np.ndarray]) -> nir.NIRGraphData:
    """NIR data of recorded spike trains: node name -> bool [B, T, neurons] observable ``spikes``.

    Args:
        spikes: NIR node name -> spike train [T, B, *shape] (0/1).
    """
    nodes = {}
    for node, train in spikes.items():
        train = np.asarray(train)
        data = np.ascontiguousarray(train.reshape(train.shape[0], train.shape[1], -1).transpose(1, 0, 2) > 0)
        nodes[node] = nir.NIRNodeData(observables={"spikes": nir.TimeGriddedData(data=data, dt=DT)})
    return nir.NIRGraphData(nodes=nodes)


def write_golden(path: Path, spikes: Mapping[str, np.ndarray]) -> None:
    """Write :func:`golden_data` to ``path`` after reading it back (temp name + rename)."""

    def write_and_check(tmp: Path) -> None:
        nir.write_data(tmp, golden_data(spikes))
        nir.read_data(str(tmp))

    write_atomically(path, write_and_check)


# ---------------------------------------------------------------- what an export wrote
@dataclass
class NirExport:
    """What :func:`saec.run.export.export_nir` wrote, what the file does not carry, and how closely it reproduces saec."""

    model: Path
    golden: Path
    target_model: Path | None
    not_carried: list[str]
    nodes: int
    golden_examples: int
    golden_spikes: int  # output spikes in the golden data
    #: semantics written approximately (``approximate=True``), one sentence each; empty for an exact export
    approximated: list[str]
    #: NIR node -> agreement of saec's NIR simulation of ``model`` with the golden spikes
    #: (:func:`saec.importers.nir.agreement`: whole spike trains, every (t, example, neuron))
    agreement: dict[str, dict[str, int]]

    @property
    def exact(self) -> bool:
        """Every golden spike train reproduced, position by position."""
        return not any(r["mismatches"] for r in self.agreement.values())


def golden_spikes(graph: IRGraph, weights: Mapping[str, Any], images, seed: int) -> dict[str, np.ndarray]:
    """saec's spikes for Poisson-encoded ``images``, keyed by NIR node name.

    Args:
        graph: the lowered graph that is exported (so the golden spikes are those of the file's network).
        weights: its weights (numpy-readable).
        images: float tensor [B, *input shape] in [0, 1].
        seed: seed of the encoder's ``torch.Generator``.
    Returns:
        ``input`` (the encoded train), every LIF node (by NIR name) and ``output``: [T, B, *shape] float 0/1.
    """
    import torch

    from saec.runtime.encoding import poisson_encode
    from saec.runtime.model import SpikingAutoencoder
    from saec.runtime.spikedriven import training_forward

    model = SpikingAutoencoder(graph)
    model.load_ir_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in weights.items()})
    model.eval()
    (enc,) = graph.nodes(ops.PoissonEncode)
    train = poisson_encode(images, graph.op(enc), generator=torch.Generator().manual_seed(seed))
    lif_nodes = list(graph.nodes(ops.LIF))
    with torch.no_grad(), training_forward(model):  # the training forward's numerics, spike for spike
        out = model(images, encoded=train, record={graph.meta(n)["layer"] for n in lif_nodes})
    names = nir_names(graph)
    spikes = {INPUT_NODE: train.numpy()}
    for n in lif_nodes:
        spikes[names[n]] = out.trains[graph.meta(n)["layer"]].numpy()
    (output,) = graph.nodes(ops.Output)
    spikes[OUTPUT_NODE] = spikes[names[_producer(graph, output)]]
    return spikes


def _producer(graph: IRGraph, name: str) -> str:
    """The node whose value ``name`` passes on, skipping ops outside NIR (the readout)."""
    src = graph.inputs(name)[0]
    while isinstance(graph.op(src), OUTSIDE_NIR):
        src = graph.inputs(src)[0]
    return src
