"""Lowerings that make an IR graph expressible in NIR, exactly.

NIR has no transposed convolution and no reshape back from flat to C x H x W,
so three rewrites turn every synapse of an auto-encoder into a ``Conv2d``
(docs/deployment.md). Each is exact in real arithmetic; float64 runs of the
graph before and after give identical spikes (tests/exporters/test_lower_nir.py).

- :func:`lower_conv_transpose`: ConvTranspose2d(w), stride 1, padding p ==
  Conv2d(w.transpose(0, 1).flip(-1, -2), padding k - 1 - p).
- :func:`lower_linear_unflatten`: Linear(n -> C*H*W) + Unflatten(C, H, W) ==
  Unflatten(n, 1, 1) + Conv2d(n -> C, kernel H x W, padding (H-1, W-1)),
  weight reshaped to [C, n, H, W] and flipped.
- :func:`lower_flatten_linear`: Flatten(C, H, W) + Linear(C*H*W -> n) ==
  Conv2d(C -> n, kernel H x W) + Flatten; the Flatten then moves on past
  element-wise neurons, so a chain of linears becomes a chain of convolutions
  (1 x 1 on n x 1 x 1 activations).
- :func:`fold_reshapes`: a Flatten followed by an Unflatten back to the same
  shape (or the reverse) is the identity and goes.

The passes are graph-only (``fn(graph) -> bool``, like every pass) and
torch-free. Node names survive, so weights stay keyed ``<node>.weight``; each
rewritten node records in ``meta['weight_transforms']`` how its weight changes,
and :func:`lower_weights` applies that to a state dict. :func:`lower_for_nir`
does both.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from saec.compiler import ops
from saec.compiler.errors import CompileError
from saec.compiler.graph import IRGraph
from saec.compiler.passes.params import weight_shapes
from saec.compiler.passes.shapes import fmt, infer_shapes
from saec.compiler.pipeline import register_flow, register_pass, run_flow

#: Ops that act on each neuron alone, so a reshape commutes with them.
ELEMENTWISE = (ops.LIF, ops.ReLU)


# ---------------------------------------------------------------- graph surgery
def _shape(graph: IRGraph, name: str) -> tuple[int, ...]:
    return tuple(graph.meta(name)["shape"])


def _only_user(graph: IRGraph, name: str) -> str | None:
    users = graph.users(name)
    return users[0] if len(users) == 1 else None


def _replace_input(graph: IRGraph, node: str, old: str, new: str) -> None:
    graph.rewire(node, tuple(new if i == old else i for i in graph.inputs(node)))


def _detach(graph: IRGraph, name: str) -> None:
    """Take single-input node ``name`` out of the chain: its users read its input instead."""
    (src,) = graph.inputs(name)
    for user in graph.users(name):
        _replace_input(graph, user, name, src)
    graph.rewire(name, ())


def _insert_after(graph: IRGraph, name: str, anchor: str) -> None:
    """Put detached node ``name`` right after ``anchor``: anchor's users read ``name`` instead."""
    for user in graph.users(anchor):
        _replace_input(graph, user, anchor, name)
    graph.rewire(name, (anchor,))


def _move_after(graph: IRGraph, name: str, anchor: str) -> None:
    _detach(graph, name)
    _insert_after(graph, name, anchor)


def _bypass(graph: IRGraph, name: str) -> None:
    _detach(graph, name)
    graph.remove(name)


def _record_lowering(graph: IRGraph, name: str, new_op: ops.Op, transform: dict[str, Any]) -> None:
    """Replace the op of ``name`` and note how its weight must change."""
    old_op = graph.op(name)
    meta = graph.meta(name)
    meta.setdefault("lowered_from", ops.op_to_dict(old_op))
    step = {**transform, "from_shape": list(weight_shapes(old_op)["weight"])}
    meta["weight_transforms"] = [*meta.get("weight_transforms", []), step]
    graph.replace_op(name, new_op)


# ---------------------------------------------------------------- passes
def lower_conv_transpose(graph: IRGraph) -> bool:
    """Rewrite every stride-1 ConvTranspose2d as the Conv2d it equals.

    Raises:
        CompileError: a stride > 1 (a transposed convolution then inserts zeros
            between inputs, which no NIR node does) or a padding larger than
            kernel - 1 (the equivalent convolution would need cropping).
    """
    changed = False
    for name in list(graph.nodes(ops.ConvTranspose2d)):
        op = graph.op(name)
        if op.stride != (1, 1):
            raise CompileError(
                f"a transposed convolution with stride {fmt(op.stride)} has no NIR equivalent "
                "(NIR has no transposed convolution; only stride 1 lowers to a convolution)", node=name)
        (kh, kw), (ph, pw) = op.kernel_size, op.padding
        if ph > kh - 1 or pw > kw - 1:
            raise CompileError(
                f"a transposed convolution with padding {fmt(op.padding)} > kernel {fmt(op.kernel_size)} - 1 "
                "has no NIR equivalent (its convolution would need cropping)", node=name)
        conv = ops.Conv2d(in_channels=op.in_channels, out_channels=op.out_channels, kernel_size=op.kernel_size,
                          stride=(1, 1), padding=(kh - 1 - ph, kw - 1 - pw), bias=op.bias,
                          init_std_factor=op.init_std_factor)
        _record_lowering(graph, name, conv, {"kind": "conv_transpose_to_conv"})
        changed = True
    if changed:
        infer_shapes(graph)
    return changed


def lower_linear_unflatten(graph: IRGraph) -> bool:
    """Rewrite Linear(n -> C*H*W) [+ element-wise neurons] + Unflatten(C, H, W) as
    Unflatten(n, 1, 1) + Conv2d(n -> C, kernel H x W, padding (H-1, W-1)) [+ neurons].

    On an n x 1 x 1 input padded by (H-1, W-1), output (c, h, w) of the
    convolution sees input i only through kernel tap (H-1-h, W-1-w), so the
    kernel is the linear weight reshaped to [C, H, W, n], moved to [C, n, H, W]
    and flipped.

    Raises:
        CompileError: the linear has a bias (one per output position; a
            convolution's bias is one per channel).
    """
    changed = False
    for unflat in list(graph.nodes(ops.Unflatten)):
        target = tuple(graph.op(unflat).shape)
        if len(target) != 3:
            continue
        # Walk back over element-wise neurons that feed only this chain.
        src = graph.inputs(unflat)[0]
        between: list[str] = []
        while isinstance(graph.op(src), ELEMENTWISE) and _only_user(graph, src) is not None:
            between.append(src)
            src = graph.inputs(src)[0]
        if not isinstance(graph.op(src), ops.Linear) or _only_user(graph, src) is None:
            continue
        linear, op = src, graph.op(src)
        if op.bias:
            raise CompileError(
                "a linear layer with a bias followed by an unflatten has no NIR equivalent (its bias is one "
                "per output position; the convolution it lowers to has one per channel)", node=linear)
        c, h, w = target
        n = op.in_features
        # Unflatten moves in front of the linear and now shapes its input as n x 1 x 1.
        _detach(graph, unflat)
        graph.replace_op(unflat, ops.Unflatten(shape=(n, 1, 1)))
        _insert_after(graph, unflat, graph.inputs(linear)[0])
        conv = ops.Conv2d(in_channels=n, out_channels=c, kernel_size=(h, w), stride=(1, 1),
                          padding=(h - 1, w - 1), bias=False, init_std_factor=op.init_std_factor)
        _record_lowering(graph, linear, conv, {"kind": "linear_unflatten_to_conv", "out_shape": [c, h, w]})
        changed = True
    if changed:
        infer_shapes(graph)
    return changed


def lower_flatten_linear(graph: IRGraph) -> bool:
    """Rewrite Flatten(C, H, W) + Linear(C*H*W -> n) as Conv2d(C -> n, kernel H x W) + Flatten,
    and move each Flatten past element-wise neurons; repeat until nothing changes.

    The convolution's kernel is the linear weight reshaped to [n, C, H, W]. A
    Flatten that ends up in front of an Unflatten is left for
    :func:`fold_reshapes`; one that ends in front of anything else (a graph
    with a flat output) stays and is exported as NIR Flatten.
    """
    changed = False
    progress = True
    while progress:
        progress = False
        for flat in list(graph.nodes(ops.Flatten)):
            in_shape = _shape(graph, graph.inputs(flat)[0])
            user = _only_user(graph, flat)
            if user is None or len(in_shape) != 3:
                continue
            op = graph.op(user)
            if isinstance(op, ops.Linear):
                c, h, w = in_shape
                conv = ops.Conv2d(in_channels=c, out_channels=op.out_features, kernel_size=(h, w), stride=(1, 1),
                                  padding=(0, 0), bias=op.bias, init_std_factor=op.init_std_factor)
                _record_lowering(graph, user, conv, {"kind": "linear_to_conv", "in_shape": [c, h, w]})
                _move_after(graph, flat, user)
            elif isinstance(op, ELEMENTWISE):
                _move_after(graph, flat, user)
            else:
                continue
            infer_shapes(graph)
            progress = changed = True
    return changed


def fold_reshapes(graph: IRGraph) -> bool:
    """Remove Flatten -> Unflatten pairs that restore the shape, and Unflatten -> Flatten pairs."""
    changed = False
    progress = True
    while progress:
        progress = False
        for first in graph.order():
            if first not in graph or not isinstance(graph.op(first), (ops.Flatten, ops.Unflatten)):
                continue
            second = _only_user(graph, first)
            if second is None:
                continue
            pair = (type(graph.op(first)), type(graph.op(second)))
            before = _shape(graph, graph.inputs(first)[0])
            if pair in ((ops.Flatten, ops.Unflatten), (ops.Unflatten, ops.Flatten)) and \
                    _shape(graph, second) == before:
                _bypass(graph, second)
                _bypass(graph, first)
                progress = changed = True
                break
    if changed:
        infer_shapes(graph)
    return changed


register_pass("lower_conv_transpose", lower_conv_transpose)
register_pass("lower_linear_unflatten", lower_linear_unflatten)
register_pass("lower_flatten_linear", lower_flatten_linear)
register_pass("fold_reshapes", fold_reshapes)
#: The flow that makes a compiled graph expressible in NIR.
NIR_FLOW = ["shapes", "lower_conv_transpose", "lower_linear_unflatten", "lower_flatten_linear", "fold_reshapes",
            "shapes", "lint", "params", "cost"]
register_flow("nir", NIR_FLOW)


# ---------------------------------------------------------------- weights
def _conv_transpose_to_conv(w: np.ndarray, step: Mapping[str, Any]) -> np.ndarray:
    return np.flip(w.transpose(1, 0, 2, 3), axis=(2, 3))


def _linear_to_conv(w: np.ndarray, step: Mapping[str, Any]) -> np.ndarray:
    return w.reshape(w.shape[0], *step["in_shape"])


def _linear_unflatten_to_conv(w: np.ndarray, step: Mapping[str, Any]) -> np.ndarray:
    c, h, wd = step["out_shape"]
    return np.flip(w.reshape(c, h, wd, w.shape[1]).transpose(0, 3, 1, 2), axis=(2, 3))


WEIGHT_TRANSFORMS: dict[str, Callable[[np.ndarray, Mapping[str, Any]], np.ndarray]] = {
    "conv_transpose_to_conv": _conv_transpose_to_conv,
    "linear_to_conv": _linear_to_conv,
    "linear_unflatten_to_conv": _linear_unflatten_to_conv,
}


def lower_weights(graph: IRGraph, state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The weights of the lowered ``graph``, from those of the graph before lowering.

    Args:
        graph: a graph after the lowering passes (nodes carry ``weight_transforms``).
        state: weights of the graph *before* lowering, keyed ``<node>.weight`` /
            ``<node>.bias``; any array type numpy can read (CPU torch tensors too).
    Returns:
        The same keys, as contiguous numpy arrays (same dtype); weights
        transformed, biases unchanged (a bias is per output channel before and after).
    Raises:
        ValueError: a weight whose shape is not the one the lowering started from.
    """
    out = {key: np.ascontiguousarray(np.asarray(value)) for key, value in state.items()}
    for name in graph.order():
        steps = graph.meta(name).get("weight_transforms", [])
        key = f"{name}.weight"
        for step in steps:
            w = out[key]
            if list(w.shape) != list(step["from_shape"]):
                raise ValueError(f"{key}: expected a weight of shape {step['from_shape']} to lower, "
                                 f"got {list(w.shape)} (already lowered?)")
            out[key] = np.ascontiguousarray(WEIGHT_TRANSFORMS[step["kind"]](w, step))
        if steps and tuple(out[key].shape) != weight_shapes(graph.op(name))["weight"]:
            raise ValueError(f"{key}: lowered weight has shape {list(out[key].shape)}, "
                             f"the op wants {list(weight_shapes(graph.op(name))['weight'])}")
    return out


def lower_for_nir(graph: IRGraph, state: Mapping[str, Any]) -> tuple[IRGraph, dict[str, np.ndarray]]:
    """Lower a copy of ``graph`` with the ``nir`` flow and transform its weights to match.

    Returns:
        (the lowered graph, its weights as numpy arrays keyed by node name).
    Raises:
        CompileError: a node NIR cannot express (see the passes).
    """
    lowered = graph.copy()
    run_flow(lowered, "nir", after="compile")
    return lowered, lower_weights(lowered, state)

