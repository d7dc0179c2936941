"""What a finished run leaves behind besides weights: eval.json and figures.

:func:`finish_run` is called at the end of training; :func:`evaluate_run`
(``saec eval RUN``) recomputes the same files for an existing run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saec.run import artifacts as A
from saec.training.data import ImageSet
from saec.analysis.evaluate import evaluate
from saec.runtime.model import SpikingAutoencoder
from saec.errors import UserError
from saec.spec.schema import Spec


def finish_run(out: Path, spec: Spec, model: SpikingAutoencoder, val_set: ImageSet, *,
               device: torch.device | str = "cpu", figures: bool = True, eval_name: str = A.EVAL,
               figures_name: str = A.FIGURES) -> dict[str, Any]:
    """Evaluate ``model`` on ``val_set``; write ``eval.json`` and every figure into the run folder.

    Args:
        out: the run folder.
        spec: the run's resolved spec (validation batch size, seed, name).
        model: the trained network.
        val_set: the validation images.
        device: where to evaluate.
        figures: also write ``figures/*.png`` (see
            :func:`saec.analysis.figures.write_run_figures`).
        eval_name, figures_name: where in ``out`` the metrics and the figures go.

    Returns:
        The metrics written to ``eval.json`` (keys: :data:`saec.analysis.evaluate.EVAL_KEYS`).
    """
    result = evaluate(model, val_set, batch_size=spec.training.batch_size, seed=spec.training.seed,
                      device=device, keep_latents=True)
    metrics = {"run": spec.name, "validation": val_set.name, **result.metrics}
    A.write_json(Path(out) / eval_name, metrics)
    if figures:
        from saec.analysis.figures import write_run_figures

        write_run_figures(Path(out) / figures_name, model, val_set, result, seed=spec.training.seed, device=device)
    return metrics


def validation_set(spec: Spec, data_dir: str | Path | None = None, limit: int | None = None) -> ImageSet:
    """The validation images of a run, as its resolved spec describes them.

    Args:
        spec: the run's resolved spec (``data``, ``training.seed`` for a held-out split).
        data_dir: overrides the spec's data roots (like ``saec train --data-dir``).
        limit: keep only the first ``limit`` images.

    Raises:
        UserError: the data is missing (the message names the way out).
    """
    from saec.training.data import CUSTOM_DATASETS, DataError, load_images, make_splits, with_transform

    data = spec.data
    root = str(data_dir) if data_dir is not None else None
    try:
        if data.validation.source == "test" and data.dataset not in CUSTOM_DATASETS:
            # Only the test set is needed: a machine without the training images can still evaluate.
            # Roots in the order make_splits uses: --data-dir, validation.root, data.root.
            val_root = root if root is not None else (data.validation.root or data.root)
            val = with_transform(load_images("mnist", "test", val_root, bool(data.download)),
                                 data).head(data.validation.limit)
        else:
            _, val = make_splits(data, root, seed=spec.training.seed)
    except DataError as exc:
        raise UserError(str(exc), path="data") from None
    if limit is not None:
        if limit < 1:
            raise UserError(f"must be a positive number of images, got {limit}", path="--limit")
        val = val.head(limit)
    return val


def evaluate_run(run: Path, *, data_dir: str | Path | None = None, device: str = "auto",
                 limit: int | None = None, figures: bool = True, with_paths: bool = False
                 ) -> dict[str, Any] | tuple[dict[str, Any], tuple[Path, Path]]:
    """``saec eval``: recompute ``eval.json`` (and the figures) of a trained run folder.

    Args:
        run: the run folder (needs spec.yaml, ir.json and model.safetensors).
        data_dir: overrides the spec's data roots.
        device: ``cpu``, ``cuda`` or ``auto``.
        limit: evaluate only the first ``limit`` validation images; the results then go to
            ``RUN/eval_limit<N>.json`` and ``RUN/figures_limit<N>/``, and the full evaluation is kept.
        figures: also rewrite the figures.
        with_paths: also return (metrics file, figures folder).

    Returns:
        The metrics written to ``RUN/eval.json`` (or ``eval_limit<N>.json``), with ``with_paths``
        paired with the paths written.

    Raises:
        UserError: not a run folder, no trained weights, data missing, bad device, a run in use by
            another process.
    """
    from saec.run.checkpoint import RunLock
    from saec.training.train import load_model, resolve_device

    run = Path(run)
    if not run.is_dir():
        raise UserError("no such run folder", file=str(run))
    dev = resolve_device(device)
    spec, model = load_model(run, dev)
    val = validation_set(spec, data_dir, limit)
    suffix = f"_limit{limit}" if limit is not None else ""
    written = (run / f"{Path(A.EVAL).stem}{suffix}.json", run / f"{A.FIGURES}{suffix}")
    with RunLock(run, "eval"):  # eval.json and the figures belong to the run: not while it trains
        metrics = finish_run(run, spec, model, val, device=dev, figures=figures, eval_name=written[0].name,
                             figures_name=written[1].name)
    return (metrics, written) if with_paths else metrics
