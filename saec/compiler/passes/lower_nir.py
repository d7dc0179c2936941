"""Lowering for NIR: the ``nir`` flow's passes and the weights that go with them.

NIR has no transposed convolution and no reshape back from flat to C x H x W,
so three rewrites turn every synapse of an auto-encoder into a ``Conv2d``
(docs/deployment.md). Each is a pass of its own file, exact in real
arithmetic; float64 runs of the graph before and after give identical spikes
(tests/exporters/test_lower_nir.py):

- :mod:`~saec.compiler.passes.lower_conv_transpose`: ConvTranspose2d(w), stride 1,
  padding p == Conv2d(w.transpose(0, 1).flip(-1, -2), padding k - 1 - p).
- :mod:`~saec.compiler.passes.lower_linear_unflatten`: Linear(n -> C*H*W) +
  Unflatten(C, H, W) == Unflatten(n, 1, 1) + Conv2d(n -> C, kernel H x W,
  padding (H-1, W-1)), weight reshaped to [C, n, H, W] and flipped.
- :mod:`~saec.compiler.passes.lower_flatten_linear`: Flatten(C, H, W) +
  Linear(C*H*W -> n) == Conv2d(C -> n, kernel H x W) + Flatten; the Flatten
  then moves on past element-wise neurons.
- :mod:`~saec.compiler.passes.fold_reshapes`: a Flatten followed by an Unflatten
  back to the same shape (or the reverse) is the identity and goes.

The flow ``nir`` (:data:`saec.compiler.pipeline.FLOWS`) runs them and re-checks
the shapes after each one. The passes are graph-only and torch-free. Node
names survive, so weights stay keyed ``<node>.weight``; each rewritten node
records in ``meta['weight_transforms']`` how its weight changes, and
:func:`lower_weights` applies that to a state dict. :func:`lower_for_nir` does both.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from saec.compiler.graph import IRGraph
from saec.compiler.passes.fold_reshapes import fold_reshapes  # noqa: F401 - the passes, by their old home
from saec.compiler.passes.lower_conv_transpose import lower_conv_transpose  # noqa: F401
from saec.compiler.passes.lower_flatten_linear import lower_flatten_linear  # noqa: F401
from saec.compiler.passes.lower_linear_unflatten import lower_linear_unflatten  # noqa: F401
from saec.compiler.passes.params import weight_shapes
from saec.compiler.passes.rewrite import WEIGHT_TRANSFORMS
from saec.compiler.pipeline import FLOWS, run_flow

#: The flow that makes a compiled graph expressible in NIR (defined in the pipeline).
NIR_FLOW = FLOWS["nir"]


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

