"""How a :class:`~saec.runtime.model.SpikingAutoencoder` runs its layer-wise forward.

One small immutable record, carried by the model and passed down to the LIF scan
and the synapses (no module-global switch): which path (``fast`` or ``reference``),
for the fast path which scan backend (:mod:`saec.runtime.lif.dispatch`), the
per-machine execution plan (:mod:`saec.runtime.plan`: chunk sizes, layouts, the
output layer's algorithm, the pool's threshold), and spike-driven inference. Every
combination of path, backend and plan gives bit-identical spikes; spike-driven
inference gives the same currents within fp32 summation order. The switches exist for
tests and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saec.runtime.lif.dispatch import ScanBackend, check_backend
from saec.runtime.plan import DEFAULT_PLAN, ExecutionPlan

ExecutionPath = Literal["fast", "reference"]
EXECUTION_PATHS: tuple[str, ...] = ("fast", "reference")


@dataclass(frozen=True)
class Execution:
    """How the layer-wise forward runs.

    Attributes:
        path: ``"fast"`` (the default): the fused LIF scan and synapses that keep their
            binary input as bool for backward (:mod:`saec.runtime.fastpath`), row chunks
            and pooled buffers; ``"reference"``: the autograd-oracle scan and plain autograd
            synapses. Same spikes, same gradients (fp32 rounding).
        scan_backend: how the fast path's LIF scan runs: ``"auto"`` (a fused kernel where one
            applies) or ``"torch"`` (torch ops); the reference path ignores it.
        spike_driven: without autograd, the fast path's synapses on spike trains do work only
            where the spikes are (:mod:`saec.runtime.spikedriven`: same currents within fp32
            summation order, so not bit-identical to the other paths); False: dense synapses.
            ``SAEC_SPIKE_DRIVEN=0`` turns it off for the whole process.
        plan: the per-machine choices (:class:`~saec.runtime.plan.ExecutionPlan`); the default
            plan is today's built-in one. Its output-layer algorithm applies on every path (it
            sets the rounding); the rest only on the fast path.

    Raises:
        ValueError: an unknown path or scan backend (on construction).
        TypeError: ``plan`` is not an ExecutionPlan.
    """

    path: ExecutionPath = "fast"
    scan_backend: ScanBackend = "auto"
    spike_driven: bool = True
    plan: ExecutionPlan = DEFAULT_PLAN

    def __post_init__(self) -> None:
        if self.path not in EXECUTION_PATHS:
            raise ValueError(f"execution path must be 'fast' or 'reference', got {self.path!r}")
        check_backend(self.scan_backend)
        if not isinstance(self.spike_driven, bool):
            raise ValueError(f"spike_driven must be True or False, got {self.spike_driven!r}")
        if not isinstance(self.plan, ExecutionPlan):
            raise TypeError(f"plan must be a saec.runtime.plan.ExecutionPlan, got {self.plan!r}")

    @property
    def fast(self) -> bool:
        """True on the fast path."""
        return self.path == "fast"
