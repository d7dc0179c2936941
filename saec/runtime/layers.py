"""Per-op computations that the layer-wise and the step-by-step walks share, so that both
perform the same floating-point operations (the LIF neuron has its own package,
:mod:`saec.runtime.lif`; synapses are :func:`saec.runtime.fastpath.synapse_forward`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from saec.compiler import ops


def leaky_integrator_step(current_t: Tensor, v_prev: Tensor | None, op: ops.LeakyIntegrator) -> Tensor:
    """One step of the non-spiking leaky integrator: v(t) = decay * v(t-1) + gain * I(t).

    Args:
        current_t: I(t), [B, ...].
        v_prev: v(t-1), [B, ...]; None for v(0) = 0.
        op: decay (dimensionless) and gain (v units per unit of current).

    Returns:
        v(t), [B, ...].
    """
    if v_prev is None:
        v_prev = torch.zeros_like(current_t)
    return v_prev * op.decay + current_t * op.gain


def leaky_integrate(current: Tensor, op: ops.LeakyIntegrator) -> Tensor:
    """v(t) = decay * v(t-1) + gain * I(t), v(0) = 0, over current [T, B, ...]; returns v(1..T)."""
    v = None
    out = torch.empty_like(current)
    for t in range(current.shape[0]):
        v = leaky_integrator_step(current[t], v, op)
        out[t] = v
    return out


def sum_pool2d(x: Tensor, op: ops.SumPool2d) -> Tensor:
    """Each output the sum of its window (zero padding), on x [N, C, H, W]."""
    return F.avg_pool2d(x, op.kernel_size, op.stride, op.padding, divisor_override=1)  # divisor 1: the sum


def reparameterize(h: Tensor, training: bool, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """VAE sampling on h [B, 2*nz] = (mu, logvar): z = mu + exp(logvar / 2) * eps in training, mu in eval.

    Returns:
        (z, mu, logvar), each [B, nz].
    """
    mu, logvar = h.chunk(2, dim=-1)
    if training:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps, mu, logvar
    return mu, mu, logvar
