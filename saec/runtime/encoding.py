"""Rate (Bernoulli) encoding of a static image into a spike train (paper Eq. 5-6)."""

from __future__ import annotations

import torch
from torch import Tensor

from saec.compiler.ops import PoissonEncode


def poisson_encode(
    x: Tensor, op: PoissonEncode, generator: torch.Generator | None = None
) -> Tensor:
    """Encode ``x`` as ``op.timesteps`` steps of Bernoulli spikes.

    x'   = (1 - noise) * x + noise * xi,      xi ~ U(0, 1)
    s(t) = 1 if effective_scale * x' > r(t),  r(t) ~ U(0, 1) per pixel per step

    ``noise_resample="per_step"`` draws a fresh xi per pixel per step;
    ``"per_batch"`` draws xi once per pixel and holds it over the T steps.
    The encoder multiplies by ``op.effective_scale`` (``encoder_scale`` when
    set, else ``scale``).

    Args:
        x: image batch [B, ...], float, values in [0, 1].
        op: the encoding's parameters.
        generator: random source (on ``x``'s device); None uses torch's global one.
            Draw order: xi first (only when ``noise > 0``), then r for all T steps.

    Returns:
        Spike train [T, B, ...], dtype of ``x``, values 0 or 1. Not differentiable.
    """
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if op.timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {op.timesteps}")
    train_shape = (op.timesteps, *x.shape)
    like = dict(dtype=x.dtype, device=x.device, generator=generator)
    with torch.no_grad():
        if op.noise == 0.0:
            drive = x * op.effective_scale
        else:
            xi_shape = train_shape if op.noise_resample == "per_step" else x.shape
            xi = torch.rand(xi_shape, **like)
            drive = ((1.0 - op.noise) * x + op.noise * xi) * op.effective_scale
        r = torch.rand(train_shape, **like)
        # Write the 0/1 result over r: one [T, B, ...] buffer in all.
        return torch.gt(drive, r, out=r)
