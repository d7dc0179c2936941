"""Readout of the reconstruction from the output layer's cumulative potential (paper Eq. 8)."""

from __future__ import annotations

import torch
from torch import Tensor

from saec.compiler.ops import MaxCumulativeReadout


def max_cumulative_readout(U_all: Tensor, op: MaxCumulativeReadout) -> Tensor:
    """x_hat = max over t in [t_min, T] of U(t), divided by ``scale`` or ``T * scale``.

    Args:
        U_all: cumulative potential U(1..T) of the output layer, float [T, B, ...].
        op: the readout's parameters. ``t_min = 0`` lets the initial U(0) = 0
            take part, so x_hat >= 0; ``divide_by_timesteps`` divides by
            T * scale, with T = ``U_all.shape[0]``.

    Returns:
        x_hat [B, ...]. The gradient reaches exactly one time step per entry:
        the first maximal one. On a tie with U(0) = 0 (t_min = 0), t = 0 wins
        and no gradient flows, like relu'(0) = 0.
    """
    if U_all.dim() < 2 or U_all.shape[0] < 1:
        raise ValueError(f"U_all must be [T, B, ...] with T >= 1, got shape {tuple(U_all.shape)}")
    T = U_all.shape[0]
    if not 0 <= op.t_min <= T:
        raise ValueError(f"t_min must lie in [0, T] = [0, {T}], got {op.t_min}")
    window = U_all[max(op.t_min, 1) - 1:]  # U(t) for t >= max(t_min, 1)
    # argmax documents first-index ties, which max(dim) does not promise.
    first = window.argmax(dim=0, keepdim=True)
    peak = window.gather(0, first).squeeze(0)
    if op.t_min == 0:
        peak = torch.relu(peak)  # relu's gradient at 0 is 0: U(0) wins the tie
    divisor = T * op.scale if op.divide_by_timesteps else op.scale
    return peak / divisor
