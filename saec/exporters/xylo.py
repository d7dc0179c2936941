"""Xylo export: a dense network as the NIR graph rockpool maps onto Xylo Audio 2 (a pure function).

rockpool 3.1.0 reads NIR with ``rockpool.nn.modules.from_nir`` and maps it with
``rockpool.devices.xylo.syns61201.mapper``; the mapper needs current-based neurons
(``nir.CubaLIF``: a synaptic current and a membrane) and turns each time constant into a bit
shift, ``dash = log2(tau / dt)``, with ``dt`` taken as ``min(tau_mem / (1 + r))``. So
:func:`xylo_nir` writes, per spiking layer, ``nir.Linear`` (the float weights) and
``nir.CubaLIF`` with:

- ``tau_mem = dt * 2**dash_mem``, dash_mem the chip's decay register for saec's decay
  (``saec.targets.fit.chip_decay``: decay 1 - 2**-dash_mem);
- ``tau_syn = dt * 2**dash_syn`` with dash_syn = 1, Xylo's shortest synaptic decay (0 would clear
  every input; saec's own neuron has no synaptic current);
- ``r = 2**dash_mem - 1``, so that rockpool infers the chip's ``dt`` (saec's NIR ``r`` is
  written for the NIR dt and would make rockpool pick a dt the mapper rejects);
- ``v_threshold`` saec's threshold, ``v_leak`` 0 (Xylo takes no weight biases).

This is rockpool's reading of NIR, not standard NIR semantics: ``CubaLIF`` resets to ``v_reset``,
while rockpool's neurons and Xylo subtract the threshold (the network's ``reset: subtract``);
saec's standard ``--format nir`` refuses such a network for that reason.

The weights stay float: rockpool's ``channel_quantize`` makes the integers, and saec's Xylo
quantiser (:func:`saec.targets.quantize.quantize_xylo`) makes the same ones, which is what
``scripts/targets/xylo_verify.py`` checks. The input is the network's flattened input (Xylo's
input channels), the output the last layer's neurons (Xylo's output channels).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import nir
import numpy as np

from saec.compiler import ops
from saec.compiler.graph import IRGraph
from saec.targets.quantize import XYLO_DASH_SYN, XyloNetwork

MODEL_FILE = "model.xylo.nir"
#: Xylo Audio 2's time step as XyloSim defaults to it (rockpool 3.1.0 xylo_sim.py: dt = 1e-3 s)
XYLO_DT = 1e-3


def xylo_nir(qnet: XyloNetwork, weights: Mapping[str, Any], *, dt: float = XYLO_DT,
             metadata: dict[str, Any] | None = None) -> nir.NIRGraph:
    """The NIR graph rockpool maps onto Xylo for a network quantised for ``xylo``.

    Args:
        qnet: the network from ``quantize(graph, weights, load_profile("xylo"))`` (its decay
            registers and layer order).
        weights: the float weights keyed ``<node>.weight`` (written as they are: rockpool
            quantises them).
        dt: the chip's time step in seconds.
        metadata: stored in the graph's metadata.
    Returns:
        ``input -> (Linear -> CubaLIF) per layer -> output``, node names ``fc_<layer>`` and ``lif_<layer>``.
    """
    graph: IRGraph = qnet.graph
    (encode,) = graph.nodes(ops.PoissonEncode)
    n_in = int(np.prod(graph.meta(encode)["shape"]))
    nodes: dict[str, nir.NIRNode] = {"input": nir.Input(input_type={"input": np.array([n_in])})}
    edges: list[tuple[str, str]] = []
    previous = "input"
    for node, q in qnet.layers.items():
        layer = graph.meta(node)["layer"]
        w = np.asarray(weights[f"{node}.weight"], dtype=np.float32)
        n = w.shape[0]
        dash_mem = int(q.decay_register)
        full = lambda value: np.full(n, value, dtype=np.float64)  # noqa: E731
        # prefixed: rockpool treats nodes named input / output as the graph's ends, and a layer may be `output`
        weight_node, neuron_node = f"fc_{layer}", f"lif_{layer}"
        nodes[weight_node] = nir.Linear(weight=w)
        nodes[neuron_node] = nir.CubaLIF(
            tau_syn=full(dt * 2 ** XYLO_DASH_SYN),  # s
            tau_mem=full(dt * 2 ** dash_mem),  # s
            r=full(2 ** dash_mem - 1),  # so that tau_mem / (1 + r) = dt
            v_leak=full(0.0),
            v_threshold=full(float(np.float32(graph.op(q.neuron).threshold))),
            w_in=full(1.0))
        edges += [(previous, weight_node), (weight_node, neuron_node)]
        previous = neuron_node
        n_out = n
    nodes["output"] = nir.Output(output_type={"output": np.array([n_out])})
    edges.append((previous, "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": dt, "target": "xylo", **(metadata or {})})


def write_xylo(path: str | Path, qnet: XyloNetwork, weights: Mapping[str, Any], **options: Any) -> Path:
    """Write :func:`xylo_nir`'s graph to ``path`` (a temporary name first, then renamed).

    Returns:
        ``path``.
    Raises:
        OSError: it cannot be written (nothing is left under ``path`` then).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        nir.write(str(tmp), xylo_nir(qnet, weights, **options))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
