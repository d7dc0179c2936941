"""Graph surgery shared by the lowering passes, and the registry of their weight transforms.

A lowering replaces a node's op in place (node names survive, so weights stay
keyed ``<node>.weight``) and records in ``meta['weight_transforms']`` how its
weight must change; :func:`saec.compiler.passes.lower_nir.lower_weights`
applies those steps with :data:`WEIGHT_TRANSFORMS`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from saec.compiler import ops
from saec.compiler.graph import IRGraph
from saec.compiler.passes.params import weight_shapes

#: Transform kind -> fn(weight before, the recorded step) -> weight after; each lowering registers its own.
WEIGHT_TRANSFORMS: dict[str, Callable[[np.ndarray, Mapping[str, Any]], np.ndarray]] = {}


def weight_transform(kind: str) -> Callable:
    """Decorator: register ``fn`` as the weight transform recorded as ``kind``."""
    def add(fn: Callable[[np.ndarray, Mapping[str, Any]], np.ndarray]) -> Callable:
        if kind in WEIGHT_TRANSFORMS:
            raise ValueError(f"weight transform {kind!r} registered twice")
        WEIGHT_TRANSFORMS[kind] = fn
        return fn
    return add


def shape_of(graph: IRGraph, name: str) -> tuple[int, ...]:
    return tuple(graph.meta(name)["shape"])


def only_user(graph: IRGraph, name: str) -> str | None:
    users = graph.users(name)
    return users[0] if len(users) == 1 else None


def replace_input(graph: IRGraph, node: str, old: str, new: str) -> None:
    graph.rewire(node, tuple(new if i == old else i for i in graph.inputs(node)))


def detach(graph: IRGraph, name: str) -> None:
    """Take single-input node ``name`` out of the chain: its users read its input instead."""
    (src,) = graph.inputs(name)
    for user in graph.users(name):
        replace_input(graph, user, name, src)
    graph.rewire(name, ())


def insert_after(graph: IRGraph, name: str, anchor: str) -> None:
    """Put detached node ``name`` right after ``anchor``: anchor's users read ``name`` instead."""
    for user in graph.users(anchor):
        replace_input(graph, user, anchor, name)
    graph.rewire(name, (anchor,))


def move_after(graph: IRGraph, name: str, anchor: str) -> None:
    detach(graph, name)
    insert_after(graph, name, anchor)


def bypass(graph: IRGraph, name: str) -> None:
    detach(graph, name)
    graph.remove(name)


def record_lowering(graph: IRGraph, name: str, new_op: ops.Op, transform: dict[str, Any]) -> None:
    """Replace the op of ``name`` and note how its weight must change (``transform['kind']``)."""
    old_op = graph.op(name)
    meta = graph.meta(name)
    meta.setdefault("lowered_from", ops.op_to_dict(old_op))
    step = {**transform, "from_shape": list(weight_shapes(old_op)["weight"])}
    meta["weight_transforms"] = [*meta.get("weight_transforms", []), step]
    graph.replace_op(name, new_op)
