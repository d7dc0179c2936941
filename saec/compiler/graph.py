"""The IR: a networkx DiGraph whose nodes carry an op record and a meta dict.

The op is what the node computes (immutable); ``meta`` is what analyses found
out about it (shape, params, cost) and where it came from (``layer``, ``loc``).
Graph-level attributes (``graph.attrs``) hold model-wide facts the runtime and
exporters need: kind, latent layer, loss weights, the spec's hash.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import networkx as nx

from saec.compiler.ops import Op, op_from_dict, op_to_dict

IR_FORMAT = "saec-ir"
IR_VERSION = 1


class IRGraph:
    """A small typed wrapper over ``nx.DiGraph``; node order is insertion order."""

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        self.nx = nx.DiGraph()
        self.nx.graph.update(attrs or {})

    # -------------------------------------------------------------- building
    @property
    def attrs(self) -> dict[str, Any]:
        return self.nx.graph

    def add(self, name: str, op: Op, inputs: tuple[str, ...] | list[str] = (), **meta: Any) -> str:
        """Add node ``name`` computing ``op`` on ``inputs`` (in argument order)."""
        if name in self.nx:
            raise ValueError(f"node {name!r} already exists")
        for src in inputs:
            if src not in self.nx:
                raise ValueError(f"node {name!r}: unknown input {src!r}")
        self.nx.add_node(name, op=op, meta=dict(meta), inputs=tuple(inputs))
        for src in inputs:
            self.nx.add_edge(src, name)
        return name

    def replace_op(self, name: str, op: Op) -> None:
        self.nx.nodes[name]["op"] = op

    def remove(self, name: str) -> None:
        self.nx.remove_node(name)
        for n in self.nx.nodes:
            ins = self.nx.nodes[n]["inputs"]
            if name in ins:
                self.nx.nodes[n]["inputs"] = tuple(i for i in ins if i != name)

    def rewire(self, name: str, inputs: tuple[str, ...]) -> None:
        """Make ``inputs`` the inputs of ``name``."""
        for src in list(self.nx.predecessors(name)):
            self.nx.remove_edge(src, name)
        for src in inputs:
            self.nx.add_edge(src, name)
        self.nx.nodes[name]["inputs"] = tuple(inputs)

    # -------------------------------------------------------------- reading
    def op(self, name: str) -> Op:
        return self.nx.nodes[name]["op"]

    def meta(self, name: str) -> dict[str, Any]:
        return self.nx.nodes[name]["meta"]

    def inputs(self, name: str) -> tuple[str, ...]:
        return self.nx.nodes[name]["inputs"]

    def users(self, name: str) -> list[str]:
        return list(self.nx.successors(name))

    def __contains__(self, name: str) -> bool:
        return name in self.nx

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def order(self) -> list[str]:
        """Node names in a topological order (stable: insertion order breaks ties)."""
        rank = {n: i for i, n in enumerate(self.nx.nodes)}
        return list(nx.lexicographical_topological_sort(self.nx, key=lambda n: rank[n]))

    def nodes(self, op_type: type[Op] | tuple[type[Op], ...] | None = None) -> Iterator[str]:
        """Names in topological order, optionally only of the given op type(s)."""
        for n in self.order():
            if op_type is None or isinstance(self.op(n), op_type):
                yield n

    def with_op(self, name: str, **changes: Any) -> Op:
        """A copy of node ``name``'s op with fields changed (ops are immutable)."""
        return replace(self.op(name), **changes)

    def copy(self) -> "IRGraph":
        return IRGraph.from_dict(self.to_dict())

    # -------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": IR_FORMAT,
            "version": IR_VERSION,
            "attrs": _jsonable(dict(self.attrs)),
            "nodes": [
                {
                    "name": n,
                    "op": op_to_dict(self.op(n)),
                    "inputs": list(self.inputs(n)),
                    "meta": _jsonable(self.meta(n)),
                }
                # topological, so that from_dict can add each node after its inputs (a rewrite that rewires
                # nodes, as the NIR lowerings do, can leave insertion order no longer topological)
                for n in self.order()
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IRGraph":
        if data.get("format") != IR_FORMAT:
            raise ValueError(f"not a saec IR document (format {data.get('format')!r})")
        if data.get("version") != IR_VERSION:
            raise ValueError(f"unsupported saec IR version {data.get('version')!r}")
        graph = cls(data.get("attrs", {}))
        for node in data["nodes"]:
            meta = {k: tuple(v) if k == "shape" else v for k, v in node.get("meta", {}).items()}
            graph.add(node["name"], op_from_dict(node["op"]), tuple(node["inputs"]), **meta)
        return graph

    def to_json(self, summary: dict[str, Any] | None = None) -> str:
        doc = self.to_dict()
        if summary is not None:
            doc = {"summary": summary, **doc}
        return json.dumps(doc, indent=1)

    @classmethod
    def read_json(cls, path: str | Path) -> "IRGraph":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IRGraph) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"IRGraph({len(self)} nodes: {', '.join(self.nx.nodes)})"


def _jsonable(value: Any) -> Any:
    """Round tuples to lists recursively so JSON round-trips compare equal."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
