"""Figures of a trained run (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from saec.runtime.artifacts import savefig  # noqa: E402
from saec.runtime.data import ImageSet  # noqa: E402
from saec.runtime.model import SpikingAutoencoder  # noqa: E402


def one_per_class(labels: torch.Tensor, classes: int = 10) -> list[int]:
    """Index of the first example of each class present, in class order."""
    found: dict[int, int] = {}
    for i, y in enumerate(labels.tolist()):
        found.setdefault(int(y), i)
        if len(found) == classes:
            break
    return [found[c] for c in sorted(found)]


@torch.no_grad()
def reconstructions_figure(model: SpikingAutoencoder, data: ImageSet, path: Path, *, seed: int = 0,
                           device: torch.device | str = "cpu") -> Path:
    """Input, its Poisson encoding summed over T (SAE), and the reconstruction, one column per class."""
    idx = one_per_class(data.labels)
    x = data.images[idx].to(device)
    was = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    out = model(x, generator=gen, record=frozenset({"_encode"}))
    model.train(was)
    rows = [("input", x.cpu())]
    if out.encoded is not None:
        rows.append((f"encoding (sum over T={out.encoded.shape[0]})", out.encoded.sum(0).cpu()))
    rows.append(("reconstruction", out.x_hat.cpu()))
    per_example = ((out.x_hat - x) ** 2).flatten(1).sum(1).cpu()
    fig, axes = plt.subplots(len(rows), len(idx), figsize=(1.3 * len(idx), 1.45 * len(rows) + 0.4), squeeze=False)
    for r, (title, imgs) in enumerate(rows):
        for c in range(len(idx)):
            ax = axes[r][c]
            ax.imshow(imgs[c, 0].numpy(), cmap="gray", vmin=0 if r != 1 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title.split(" (")[0], fontsize=8)
            if r == len(rows) - 1:
                ax.set_xlabel(f"L={per_example[c]:.1f}", fontsize=7)
            if r == 0:
                ax.set_title(str(int(data.labels[idx[c]])), fontsize=9)
    fig.suptitle(f"Reconstructions, one per class (mean L_rec of these {len(idx)}: "
                 f"{float(per_example.mean()):.2f})", fontsize=9)
    fig.tight_layout()
    savefig(fig, path, dpi=110)
    plt.close(fig)
    return path
