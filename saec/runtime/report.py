"""What a finished run leaves behind besides weights: eval.json and figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saec.runtime import artifacts as A
from saec.runtime.data import ImageSet
from saec.runtime.evaluate import evaluate
from saec.runtime.model import SpikingAutoencoder
from saec.spec.schema import Spec


def finish_run(out: Path, spec: Spec, model: SpikingAutoencoder, val_set: ImageSet, *,
               device: torch.device | str = "cpu") -> dict[str, Any]:
    """Final validation metrics into ``eval.json`` and the reconstruction figure."""
    from saec.exporters.figures import reconstructions_figure

    result = evaluate(model, val_set, batch_size=spec.training.batch_size, seed=spec.training.seed, device=device)
    metrics = {"run": spec.name, "validation": val_set.name, **result.metrics}
    A.write_json(Path(out) / A.EVAL, metrics)
    reconstructions_figure(model, val_set, Path(out) / A.FIGURES / "reconstructions.png",
                           seed=spec.training.seed, device=device)
    return metrics
