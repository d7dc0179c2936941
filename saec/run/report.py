"""What a finished run leaves behind besides weights: eval.json, figures, stats.json and the report page.

:func:`finish_run` is called at the end of training; :func:`evaluate_run`
(``saec eval RUN``) recomputes the same files for an existing run folder,
:func:`run_stats` (``saec stats RUN``) writes ``stats.json``, and
:func:`write_run_report` renders ``report.html`` from the folder's files.
Every command that needs the validation images gets them from
:func:`validation_set`, the one loader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from saec.analysis.evaluate import evaluate
from saec.analysis.reportpage import ComparedRun, RunPage, render_comparison_page, render_run_page
from saec.compiler.graph import IRGraph
from saec.compiler.runconfig import RunConfig
from saec.errors import UserError
from saec.run import artifacts as A
from saec.run.checkpoint import RunLock
from saec.run.folder import load_model, resolve_device
from saec.run.steplog import read_steps
from saec.runtime.model import SpikingAutoencoder
from saec.spec.schema import Spec
from saec.training.data import DataError, ImageSet, load_validation

REPORT = A.REPORT


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


def validation_set(config: RunConfig | Spec, data_dir: str | Path | None = None,
                   limit: int | None = None) -> ImageSet:
    """The validation images of a run, the one way every command loads them.

    Args:
        config: the run's config (or its resolved spec: what is read is ``data`` and ``training.seed``,
            the seed of a held-out split).
        data_dir: overrides the data roots (like ``saec train --data-dir``).
        limit: keep only the first ``limit`` images.

    Raises:
        UserError: the data is missing (the message names the way out), or a bad ``limit``.
    """
    if limit is not None and limit < 1:
        raise UserError(f"must be a positive number of images, got {limit}", path="--limit")
    try:
        val = load_validation(config.data, str(data_dir) if data_dir is not None else None,
                              seed=config.training.seed)
    except DataError as exc:
        raise UserError(str(exc), path="data") from None
    return val.head(limit) if limit is not None else val


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
    run = Path(run)
    if not run.is_dir():
        raise UserError("no such run folder", file=str(run))
    dev = resolve_device(device)
    spec, model = load_model(run, dev)
    val = validation_set(RunConfig.of(model.graph), data_dir, limit)
    suffix = f"_limit{limit}" if limit is not None else ""
    written = (run / f"{Path(A.EVAL).stem}{suffix}.json", run / f"{A.FIGURES}{suffix}")
    with RunLock(run, "eval"):  # eval.json and the figures belong to the run: not while it trains
        metrics = finish_run(run, spec, model, val, device=dev, figures=figures, eval_name=written[0].name,
                             figures_name=written[1].name)
    return (metrics, written) if with_paths else metrics


def run_stats(run: Path, *, data_dir: str | Path | None = None, device: str = "cpu",
              examples: int | None = None) -> tuple[Path, dict[str, Any]]:
    """``saec stats``: measure a trained run on its validation images and write ``RUN/stats.json``.

    Args:
        run: a run folder with trained weights.
        data_dir: folder holding MNIST (overrides the spec's roots, like ``saec train --data-dir``).
        device: cpu, cuda or auto.
        examples: use only the first N validation images (default: all).

    Returns:
        (path of stats.json, its content).

    Raises:
        UserError: not a run folder, not trained, data missing, bad ``examples``/``device``.
    """
    from saec.analysis.stats import DEFINITIONS, measure_stats

    if examples is not None and examples < 1:
        raise UserError(f"must be a positive number of examples, got {examples}", path="--examples")
    run = Path(run)
    dev = resolve_device(device)
    _, model = load_model(run, dev)
    config = RunConfig.of(model.graph)
    val = validation_set(config, data_dir).head(examples)
    t = config.training
    stats = measure_stats(model, val, batch_size=t.batch_size, seed=t.seed, device=dev)
    stats = {"run": model.graph.attrs.get("name"), "validation": val.name, "device": str(dev), **stats,
             "definitions": DEFINITIONS}
    path = run / A.STATS
    A.write_json(path, stats)
    return path, stats


# ---------------------------------------------------------------- the report page
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    try:
        text = path.read_text(errors="replace")  # a damaged byte spoils its line only
    except OSError:
        return []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _read_steps(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    try:
        return read_steps(path)
    except (ValueError, KeyError):
        return []


def _check_run(run: Path) -> None:
    if not run.is_dir():
        raise UserError("no such run folder", file=str(run))
    if not (run / A.SPEC).is_file():
        raise UserError(f"not a saec run folder (no {A.SPEC})", file=str(run))


def _spec_name(spec_text: str, default: str) -> str:
    try:
        import yaml

        return yaml.safe_load(spec_text).get("name", default)
    except Exception:  # a report of a damaged run still shows what it can
        return default


def read_run_page(run: str | Path) -> RunPage:
    """What the report page of ``run`` shows, read from its files (whatever of them exist and parse).

    Raises:
        UserError: not a run folder.
    """
    run = Path(run)
    _check_run(run)
    spec_text = (run / A.SPEC).read_text()
    figures = sorted((run / A.FIGURES).glob("*.png")) if (run / A.FIGURES).is_dir() else []
    figures.sort(key=lambda path: path.stem != "reconstructions")  # what a reader looks at first
    export = run / A.EXPORT
    checks = sorted(export.glob("*.json")) if export.is_dir() else []
    try:
        graph = IRGraph.read_json(run / A.IR)
    except (OSError, ValueError, KeyError, TypeError):
        graph = None
    return RunPage(
        name=_spec_name(spec_text, run.name), folder=str(run.resolve()), spec_text=spec_text,
        metrics=_read_json(run / A.EVAL) or {}, history=_read_jsonl(run / A.METRICS),
        steps=_read_steps(run / A.STEPS),
        figures=[(path.stem.replace("_", " "), path.read_bytes()) for path in figures],
        stats=_read_json(run / A.STATS),
        export_files=sorted(p.name for p in export.iterdir() if p.suffix != ".json") if export.is_dir() else [],
        export_checks=[(path.name, data) for path in checks if (data := _read_json(path)) is not None],
        ir=graph, ir_summary=(_read_json(run / A.IR) or {}).get("summary", {}) if graph is not None else {},
    )


def render_run_report(run: str | Path) -> str:
    """The HTML of a run's report page (:func:`saec.analysis.reportpage.render_run_page`).

    Raises:
        UserError: not a run folder.
    """
    return render_run_page(read_run_page(run))


def write_run_report(run: str | Path) -> Path:
    """Write ``RUN/report.html`` (atomically) and return its path."""
    run = Path(run)
    path = run / REPORT
    A.write_text(path, render_run_report(run))
    return path


def refresh_report(run: str | Path) -> Path | None:
    """Rewrite ``RUN/report.html`` when the run has one (after eval, export, stats), so it shows the new files.

    Returns:
        The report's path, or None when the run has no report (an unfinished run).
    """
    return write_run_report(run) if (Path(run) / REPORT).is_file() else None


def render_comparison(runs: list[str | Path]) -> str:
    """The HTML of a page comparing runs: a metrics table, overlaid curves, spec differences, reconstructions.

    Raises:
        UserError: a folder that is not a run.
    """
    import yaml

    paths = [Path(r) for r in runs]
    for run in paths:
        _check_run(run)
    compared = []
    for path in paths:
        picture = path / A.FIGURES / "reconstructions.png"
        compared.append(ComparedRun(label=str(path), metrics=_read_json(path / A.EVAL) or {},
                                    history=_read_jsonl(path / A.METRICS),
                                    spec=yaml.safe_load((path / A.SPEC).read_text()) or {},
                                    reconstructions=picture.read_bytes() if picture.is_file() else None))
    return render_comparison_page(compared)


def write_comparison(runs: list[str | Path], out: str | Path) -> Path:
    """Write the comparison page of ``runs`` to ``out`` (atomically) and return its path."""
    out = Path(out)
    A.write_text(out, render_comparison(runs))
    return out
