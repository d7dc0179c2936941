"""The data a network trains on, in memory: :class:`ImageSet`, and the error type of data loading.

Shared by the MNIST loader (:mod:`saec.training.data`) and the custom datasets
(:mod:`saec.training.custom_data`), which both import it (and not each other's
module from both sides).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saec.errors import UserError


class DataError(UserError):
    """A data problem the user can fix (missing files, offline, bad file).

    The message is one line and names the way out.
    """

    def __str__(self) -> str:
        # Unlocated, the message is shown whole: the layer that catches it adds where (``data: ...``), and the
        # command line caps the line it prints.
        if self.file is None and self.line is None and self.path is None:
            return self.message
        return super().__str__()


class DataNotFound(DataError):
    """The data files are not where they were looked for (nothing corrupt, no download tried).

    ``data.validation.source: auto`` falls back to a held-out split on this
    error only; a corrupt file or a failed download still stops the run.
    """


@dataclass(frozen=True)
class ImageSet:
    """Images with their class labels (and, for event data, the spike trains they stand for).

    Attributes:
        images: float32 [N, C, H, W], pixel intensity in [0, 1] (MNIST: C = 1, H = W = 28); for event
            data the reconstruction target (see :func:`spike_target`).
        labels: int64 [N], class (0 for data without labels).
        name: where the images came from, for logs and messages (e.g. ``"mnist/test"``).
        spikes: pre-encoded input, uint8 [N, T, C, H, W] of 0/1, or None (images are Poisson-encoded).
    """

    images: Tensor
    labels: Tensor
    name: str = ""
    spikes: Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"ImageSet {self.name!r}: images must be [N, C, H, W], got {list(self.images.shape)}")
        if self.images.dtype != torch.float32:
            raise ValueError(f"ImageSet {self.name!r}: images must be float32, got {self.images.dtype}")
        if self.labels.ndim != 1 or self.labels.dtype != torch.int64:
            raise ValueError(
                f"ImageSet {self.name!r}: labels must be int64 [N], got {self.labels.dtype} {list(self.labels.shape)}"
            )
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"ImageSet {self.name!r}: {self.images.shape[0]} images but {self.labels.shape[0]} labels"
            )
        if self.spikes is not None and (self.spikes.ndim != 5 or self.spikes.shape[0] != self.images.shape[0]
                                        or self.spikes.shape[2:] != self.images.shape[1:]):
            raise ValueError(f"ImageSet {self.name!r}: spikes must be [N, T, C, H, W] matching images "
                             f"{list(self.images.shape)}, got {list(self.spikes.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def select(self, index: Tensor, name: str | None = None) -> ImageSet:
        """The images at ``index`` (int64 [K]), in that order."""
        spikes = self.spikes[index] if self.spikes is not None else None
        return ImageSet(self.images[index], self.labels[index], self.name if name is None else name, spikes)

    def head(self, n: int | None) -> ImageSet:
        """The first ``n`` images (all of them when ``n`` is None or at least ``len(self)``)."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise ValueError(f"ImageSet {self.name!r}: a limit must be a positive number of images, got {n}")
        spikes = self.spikes[:n] if self.spikes is not None else None
        return ImageSet(self.images[:n], self.labels[:n], self.name, spikes)

    def batch(self, index: Tensor, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor | None]:
        """A batch as the network takes it: (images [B, C, H, W], spike train [T, B, C, H, W] float or None)."""
        x = self.images[index].to(device)
        if self.spikes is None:
            return x, None
        return x, self.spikes[index].to(device).transpose(0, 1).to(torch.float32)


def spike_target(spikes: Tensor) -> Tensor:
    """The reconstruction target of pre-encoded spike input: each example's spike count image, max-normalised.

    target = count / max(count) per example, count = spikes summed over T (an example
    without spikes gives zeros), so targets lie in [0, 1] like images.

    Args:
        spikes: [N, T, C, H, W] of 0/1.

    Returns:
        float32 [N, C, H, W].
    """
    counts = spikes.to(torch.float32).sum(1)
    peak = counts.flatten(1).amax(1).clamp_min(1.0)
    return counts / peak.view(-1, 1, 1, 1)
