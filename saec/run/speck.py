"""``saec export RUN --target speck``: a run's network in Speck's integers, as a sinabs layer list.

Reads the run folder, checks the network fits Speck (located errors otherwise), quantises it
(:func:`saec.targets.quantize.quantize`), writes ``RUN/export/speck/`` and measures what the
integers cost on the validation set:

- ``speck.json`` + ``speck.npz``: the network for sinabs (:mod:`saec.exporters.speck`);
- ``golden.npz``: the first ``examples`` validation images' input spikes and saec's integer
  simulation of every layer, what ``scripts/targets/speck_verify.py`` checks sinabs against;
- ``quantization.json``: L_rec float vs quantised and per-layer spikes (same input spikes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saec.analysis.quantized import QuantizedComparison, compare_quantized
from saec.exporters.speck import SpeckFiles, write_speck
from saec.run import artifacts as A
from saec.run.report import validation_set
from saec.errors import UserError
from saec.targets.fit import check_fit
from saec.targets.profile import load_profile
from saec.targets.quantize import QuantizedNetwork, quantize

SPECK_DIR = "speck"  # under RUN/export/
GOLDEN_FILE = "golden.npz"
COMPARISON_FILE = "quantization.json"


@dataclass
class SpeckExport:
    """What :func:`export_speck` wrote and measured."""

    directory: Path
    files: SpeckFiles
    golden: Path
    comparison_file: Path
    comparison: QuantizedComparison
    cores: dict[str, str]  # spec layer -> core saec's fit check assigns
    validation: str  # which images L_rec was measured on


def quantized_run(run: Path, target: str) -> tuple[Any, Any, QuantizedNetwork]:
    """Load a trained run and quantise it for ``target``, refusing a network that does not fit.

    Returns:
        (resolved spec, float model, quantised network).
    Raises:
        UserError: not a run, no weights, or the network does not fit: the first fit problem at its
            line of the run's ``spec.yaml`` (with the count of the others).
    """
    from saec.spec.loader import load_spec
    from saec.run.folder import load_model

    run = Path(run)
    if not run.is_dir():
        raise UserError("no such run folder", file=str(run))
    spec, model = load_model(run)
    profile = load_profile(target)
    graph = model.graph
    report = check_fit(graph, profile)
    if report.violations:
        first = report.violations[0]
        more = len(report.violations) - 1
        message = (f"cannot export to {profile.name}: {first.message}"
                   + (f" (and {more} more problem{'s' if more > 1 else ''}; "
                      f"`saec compile {run / A.SPEC} --target {target}` lists them)" if more else ""))
        spec_path = graph.meta(first.node).get("spec_path")
        if spec_path:
            raise load_spec(run / A.SPEC).error(tuple(spec_path), message)
        raise UserError(message, file=str(run / A.SPEC))
    weights = {k: v.detach().cpu().numpy() for k, v in model.ir_state_dict().items()}
    return spec, model, quantize(graph, weights, profile)


def quantized_comparison(run: Path, target: str, *, examples: int, limit: int | None, seed: int,
                         data_dir: str | Path | None) -> tuple[Any, Any, QuantizedNetwork, Any, QuantizedComparison]:
    """A chip export's common start: the quantised run and its float-vs-quantised comparison.

    Args:
        run: the run folder.
        target: the chip's profile name.
        examples: golden examples to keep (>= 1, at most the validation images).
        limit: validation images to measure on (None: all).
        seed: encoder seed.
        data_dir: folder holding MNIST, overriding the spec's data roots.
    Returns:
        (resolved spec, float model, quantised network, validation ImageSet, comparison).
    Raises:
        UserError: see :func:`quantized_run`; a bad ``examples``; data missing. Nothing is written.
    """
    run = Path(run)
    if examples < 1:
        raise UserError(f"golden data needs at least 1 example, got {examples}", path="--examples")
    spec, model, qnet = quantized_run(run, target)
    val = validation_set(spec, data_dir, limit)
    if examples > len(val.images):
        raise UserError(f"asks for {examples} golden examples, the validation set has {len(val.images)}",
                        path="--examples")
    return spec, model, qnet, val, compare_quantized(model, qnet, val.images, seed=seed, keep=examples)


def export_speck(run: str | Path, *, examples: int = 4, limit: int | None = None, seed: int = 0,
                 data_dir: str | Path | None = None) -> SpeckExport:
    """Export a trained run for Speck and measure L_rec float vs quantised.

    Args:
        run: the run folder.
        examples: validation images whose spikes go into ``golden.npz`` (the vendor check's input).
        limit: validation images for the L_rec comparison (None: the run's whole validation set).
        seed: seed of the Poisson encoder (the same spikes feed float and quantised networks).
        data_dir: folder holding MNIST, overriding the spec's data roots.
    Returns:
        :class:`SpeckExport`.
    Raises:
        UserError: see :func:`quantized_run`; a bad ``examples``; data missing. Nothing is written then.
    """
    run = Path(run)
    spec, model, qnet, val, comparison = quantized_comparison(run, "speck", examples=examples, limit=limit, seed=seed,
                                                              data_dir=data_dir)
    directory = run / A.EXPORT / SPECK_DIR
    files = write_speck(directory, qnet, metadata={"run": run.name, "spec": spec.name})
    golden = directory / GOLDEN_FILE
    tmp = directory / f".{GOLDEN_FILE}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **comparison.golden)
    tmp.replace(golden)
    comparison_file = directory / COMPARISON_FILE
    fit = check_fit(model.graph, load_profile("speck"))
    cores = {row.layer: row.place for row in fit.layers}
    A.write_json(comparison_file, {"validation": val.name, "cores": cores, **comparison.as_dict()})
    return SpeckExport(directory=directory, files=files, golden=golden, comparison_file=comparison_file,
                       comparison=comparison, cores=cores, validation=val.name)
