"""Which implementation runs a LIF scan, and a fused kernel's parameter record for a LIF op.

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

The op's fields are decoded into the kernels' integer flags in one place, the
op itself (:attr:`saec.compiler.ops.LIF.kernel_mode`); :func:`kernel_params`
adds the sizes, the constants and what this scan writes.
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal

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
    mode = op.kernel_mode  # the op decodes its fields (saec.compiler.ops.LIF.kernel_mode)
    reset_cut = for_backward and mode.reset_cut
    floor_cut = for_backward and mode.floor_cut
    gate_mode = mode.gate_mode if for_backward else 0
    if gate_mode == 2 and not _floor_value_fires(op, dtype):
        gate_mode = 1  # where the floor value cannot spike, "fired and not floored" is just "fired"
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


def _floor_value_fires(op: LIF, dtype: torch.dtype) -> bool:
    """Whether a neuron set to the floor value passes the spike test, compared in ``dtype``."""
    fv, thr = torch.tensor(op.floor_value, dtype=dtype), torch.tensor(op.threshold, dtype=dtype)
    return bool(fv >= thr) if op.spike_when == "ge" else bool(fv > thr)
