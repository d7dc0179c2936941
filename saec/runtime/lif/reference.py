"""The step-by-step reference: one LIF time step as plain torch ops, differentiable by autograd.

:func:`lif_step` advances a layer by one step (the step-by-step execution of the
whole network); :func:`lif_scan_autograd` loops it over T steps. The
straight-through gradient rules are written with ``detach`` / ``where`` tricks,
so autograd derives them; slow and memory-hungry, this is the oracle the fast
scan's hand-written backward (:mod:`saec.runtime.lif.scan`) is tested against.
Both perform the same floating-point operations in the same order as the fast
scan, so spikes are bit-identical.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from saec.compiler.ops import LIF
from saec.runtime.lif.result import Cumulative, LIFResult, check_args


def _scale_decay(x: Tensor, op: LIF) -> Tensor:
    """decay * x; gradient decay (decay_grad) or 1 (straight through)."""
    y = x * op.decay
    if op.decay_grad:
        return y
    return y.detach() + (x - x.detach())


def _floor_rule(x: Tensor, floored: Tensor, op: LIF) -> Tensor:
    """Set ``floored`` entries to the floor value; gradient 0 there (cut) or 1 (pass)."""
    y = torch.where(floored, op.floor_value, x)
    if op.clamp_grad == "cut":
        return y
    return y.detach() + (x - x.detach())


def _spike(v: Tensor, fired: Tensor, op: LIF) -> Tensor:
    """Heaviside forward; backward d phi/d v from the surrogate's antiderivative.

    The antiderivatives are written independently of the fast scan's ``_surrogate_grad``,
    so that the comparison of the two paths checks the derivative formulas too.
    """
    x = v - op.threshold
    if op.surrogate == "straight_through":
        F = v
    elif op.surrogate == "spike_gated":
        F = v * (fired.to(v.dtype) / op.threshold)
    elif op.surrogate == "fast_sigmoid":
        F = x / (1.0 + op.slope * x.abs())
    else:  # arctan
        F = torch.atan((math.pi / 2 * op.slope) * x) / math.pi
    return fired.to(v.dtype) + (F - F.detach())


def _step(
    I_t: Tensor, u_prev: Tensor, U_prev: Tensor, op: LIF
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step; returns (spikes, u, u', U). Autograd derives the straight-through gradient."""
    u = _scale_decay(u_prev, op) + I_t
    lb = op.lower_bound
    if lb is not None and op.clamp_first:
        v = _floor_rule(u, u < lb, op)
    else:
        v = u
    fired = v >= op.threshold if op.spike_when == "ge" else v > op.threshold
    s = _spike(v, fired, op)
    if op.reset == "zero":
        nxt = torch.where(fired, 0.0, v)
        if op.reset_grad == "pass":
            nxt = nxt.detach() + (v - v.detach())
    elif op.reset == "subtract":
        nxt = v - op.threshold * fired.to(v.dtype)
    else:
        nxt = v
    if lb is not None and not op.clamp_first:
        nxt = _floor_rule(nxt, (u < lb) & ~fired, op)
    if op.integrate == "potential":
        U = _scale_decay(U_prev, op) + u
    else:
        U = _scale_decay(U_prev + I_t, op)
    return s, u, nxt, U


def lif_step(
    current_t: Tensor, state: tuple[Tensor, Tensor] | None, op: LIF
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Advance a LIF layer by one time step (step-by-step reference execution).

    Args:
        current_t: input current I(t), float [B, ...].
        state: (u'(t-1), U(t-1)), each [B, ...]; None for the initial zeros.
        op: the neuron's parameters.

    Returns:
        (phi(t), (u'(t), U(t))). Spikes are bit-identical to :func:`lif_scan`'s;
        the result is differentiable with the same gradient rules.
    """
    if state is None:
        zeros = torch.zeros_like(current_t)
        state = (zeros, zeros)
    s, _, nxt, U = _step(current_t, state[0], state[1], op)
    return s, (nxt, U)


def lif_scan_autograd(
    current: Tensor,
    op: LIF,
    *,
    cumulative: Cumulative = "none",
    record_potential: bool = False,
    bool_spikes: bool = False,
    counts: bool = False,
) -> LIFResult:
    """:func:`lif_scan` as a plain loop of :func:`lif_step`; autograd builds the gradient.

    Same arguments and results as :func:`lif_scan`; slow and memory-hungry
    (autograd keeps every float state), meant as a test oracle.
    """
    check_args(current, op, cumulative)
    zeros = torch.zeros_like(current[0])
    u_prev, U = zeros, zeros
    spikes, us, Us = [], [], []
    for t in range(current.shape[0]):
        s, u, u_prev, U = _step(current[t], u_prev, U, op)
        spikes.append(s)
        us.append(u)
        Us.append(U)
    U_out = None if cumulative == "none" else (U if cumulative == "last" else torch.stack(Us))
    spikes = torch.stack(spikes)
    fired = spikes.detach().to(torch.bool) if bool_spikes else None
    return LIFResult(spikes, U_out, torch.stack(us) if record_potential else None, fired,
                     spikes.sum(0) if counts else None)
