"""Which implementation runs a LIF scan, and the LIF record decoded into a fused kernel's flags.

The fast scan (:mod:`saec.runtime.lif.scan`) runs as one fused kernel per layer
where one applies to the tensor (C on the CPU, built on first use; Triton on
CUDA; :mod:`saec.runtime.kernels`), else as torch ops. The caller chooses with a
*scan backend*, an explicit argument (the model carries it in its
:class:`~saec.runtime.execution.Execution`), never a global switch:

- ``"auto"`` (the default): the fused kernel for the tensor's device where one is
  available, else torch ops;
- ``"torch"``: always the torch-op scan.

Both give the same spikes, potentials and gradients; ``"torch"`` exists for
tests and benchmarks (and as the fallback where no kernel can be built).
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from saec.compiler.ops import LIF
from saec.runtime.kernels import cpu_lif, cuda_lif
from saec.runtime.lif.result import CUMULATIVE

ScanBackend = Literal["auto", "torch"]
SCAN_BACKENDS: tuple[str, ...] = ("auto", "torch")


def check_backend(backend: str) -> None:
    """Raise ValueError unless ``backend`` is one of :data:`SCAN_BACKENDS`."""
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"scan backend must be 'auto' or 'torch', got {backend!r}")


def kernel_for(t: Tensor, backend: ScanBackend = "auto") -> ModuleType | None:
    """The fused-kernel module that runs a scan on ``t`` under ``backend``, or None (torch ops).

    Args:
        t: the scan's input (or, in backward, its upstream gradient); its device decides.
        backend: see the module docstring.

    Returns:
        :mod:`~saec.runtime.kernels.cpu_lif`, :mod:`~saec.runtime.kernels.cuda_lif` or None.
    """
    if backend == "torch":
        return None
    if cpu_lif.supports(t):
        return cpu_lif
    if cuda_lif.supports(t):
        return cuda_lif
    return None


class KernelMode(NamedTuple):
    """The LIF record's rules as the fused kernels' integer flags (lif_scan.c's ``LIFParams``)."""

    spike_ge: int  # 1: spike when v >= threshold; 0: v > threshold
    reset: int  # 0 zero, 1 subtract, 2 none
    floor: int  # 0 no floor rule, 1 floor before the spike test (clamp_first), 2 after it
    floor_overlaps_spike: int  # 1: floor after the test and lower_bound > threshold (both can apply)
    integrate: int  # 0: U sums the potential u; 1: U sums the current I
    reset_cut: int  # 1: d u'/d u = 0 at a spike (zero reset, reset_grad="cut")
    floor_cut: int  # 1: the gradient is cut where the floor rule applied (clamp_grad="cut")


def kernel_mode(op: LIF) -> KernelMode:
    """Decode ``op``'s fields into the kernels' flags: the one place that does it."""
    floor = 0 if op.lower_bound is None else (1 if op.clamp_first else 2)
    return KernelMode(
        spike_ge=int(op.spike_when == "ge"), reset=("zero", "subtract", "none").index(op.reset),
        floor=floor, floor_overlaps_spike=int(floor == 2 and op.lower_bound > op.threshold),
        integrate=int(op.integrate == "current"),
        reset_cut=int(op.reset == "zero" and op.reset_grad == "cut"),
        floor_cut=int(floor != 0 and op.clamp_grad == "cut"),
    )


def kernel_params(kernel: ModuleType, op: LIF, T: int, N: int, cumulative: str, for_backward: bool,
                  dtype: torch.dtype):
    """The kernel's parameter record for ``op`` over T steps of N elements (and which masks backward needs).

    Args:
        kernel: the kernel module (its ``LIFParams`` type is filled in).
        op: the neuron's parameters.
        T, N: time steps, elements per step.
        cumulative: which U to write ("none", "last", "all").
        for_backward: also write the masks backward needs (else none are written).
        dtype: the tensors' dtype (decides whether the floor value passes the spike test).
    """
    mode = kernel_mode(op)
    reset_cut = for_backward and mode.reset_cut
    floor_cut = for_backward and mode.floor_cut
    gate_mode = 0
    if for_backward and op.surrogate == "spike_gated":
        gate_mode = 1
        if floor_cut and mode.floor == 1:
            # A neuron set to the floor value spikes only if that value passes the test (in the
            # tensor's dtype); where it cannot, "fired and not floored" is just "fired".
            fv, thr = torch.tensor(op.floor_value, dtype=dtype), torch.tensor(op.threshold, dtype=dtype)
            floor_fires = bool(fv >= thr) if mode.spike_ge else bool(fv > thr)
            gate_mode = 2 if floor_fires else 1
    elif floor_cut and mode.floor == 1:
        gate_mode = 3  # the spike path is cut where the floor rule ran first
    return kernel.LIFParams(
        T=T, N=N, decay=op.decay, threshold=op.threshold,
        lower_bound=0.0 if op.lower_bound is None else op.lower_bound,
        floor_value=0.0 if op.lower_bound is None else op.floor_value,
        grad_decay=op.decay if op.decay_grad else 1.0,
        spike_ge=mode.spike_ge, reset=mode.reset, floor=mode.floor,
        floor_overlaps_spike=mode.floor_overlaps_spike, integrate=mode.integrate,
        cumulative=CUMULATIVE.index(cumulative),
        reset_cut=int(reset_cut), floor_cut=int(floor_cut), gate_mode=gate_mode,
    )
