"""A trained network as a plain ``torch.nn.Module`` with a typed output (the Python API's model).

:class:`AutoencoderModule` wraps the runtime's :class:`~saec.runtime.model.SpikingAutoencoder`
and hides its internals (recording sets, pooled buffers, ``NetOutput``): it takes
images or spike trains and returns an :class:`AutoencoderOutput`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from saec.compiler import ops
from saec.runtime.model import SpikingAutoencoder


@dataclass
class AutoencoderOutput:
    """What one forward pass of :class:`AutoencoderModule` gives, per batch.

    Attributes:
        reconstruction: the decoded images [B, C, H, W] (SAE: the max-over-time
            readout of the output layer's potential, scaled as the spec's
            ``readout`` says; AE/VAE: the last layer's activation).
        spikes: per spiking layer name, its spike train [T, B, *layer shape]
            (float 0/1). Empty for AE/VAE.
        counts: per spiking layer name, spikes summed over T [B, *layer shape];
            AE/VAE: each ReLU layer's activation.
        latent: the latent representation [B, nz] (SAE: the latent layer's
            firing rate, spikes per step; AE: activation; VAE: z, = mu in eval mode).
        input_spikes: the input spike train [T, B, C, H, W] the network ran on
            (encoded from images, or the one given); None for AE/VAE.
    """

    reconstruction: Tensor
    spikes: dict[str, Tensor] = field(default_factory=dict)
    counts: dict[str, Tensor] = field(default_factory=dict)
    latent: Tensor | None = None
    input_spikes: Tensor | None = None


class AutoencoderModule(nn.Module):
    """A compiled (and usually trained) saec network as a plain ``nn.Module``.

    ``forward(x)`` takes either

    - images ``[B, C, H, W]`` in [0, 1]: an SAE encodes them with its Poisson
      encoder (``generator`` seeds it), AE/VAE run on them directly; or
    - a spike train ``[T, B, C, H, W]`` (0/1, any float or bool dtype): an SAE
      runs on it as it is, bypassing the encoder (T may differ from the
      spec's; the readout divides by the spec's T and scale).

    It is in eval mode after construction (a VAE then decodes z = mu); its
    parameters are the network's weights, so ``.to()``, ``.state_dict()``,
    optimizers and hooks work as for any module.

    Args:
        network: the runtime network (from :func:`saec.api.load_run` or a compile).
        record_spikes: return every spiking layer's spike train in
            :attr:`AutoencoderOutput.spikes` (costs memory T x neurons per example;
            False leaves ``spikes`` empty but keeps ``counts``).
    """

    def __init__(self, network: SpikingAutoencoder, *, record_spikes: bool = True) -> None:
        super().__init__()
        self.network = network
        self.record_spikes = record_spikes
        graph = network.graph
        #: spiking layer names in network order (the keys of ``spikes`` and ``counts``)
        self.spiking_layers = [graph.meta(n).get("layer", n) for n in network.order if isinstance(graph.op(n), ops.LIF)]
        #: shape of one example (C, H, W)
        self.input_shape = tuple(network.input_shape)
        self.eval()

    @property
    def timesteps(self) -> int:
        """T, the time steps an image is encoded into (1 for AE/VAE)."""
        return self.network.timesteps

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> AutoencoderOutput:
        """Run the network on images [B, C, H, W] or a spike train [T, B, C, H, W].

        Args:
            x: images in [0, 1], or a spike train (see the class docstring).
            generator: random source of the Poisson encoding (and VAE sampling in
                train mode), on ``x``'s device; None = torch's global generator.

        Returns:
            :class:`AutoencoderOutput`.

        Raises:
            ValueError: ``x`` has neither shape, a spike train given to an AE/VAE, or images given to a
                network compiled for pre-encoded spike input.
        """
        n = len(self.input_shape)
        spiking = bool(self.spiking_layers)
        record = frozenset(self.spiking_layers if self.record_spikes else ()) | {"_encode"}
        if x.ndim == n + 2 and tuple(x.shape[2:]) == self.input_shape:
            if not spiking:
                raise ValueError(f"this {self.network.kind} network takes images [B, {self.input_shape}], "
                                 "not spike trains")
            train = x.to(torch.float32) if not x.is_floating_point() else x
            # The rate image stands in for the images: it sets the batch size and dtype only.
            out = self.network(train.mean(0), encoded=train, record=record, generator=generator)
            input_spikes = train
        elif x.ndim == n + 1 and tuple(x.shape[1:]) == self.input_shape:
            if spiking and not self.network.encodes:
                raise ValueError("this network takes pre-encoded spike trains [T, B, "
                                 f"{', '.join(map(str, self.input_shape))}] (input.kind: spikes), not images")
            images = x if x.is_floating_point() else x.to(torch.float32)
            out = self.network(images, record=record, generator=generator)
            input_spikes = out.encoded if spiking else None
        else:
            raise ValueError(f"expected images [B, {', '.join(map(str, self.input_shape))}] or a spike train "
                             f"[T, B, {', '.join(map(str, self.input_shape))}], got {list(x.shape)}")
        return AutoencoderOutput(
            reconstruction=out.x_hat,
            spikes={k: v for k, v in out.trains.items() if k in self.spiking_layers},
            counts=dict(out.counts),
            latent=out.latent,
            input_spikes=input_spikes,
        )
