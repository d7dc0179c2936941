"""Training memory estimate of a compiled graph, and the machine's memory it is compared with.

An estimate, meant to catch specs that cannot train at all (a 10^6 x 10^6
layer, T = 10^9) before an allocator fails deep inside training; it is not a
precise budget. Bytes, float32 throughout:

- parameters: weights, their gradients and the optimizer state (Adam/AdamW:
  two moments; SGD: one momentum buffer), 4 bytes each;
- activations: every node's output per example and time step, kept for the
  backward pass, times T and the batch; a LIF layer keeps four tensors of its
  size (input current, membrane potential, spikes, cumulative potential U),
  any other node one.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable

from saec.compiler import ops
from saec.compiler.dispatch import OpTable
from saec.compiler.graph import IRGraph

FLOAT_BYTES = 4
#: op -> tensors of its output size a node keeps per example and step for the backward pass.
KEPT_TENSORS: OpTable[Callable[[ops.Op], int]] = OpTable("training memory")
# input current, membrane potential, spikes, cumulative potential U
KEPT_TENSORS.add(ops.LIF, lambda op: 4)
KEPT_TENSORS.register(ops.Input, ops.Output, ops.PoissonEncode, ops.Conv2d, ops.ConvTranspose2d, ops.Linear,
                      ops.Flatten, ops.Unflatten, ops.ReLU, ops.Reparameterize, ops.LeakyIntegrator, ops.SumPool2d,
                      ops.MaxCumulativeReadout)(lambda op: 1)  # its output
#: Copies of the parameters training holds: weights, gradients and the optimizer's state.
PARAM_COPIES = {"adam": 4, "adamw": 4, "sgd": 3}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes training is expected to need."""

    params_bytes: int  # parameters + gradients + optimizer state
    activation_bytes: int  # over T and the batch
    largest_node: str  # the node with the largest share (parameters or activations)

    @property
    def total_bytes(self) -> int:
        return self.params_bytes + self.activation_bytes


def estimate_training_memory(graph: IRGraph, batch_size: int, optimizer: str = "adam") -> MemoryEstimate:
    """Estimate the memory one training step needs (after the ``shapes`` and ``params`` passes).

    Args:
        graph: the compiled IR (``meta['shape']`` and ``meta['params']`` filled in).
        batch_size: examples per step.
        optimizer: ``adam``, ``adamw`` or ``sgd`` (how many copies of the parameters exist).
    Returns:
        A :class:`MemoryEstimate` (bytes).
    """
    timesteps = int(graph.attrs.get("timesteps", 1))
    copies = PARAM_COPIES.get(optimizer, 4)
    params_bytes = activation_bytes = 0
    largest, largest_bytes = "", -1
    for name in graph.order():
        meta = graph.meta(name)
        op = graph.op(name)
        kept = KEPT_TENSORS.lookup(op, node=name)(op)
        p = meta.get("params", 0) * FLOAT_BYTES * copies
        a = math.prod(meta.get("shape", ())) * kept * FLOAT_BYTES * timesteps * batch_size
        params_bytes += p
        activation_bytes += a
        if p + a > largest_bytes:
            largest, largest_bytes = name, p + a
    return MemoryEstimate(params_bytes, activation_bytes, largest)


def machine_memory_bytes() -> int:
    """Physical memory of this machine (bytes); the limit training memory is checked against.

    ``SAEC_MEMORY_LIMIT`` (bytes) overrides it, e.g. for a GPU with less memory than its host.
    """
    override = os.environ.get("SAEC_MEMORY_LIMIT", "")
    if override.isdigit():
        return int(override)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 1 << 40


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units, e.g. ``6.1 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover
