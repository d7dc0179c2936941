"""Weight gradients come back in their parameters' exact strides.

DistributedDataParallel copies every gradient into a bucket laid out like the
parameters and warns "grad strides do not match bucket view strides" when they
differ; the channels-last convolution backward gave the one-channel layers'
weights ([16, 1, 5, 5], [16, 1, 5, 5] transposed) channels-last gradients.
"""

from __future__ import annotations

import torch

import saec
from tests.conftest import SPECS


def test_every_gradient_has_its_parameters_strides():
    compiled = saec.compile(SPECS / "sae_dense.yaml", {"encoding.timesteps": 2})
    network = compiled.module().network.train()
    x = torch.rand(2, 1, 28, 28)
    out = network(x, generator=torch.Generator().manual_seed(0))
    ((out.x_hat - x) ** 2).sum().backward()
    checked = 0
    for name, param in network.named_parameters():
        assert param.grad is not None, name
        assert param.grad.stride() == param.stride(), (name, param.grad.stride(), param.stride())
        checked += 1
    assert checked == 6  # conv1, conv2, latent, fc_dec, deconv1, output
