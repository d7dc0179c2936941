"""The runtime's execution plan, computed from the IR into ``meta["exec"]`` of every node.

The layer-wise forward (:mod:`saec.runtime.layerwise`) needs a few facts about
the graph that do not change from one batch to the next: when a value may be
freed, which reshapes the synapses after them can take over, which layouts a
synapse should hand out, which cumulative potential a LIF layer must return.
This pass derives them once, from the graph alone (a pure function of the IR;
no torch), and writes them as plain JSON values:

- every node: ``frees``, the inputs whose last user this node is (the walk drops
  them after the node has run, so their memory can be reused early);
- Flatten / Unflatten: ``defer_reshape``, true when every user is a synapse: on the
  fast path, a spike train then passes unreshaped and each synapse reshapes it row
  chunk by row chunk;
- Conv2d / ConvTranspose2d / Linear: ``contiguous_out``, true when the LIF layer it
  drives is read next by a Linear (through flattens): its current is kept contiguous
  so the spikes need no layout change before the matrix product; and ``out_sample``
  ([C, H, W] or null), for a Linear whose LIF layer feeds one Unflatten into
  convolutions only: the Linear hands out its current already unflattened
  (channels-last on the CPU) and the LIF layer, being elementwise, runs on it so;
- LIF: ``cumulative``, the cumulative potential U the layer must return ("all" for
  the readout, "last" for a loss on U(T), else "none"), and ``u_last``, whether a
  loss term reads U(T) of its layer.

``graph.attrs["exec_plan"]`` records a digest of what the plan was computed from
(nodes, ops, edges, layer names, the loss terms' layers): :func:`plan_is_current`
tells whether a graph's plan still fits it, so a transformed or hand-edited graph
is planned afresh. The compile flow runs the pass (:func:`exec_plan_pass`), so
``ir.json`` carries the plan the runtime runs; the runtime plans a copy
(:func:`planned_copy`) of a graph without a current plan (a lowered, imported or
hand-built graph), leaving the caller's graph as it was.
"""

from __future__ import annotations

import hashlib
import json
from copy import deepcopy

from saec.compiler import ops
from saec.compiler.dispatch import OpTable
from saec.compiler.graph import IRGraph

#: The node meta key the plan is written to.
META_KEY = "exec"
#: The graph attribute holding the digest of what the plan was computed from.
ATTR_KEY = "exec_plan"
#: Loss terms that read U(T) of their layers.
U_LAST_TERMS = ("p1", "p2")


def u_last_layers(graph: IRGraph) -> set[str]:
    """Names of the layers whose U(T) a loss term (P1, P2) reads, from ``graph.attrs["losses"]``."""
    losses = graph.attrs.get("losses", {})
    layers: set[str] = set()
    for term in U_LAST_TERMS:
        if losses.get(term):
            layers.update(losses[term]["layers"])
    return layers


def structure_digest(graph: IRGraph) -> str:
    """sha256 of everything the plan depends on: node names, ops, inputs, layer names, U(T) layers."""
    nodes = [(name, ops.op_to_dict(graph.op(name)), list(graph.inputs(name)), graph.meta(name).get("layer"))
             for name in graph.order()]
    doc = {"nodes": nodes, "u_last": sorted(u_last_layers(graph))}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def plan_is_current(graph: IRGraph) -> bool:
    """True when ``graph`` carries a plan computed from its present structure."""
    recorded = graph.attrs.get(ATTR_KEY)
    return (isinstance(recorded, dict) and recorded.get("digest") == structure_digest(graph)
            and all(META_KEY in graph.meta(name) for name in graph.order()))


def plan_execution(graph: IRGraph) -> IRGraph:
    """Write the execution plan into ``meta["exec"]`` of every node of ``graph`` (in place).

    Args:
        graph: an IR graph; nodes, ops, inputs and ``meta["layer"]`` are read, shapes are not.

    Returns:
        ``graph`` itself, each node's ``meta["exec"]`` set (see the module docstring) and
        ``attrs["exec_plan"]`` recording the structure digest.
    """
    order = graph.order()
    position = {name: i for i, name in enumerate(order)}
    u_last = u_last_layers(graph)
    for name in order:
        op = graph.op(name)
        plan: dict = {"frees": _frees(graph, name, position)}
        plan.update(PLAN_RULES.lookup(op, node=name)(graph, name, u_last))
        graph.meta(name)[META_KEY] = plan
    graph.attrs[ATTR_KEY] = {"digest": structure_digest(graph)}
    return graph


#: The op-specific part of each node's plan: (graph, node, layers whose U(T) a loss reads) -> plan fields.
PLAN_RULES: OpTable = OpTable("execution plan")


@PLAN_RULES.register(ops.Flatten, ops.Unflatten)
def _plan_reshape(graph: IRGraph, name: str, u_last: set[str]) -> dict:
    users = graph.users(name)
    return {"defer_reshape": bool(users) and all(graph.op(u).has_weights for u in users)}


@PLAN_RULES.register(ops.Conv2d, ops.ConvTranspose2d, ops.Linear)
def _plan_synapse(graph: IRGraph, name: str, u_last: set[str]) -> dict:
    return {"contiguous_out": any(isinstance(graph.op(u), ops.LIF) and _read_by_linear(graph, u)
                                  for u in graph.users(name)),
            "out_sample": _early_unflatten(graph, name)}


@PLAN_RULES.register(ops.LIF)
def _plan_lif(graph: IRGraph, name: str, u_last: set[str]) -> dict:
    reads_u_last = graph.meta(name).get("layer") in u_last
    readout = _read_by_readout(graph, name)
    return {"u_last": reads_u_last, "cumulative": "all" if readout else ("last" if reads_u_last else "none")}


def _read_by_readout(graph: IRGraph, node: str) -> bool:
    """True when the max-cumulative readout reads ``node``'s U, directly or through Flatten / Unflatten
    (a flat output layer reshaped to the input's shape, as on Xylo)."""
    return any(isinstance(graph.op(u), ops.MaxCumulativeReadout)
               or (isinstance(graph.op(u), (ops.Flatten, ops.Unflatten)) and _read_by_readout(graph, u))
               for u in graph.users(node))


@PLAN_RULES.register(ops.Input, ops.Output, ops.PoissonEncode, ops.ReLU, ops.Reparameterize,
                     ops.LeakyIntegrator, ops.SumPool2d, ops.MaxCumulativeReadout)
def _plan_nothing_more(graph: IRGraph, name: str, u_last: set[str]) -> dict:
    return {}  # these run as they are: only "frees" applies


def exec_plan_pass(graph: IRGraph) -> bool:
    """The pipeline's form of :func:`plan_execution`: plans ``graph`` unless its plan is current.

    Returns:
        True when the plan was (re)written.
    """
    if plan_is_current(graph):
        return False
    plan_execution(graph)
    return True


def planned_copy(graph: IRGraph) -> IRGraph:
    """A copy of ``graph`` with the execution plan written in; ``graph`` itself is left as it is.

    Nodes are copied in topological order (a rewired graph's insertion order need not be one),
    so the copy's :meth:`~saec.compiler.graph.IRGraph.order` is the original's.
    """
    copy = IRGraph(deepcopy(dict(graph.attrs)))
    for name in graph.order():
        copy.add(name, graph.op(name), graph.inputs(name), **deepcopy(graph.meta(name)))
    return plan_execution(copy)


def _frees(graph: IRGraph, name: str, position: dict[str, int]) -> list[str]:
    """The inputs of ``name`` that no node after it reads."""
    return [i for i in dict.fromkeys(graph.inputs(name))
            if max(position[u] for u in graph.users(i)) == position[name]]


def _read_by_linear(graph: IRGraph, node: str) -> bool:
    """True when a Linear reads ``node``'s output, directly or through Flatten nodes."""
    return any(isinstance(graph.op(u), ops.Linear)
               or (isinstance(graph.op(u), ops.Flatten) and _read_by_linear(graph, u))
               for u in graph.users(node))


def _early_unflatten(graph: IRGraph, name: str) -> list[int] | None:
    """For a Linear -> LIF -> Unflatten(C, H, W) -> convolutions chain: [C, H, W]; else None."""
    chain = [name]
    while len(chain) < 3 and len(graph.users(chain[-1])) == 1:
        chain.append(graph.users(chain[-1])[0])
    if [graph.op(n).type for n in chain] != [ops.Linear.type, ops.LIF.type, ops.Unflatten.type]:
        return None
    unflatten = chain[2]
    shape = graph.op(unflatten).shape
    readers = graph.users(unflatten)
    convolutions = {ops.Conv2d.type, ops.ConvTranspose2d.type}
    if len(shape) == 3 and readers and all(graph.op(u).type in convolutions for u in readers):
        return list(shape)
    return None
