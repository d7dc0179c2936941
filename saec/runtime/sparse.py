"""Inference on binary inputs: a linear layer whose input is a spike train sums the weight
columns of the neurons that fired, instead of multiplying by a mostly-zero matrix.

For the SAE's linear layers (12800 -> 100 and 100 -> 12800) at the firing rates
of trained networks (a few percent), the gather-sum does a small fraction of the
dense product's work; ``embedding_bag(mode="sum")`` runs it as one vectorised
kernel. Convolutions stay dense (their inputs are denser and torch has no fast
sparse convolution on the CPU).

Same answers up to fp32 summation order: the dense product adds the same
non-zero terms (x * 1) plus exact zeros, in the BLAS kernel's order; the
gather-sum adds them in index order. The two differ by rounding only (a few
ulp of the potential), so a spike can differ only where a potential lies
within that distance of the threshold; tests/runtime/test_fastpath.py checks
the agreement on a real network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from saec.compiler import ops
from saec.runtime.fastpath import synapse_forward

#: Use the gather-sum when at most this fraction of the inputs fired (measured crossover, see
#: benchmarks/README.md "Inference"); denser inputs use the dense product.
MAX_DENSITY = 0.25


def binary_linear(x_bool: Tensor, weight: Tensor, bias: Tensor | None = None,
                  weight_t: Tensor | None = None) -> Tensor:
    """x @ weight.T for a bool x [N, in], as a sum of the weight columns where x is True.

    Args:
        x_bool: binary input, bool [N, in].
        weight: [out, in].
        bias: [out] or None.
        weight_t: ``weight.t().contiguous()`` when the caller caches it ([in, out]).

    Returns:
        [N, out], in weight's dtype.
    """
    table = weight.t().contiguous() if weight_t is None else weight_t
    rows, cols = x_bool.nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=x_bool.shape[0])
    offsets = torch.zeros(x_bool.shape[0], dtype=torch.long, device=x_bool.device)
    torch.cumsum(counts[:-1], 0, out=offsets[1:])
    out = F.embedding_bag(cols, table, offsets, mode="sum")
    return out if bias is None else out.add_(bias)


def binary_synapse(op: ops.Op, weight: Tensor, bias: Tensor | None, x: Tensor, x_bool: Tensor) -> Tensor:
    """The synapse on a spike input, gather-sum where it pays (linear, sparse input), else dense.

    Args:
        op: the synapse's op; x: the spikes [N, ...] as float; x_bool: the same as bool.

    Returns:
        The synaptic current [N, ...] (no autograd: inference only).
    """
    if isinstance(op, ops.Linear) and x.device.type == "cpu" and x_bool.dim() == 2:
        fired = int(x_bool.sum())
        if fired <= MAX_DENSITY * x_bool.numel():
            return binary_linear(x_bool, weight, bias)
    return synapse_forward(op, weight, bias, x)
