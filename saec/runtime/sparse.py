"""Inference (no autograd) on spike trains: every SAE synapse input is binary.

What pays on the CPU, measured (benchmarks/README.md, "Inference"):

- Convolutions with a 0/1 input run channels-last: oneDNN's channels-last kernel
  gives bit-identical outputs to the contiguous layout here and runs ~1.5x faster;
  the fused LIF scan keeps the layout, so the next convolution gets its input
  without a copy.
- A gather-sum of weight columns for the linear layers (``embedding_bag`` over
  the indices of the neurons that fired) does 3-30x fewer additions at the SAE's
  firing rates, but finding the indices and gathering costs more than the dense
  product saves: 0.2-0.7x the dense speed at rates 0.2-10 %. It is not used.
"""

from __future__ import annotations

from torch import Tensor

from saec.compiler import ops
from saec.runtime.fastpath import channels_last, synapse_forward


def binary_synapse(op: ops.Op, weight: Tensor, bias: Tensor | None, x: Tensor) -> Tensor:
    """The synapse on a spike train x [N, ...] (values 0/1), for inference.

    A Conv2d on the CPU runs channels-last (bit-identical output, faster); every other
    synapse is the dense one.

    Returns:
        The synaptic current [N, ...].
    """
    if isinstance(op, ops.Conv2d) and x.device.type == "cpu" and x.dim() == 4:
        return synapse_forward(op, weight, bias, channels_last(x))
    return synapse_forward(op, weight, bias, x)
