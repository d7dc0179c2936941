"""lava-dl netx HDF5: the native network file of Intel's lava for Loihi.

:func:`write_netx` writes a network quantised for Loihi
(:func:`saec.targets.quantize.quantize` with the ``loihi`` profile) as the
file lava-dl's ``lava.lib.dl.netx.hdf5.Network`` reads (lava-dl 0.6.0
``lava/lib/dl/netx/hdf5.py``), in the layout slayer's ``export_hdf5`` writes::

    /layer/0/{type: input, shape: [C, H, W]}
    /layer/<i>/{type: conv, shape: [C, H, W], inChannels, outChannels, kernelSize, stride,
                padding, dilation, groups, weight [out, in, kh, kw] (integers), [bias],
                neuron/{type: CUBA, iDecay, vDecay, vThMant, refDelay, gradedSpike}}

Every synapse becomes a netx ``conv`` by saec's exact NIR lowerings
(:mod:`saec.compiler.passes.lower_nir`): a stride-1 transposed convolution is
the convolution with the flipped kernel, flatten + linear a convolution whose
kernel spans the map, linear + unflatten a full convolution on an n x 1 x 1
input. netx's loader wires a dense layer only to a flat input and a conv only to
a C x H x W one (it has no reshape), so an auto-encoder's decoder, which goes
from the flat latent back to a map, is expressible only this way.

Neuron registers (lava-nc 0.10.0 ``lava/proc/lif/models.py``, read by netx as
``du = iDecay - 1``, ``dv = vDecay``, ``vth = vThMant``, bias exponent 6):
``iDecay`` 4096 (du 4095 plus lava's ``ds_offset`` 1: the current is the step's
input, as saec's LIF), ``vDecay`` the chip's dv = round(4096 (1 - decay)),
``vThMant`` the 17-bit threshold mantissa, ``bias`` the 13-bit mantissa.
Weights are the quantised integers themselves (even, in [-256, 254]).

A pure function: the quantised network in, a file out; no run folders, no data.
Only this module imports ``h5py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from saec import __version__
from saec.compiler import ops
from saec.compiler.dispatch import OpTable, UnsupportedOp
from saec.compiler.errors import CompileError
from saec.compiler.graph import IRGraph
from saec.compiler.passes.lower_nir import lower_for_nir
from saec.errors import UserError
from saec.targets.quantize import LOIHI_ACT_SHIFT, QuantizedNetwork

#: netx's CUBA neuron: iDecay 4096 = du register 4095 + lava's ds_offset 1 (netx passes du = iDecay - 1).
NETX_CURRENT_DECAY = 4096


@dataclass
class NetxLayer:
    """One netx layer as written: its index in ``/layer``, netx type and saec names."""

    index: int
    type: str  # input | conv
    shape: tuple[int, ...]  # C, H, W (netx reads it reversed, as x, y, z)
    node: str | None = None  # saec's synapse node (conv layers)
    layer: str | None = None  # the spec's layer name (conv layers)


@dataclass
class NetxFile:
    """What :func:`write_netx` wrote."""

    path: Path
    layers: list[NetxLayer]
    timesteps: int
    notes: list[str] = field(default_factory=list)


@dataclass
class _Writer:
    """The state of one netx write: the open ``/layer`` group, the lowered graph and its integers."""

    root: Any
    lowered: IRGraph
    integers: dict[str, np.ndarray]
    qnet: QuantizedNetwork
    layers: list[NetxLayer] = field(default_factory=list)
    group: Any = None  # the conv layer whose neuron comes next


NetxHandler = Callable[[_Writer, str, ops.Op], None]
#: The netx layer each op of the lowered graph becomes (lava-dl 0.6.0 lava/lib/dl/netx/hdf5.py).
NETX_LAYERS: OpTable[NetxHandler] = OpTable("netx export")


@NETX_LAYERS.register(ops.Input)
def _input(w: _Writer, name: str, op: ops.Input) -> None:
    shape = tuple(int(d) for d in w.lowered.meta(name)["shape"])
    group = w.root.create_group(str(len(w.layers)))
    _string(group, "type", "input")
    group.create_dataset("shape", data=np.array(shape))
    w.layers.append(NetxLayer(len(w.layers), "input", shape))


@NETX_LAYERS.register(ops.PoissonEncode, ops.MaxCumulativeReadout, ops.Output)
def _host(w: _Writer, name: str, op: ops.Op) -> None:
    """Runs on the host, not the chip: the encoder makes the input spikes, the readout reads the
    output layer's current (saec.targets.quantize.QuantizedNetwork.reconstruct)."""


@NETX_LAYERS.register(ops.Conv2d)
def _conv(w: _Writer, name: str, op: ops.Conv2d) -> None:
    shape = tuple(int(d) for d in w.lowered.meta(name)["shape"])
    layer = str(w.lowered.meta(name).get("layer", name))
    q = w.qnet.layers[name]
    group = w.root.create_group(str(len(w.layers)))
    _string(group, "type", "conv")
    group.create_dataset("shape", data=np.array(shape))
    group.create_dataset("inChannels", data=op.in_channels)
    group.create_dataset("outChannels", data=op.out_channels)
    group.create_dataset("kernelSize", data=np.array(op.kernel_size))
    group.create_dataset("stride", data=np.array(op.stride))
    group.create_dataset("padding", data=np.array(op.padding))
    group.create_dataset("dilation", data=np.array([1, 1]))
    group.create_dataset("groups", data=1)
    # 9-bit integers: int16 (netx reads any integer type), compressed
    group.create_dataset("weight", data=np.asarray(w.integers[f"{name}.weight"], dtype=np.int16), compression="gzip")
    if q.bias is not None:
        # netx passes the bias as lava's bias mantissa, exponent 6: the chip adds bias << 6
        group.create_dataset("bias", data=(np.asarray(w.integers[f"{name}.bias"]) >> LOIHI_ACT_SHIFT).astype(np.int32))
    # saec's own record (netx ignores attributes): the float meaning of the integers
    group.attrs["saec_node"] = name
    group.attrs["saec_layer"] = layer
    group.attrs["scale"] = float(q.scale)
    group.attrs["decay"] = float(q.decay)
    w.group = group
    w.layers.append(NetxLayer(len(w.layers), "conv", shape, name, layer))


@NETX_LAYERS.register(ops.LIF)
def _neuron(w: _Writer, name: str, op: ops.LIF) -> None:
    q = w.qnet.layers[w.lowered.inputs(name)[0]]
    neuron = w.group.create_group("neuron")
    _string(neuron, "type", "CUBA")
    neuron.create_dataset("iDecay", data=NETX_CURRENT_DECAY)
    neuron.create_dataset("vDecay", data=int(q.decay_register))
    neuron.create_dataset("vThMant", data=int(q.threshold))
    neuron.create_dataset("refDelay", data=1)
    neuron.create_dataset("gradedSpike", data=False)


NETX_LAYERS.refuse(ops.SumPool2d, "lava-dl 0.6.0 netx cannot load pool layers (lava/lib/dl/netx/hdf5.py raises "
                                  "NotImplementedError for 'pool')")
NETX_LAYERS.refuse((ops.ConvTranspose2d, ops.Linear),
                   "netx files get convolutions only (saec lowers these exactly first; one left means the "
                   "lowering could not express it)")
NETX_LAYERS.refuse((ops.Flatten, ops.Unflatten),
                   "netx's loader has no reshape between convolutions (a flat output layer is not supported)")
NETX_LAYERS.refuse((ops.ReLU, ops.Reparameterize, ops.LeakyIntegrator),
                   "not a spiking layer: netx files hold CUBA spiking networks")


def lower_for_netx(qnet: QuantizedNetwork) -> tuple[IRGraph, dict[str, np.ndarray]]:
    """The quantised network as a chain of convolutions: (lowered graph, integer weights by node).

    Raises:
        UserError: an op netx cannot load (a pooling layer), or one the lowering cannot express (a
            transposed convolution with stride > 1, a linear with a bias before an unflatten); the
            path names the spec's layer.
    """
    graph = qnet.graph
    integers = {}
    for node, q in qnet.layers.items():
        integers[f"{node}.weight"] = q.weight
        if q.bias is not None:
            integers[f"{node}.bias"] = q.bias
    try:
        lowered, weights = lower_for_nir(graph, integers)
    except CompileError as exc:
        layer = graph.meta(exc.node).get("layer", exc.node) if exc.node in graph else exc.node
        raise UserError(f"cannot be written as netx layers: {exc.message}", path=f"layers.{layer}") from None
    for name in lowered.order():
        try:
            NETX_LAYERS.lookup(lowered.op(name), node=name)
        except UnsupportedOp as exc:
            raise UserError(exc.message, path=f"layers.{lowered.meta(name).get('layer', name)}") from None
    return lowered, weights


def write_netx(qnet: QuantizedNetwork, path: str | Path) -> NetxFile:
    """Write ``qnet`` (quantised for Loihi) as a lava-dl netx HDF5 file.

    Args:
        qnet: from :func:`saec.targets.quantize.quantize` with the ``loihi`` profile.
        path: the file to write (overwritten).
    Returns:
        The layers written, in file order (``/layer/0`` is the input).
    Raises:
        UserError: not a Loihi-quantised network, or a layer netx cannot express (nothing is written).
    """
    import h5py

    if qnet.target != "loihi":
        raise UserError(f"netx files are for loihi; this network is quantised for {qnet.target}", path="--target")
    lowered, integers = lower_for_netx(qnet)
    with h5py.File(path, "w") as f:
        f.attrs["generator"] = f"saec {__version__}"
        f.attrs["saec_network"] = str(qnet.graph.attrs.get("name", ""))
        f.attrs["timesteps"] = int(qnet.graph.attrs.get("timesteps", 1))
        writer = _Writer(f.create_group("layer"), lowered, integers, qnet)
        for name in lowered.order():
            NETX_LAYERS.lookup(lowered.op(name), node=name)(writer, name, lowered.op(name))
    notes = [
        "every synapse is a netx conv (saec's exact NIR lowerings); lava's conv synapse delivers a step's "
        "spikes one step later, so layer i's spikes lag the input by i steps in lava",
        "the readout (the output layer's cumulative potential) runs on the host; the chip gives spikes",
    ]
    return NetxFile(Path(path), writer.layers, int(qnet.graph.attrs.get("timesteps", 1)), notes)


def _string(group, name: str, value: str) -> None:
    """A string the way slayer's export_hdf5 writes it (fixed-length ASCII, shape (1,)), which netx decodes."""
    group.create_dataset(name, (1,), "S10", [value.encode("ascii")])


def read_netx_layers(path: str | Path) -> list[dict]:
    """The layers of a netx file as plain dicts (type, shape, and for conv layers the neuron registers,
    weight and the saec attributes): for tests and reports, without lava."""
    import h5py

    out = []
    with h5py.File(path, "r") as f:
        for key in sorted(f["layer"], key=int):
            group = f["layer"][key]
            entry = {"type": group["type"][0].decode("ascii"), "shape": tuple(int(d) for d in group["shape"][()])}
            if "neuron" in group:
                neuron = group["neuron"]
                entry["neuron"] = {"type": neuron["type"][0].decode("ascii"),
                                   **{k: neuron[k][()].item() for k in ("iDecay", "vDecay", "vThMant", "refDelay")}}
                entry["weight"] = group["weight"][()]
                entry["bias"] = group["bias"][()] if "bias" in group else None
                for k in ("kernelSize", "stride", "padding"):
                    entry[k] = tuple(int(d) for d in group[k][()])
                entry.update({k: (v.decode() if isinstance(v, bytes) else v) for k, v in group.attrs.items()})
            out.append(entry)
    return out
