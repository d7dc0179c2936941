"""What every LIF implementation returns (:class:`LIFResult`) and the argument check they share."""

from __future__ import annotations

from typing import Literal, NamedTuple

from torch import Tensor

from saec.compiler.ops import LIF

Cumulative = Literal["none", "last", "all"]
#: The values of :data:`Cumulative`, in the kernels' numbering (index = the kernel's code).
CUMULATIVE = ("none", "last", "all")


class LIFResult(NamedTuple):
    """Outputs of :func:`~saec.runtime.lif.lif_scan` (and of its reference twins).

    spikes: phi(1..T), [T, B, ...], same dtype as the input current, values 0 or 1.
    U: cumulative potential; None (``cumulative="none"``), U(T) [B, ...]
        (``"last"``) or U(1..T) [T, B, ...] (``"all"``).
    u: membrane u(1..T) before the floor rule and the reset, [T, B, ...]
        (only with ``record_potential=True``).
    counts: the spikes summed over time [B, ...], differentiable (only with ``counts=True``).
    fired: the spikes as bool [T, B, ...], not differentiable (only with
        ``bool_spikes=True``); where backward keeps the spikes anyway (spike_gated
        surrogate) this is the very tensor it keeps, so a consumer that saves it
        for its own backward costs no memory.
    """

    spikes: Tensor
    U: Tensor | None = None
    u: Tensor | None = None
    fired: Tensor | None = None
    counts: Tensor | None = None


def check_args(current: Tensor, op: LIF, cumulative: str) -> None:
    """Refuse a wrong op record, an unknown ``cumulative`` or a current that is not float [T, B, ...].

    Raises:
        TypeError, ValueError: naming the argument and what it got.
    """
    if not isinstance(op, LIF):
        raise TypeError(f"op must be a saec.compiler.ops.LIF record, got {type(op).__name__}")
    if cumulative not in CUMULATIVE:
        raise ValueError(f"cumulative must be one of {CUMULATIVE}, got {cumulative!r}")
    if not current.is_floating_point():
        raise TypeError(f"current must be a floating-point tensor, got {current.dtype}")
    if current.dim() < 2 or current.shape[0] < 1:
        raise ValueError(
            f"current must be [T, B, ...] with T >= 1, got shape {tuple(current.shape)}"
        )
