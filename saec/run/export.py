"""``saec export``: load a trained run, lower it, compute the golden spikes, call the pure exporter, write files.

The exporters (:mod:`saec.exporters.nir`, :mod:`saec.exporters.onnx`) are
functions of (lowered IR, weights[, recorded spikes]); this module is the
part that knows the run folder: it opens the run, draws the validation
images (the one loader, :func:`saec.run.report.validation_set`), writes
``RUN/export/`` and records each export's agreement check beside it
(``nir_check.json``, ``onnx_check.json``) for the report page. Errors about
what the network cannot express are located in the run's ``spec.yaml``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Any

from saec.compiler.errors import CompileError
from saec.compiler.graph import IRGraph
from saec.compiler.runconfig import RunConfig
from saec.errors import UserError
from saec.run import artifacts as A
from saec.run.folder import load_model
from saec.run.report import refresh_report, validation_set

#: ``format`` -> this module's function that exports a run folder to it.
EXPORTERS: dict[str, str] = {"nir": "export_nir", "onnx": "export_onnx"}

#: Validation images onnxruntime runs in ``export/onnx_check.json`` (and the seed of their encoding).
ONNX_CHECK_EXAMPLES, ONNX_CHECK_SEED = 4, 0


def export(run: str | Path, format: str = "nir", **options: Any) -> Any:
    """Export a trained run to ``RUN/export/`` and record the export's check (``saec export``).

    Args:
        run: the run folder.
        format: ``nir`` (options of :func:`export_nir`) or ``onnx`` (options of :func:`export_onnx`).
        **options: passed to the exporter.
    Returns:
        ``nir``: :class:`saec.exporters.nir.NirExport`; ``onnx``: the path of ``model.onnx``.
    Raises:
        UserError: unknown format, not a trained run, a network the format cannot express.
    """
    name = EXPORTERS.get(format)
    if name is None:
        raise UserError(f"unknown format {format!r}; use one of {', '.join(EXPORTERS)}", path="--format")
    path = Path(run)
    refuse_spike_input(path, f"saec export --format {format}")
    result = getattr(importlib.import_module(__name__), name)(path, **options)
    if format == "nir":
        record_nir_check(path, result)
    elif not options:  # the model as trained (no other T or batch): check it against saec's runtime
        record_onnx_check(path, result)
    refresh_report(path)
    return result


def refuse_spike_input(run: str | Path, what: str) -> None:
    """UserError when ``run`` was trained on pre-encoded spike input, which ``what`` does not handle yet.

    The exporters and ``saec stats`` draw their inputs with the Poisson encoder
    (golden data, synaptic-operation counts); a network without one
    (``input.kind: spikes``) would get wrong inputs, so it is refused in one line.
    """
    ir = Path(run) / A.IR
    try:
        data = json.loads(ir.read_text()) if ir.is_file() else {}
    except (OSError, ValueError):
        return  # the command itself reports a damaged run
    attrs = data.get("attrs") if isinstance(data, dict) else None
    if isinstance(attrs, dict) and attrs.get("input_kind") == "spikes":
        raise UserError(f"{what} does not support networks with pre-encoded spike input (input.kind: spikes) yet; "
                        "use the Python API's Run.module() on spike trains", file=str(run))


# ---------------------------------------------------------------- NIR
def _nir_error(run: Path, graph: IRGraph, exc: CompileError) -> UserError:
    """A lowering or mapping error, located at the spec field of its node."""
    from saec.spec.loader import load_spec

    message = exc.message + "".join(f"; {c}" for c in exc.context if not c.startswith("pass `"))
    spec_file = run / A.SPEC
    if exc.node in graph and graph.meta(exc.node).get("spec_path"):
        loaded = load_spec(spec_file)
        return loaded.error(tuple(graph.meta(exc.node)["spec_path"]), f"cannot export to NIR: {message}")
    return UserError(f"cannot export to NIR: {message}", file=str(spec_file))


def _blocker_path(spec, blocker) -> tuple:
    """Spec path that sets ``blocker``'s field: a layer's own neuron override, else the default ``neuron``."""
    for i, layer in enumerate(spec.layers):
        override = getattr(layer, "neuron", None)
        if layer.name in blocker.layers and override is not None and getattr(override, blocker.field) is not None:
            return ("layers", i, "neuron", blocker.field)
    return ("neuron", blocker.field)


def _blocker_error(run: Path, blockers: list) -> UserError:
    """Semantics NIR cannot express, located at the spec field that sets them."""
    from saec.spec.loader import load_spec

    loaded = load_spec(run / A.SPEC)
    first = blockers[0]
    fix = ("train with neuron.lower_bound: null" if first.field == "lower_bound" else "train with neuron.reset: zero")
    more = "".join(f"; and {b.field} on layers {', '.join(b.layers)}" for b in blockers[1:])
    return loaded.error(_blocker_path(loaded.spec, first),
                        f"cannot export to NIR exactly: {first.reason} on layers {', '.join(first.layers)}{more}; "
                        f"{fix} for deployment, or pass --approximate to export anyway with a per-layer spike "
                        "agreement table")


def _golden_images(graph: IRGraph, data_dir: str | Path | None, examples: int):
    """The first ``examples`` validation images (float) and where they come from."""
    try:
        val = validation_set(RunConfig.of(graph), data_dir)
    except UserError as exc:
        raise UserError(f"golden data: {exc.message}", path="data") from None
    return val.images[:examples].float(), val.name


def export_nir(run: str | Path, *, target: str = "standard", examples: int = 4, seed: int = 0,
               data_dir: str | Path | None = None, approximate: bool = False):
    """Export a trained run to NIR, with golden data (``RUN/export/model.nir``, ``golden.nir``).

    The written ``model.nir`` is then simulated by saec's NIR simulator
    (:func:`saec.importers.nir.simulate_nir`) on the golden input and
    compared with the golden spikes, train by train (``NirExport.agreement``).

    Args:
        run: the run folder (``spec.yaml``, ``ir.json``, ``model.safetensors``).
        target: :data:`saec.exporters.nir.TARGETS`; ``standard`` writes ``model.nir`` only, the
            others also ``model.<target>.nir``.
        examples: validation images in the golden data (the first ones).
        seed: seed of the Poisson encoder for the golden input.
        data_dir: folder holding MNIST, overriding the spec's data roots.
        approximate: export a network with semantics NIR cannot express
            (:func:`saec.exporters.nir.nir_blockers`) anyway, without them; the golden data stay saec's spikes.
    Returns:
        :class:`saec.exporters.nir.NirExport`.
    Raises:
        UserError: not a run, no weights, a network NIR cannot express (without
            ``approximate``: names the spec field and the layers), data missing.
            Nothing is written then.
    """
    from saec.compiler.passes.lower_nir import lower_for_nir
    from saec.exporters import nir as N

    run = Path(run)
    if not run.is_dir():
        raise UserError("no such run folder", file=str(run))
    if target not in N.TARGETS:
        raise UserError(f"unknown NIR target {target!r}; use one of {', '.join(N.TARGETS)}", path="--target")
    if examples < 1:
        raise UserError(f"golden data needs at least 1 example, got {examples}", path="--examples")
    _, model = load_model(run)
    graph = model.graph
    if graph.attrs.get("kind") != "sae":
        raise UserError(f"cannot export to NIR: kind {graph.attrs.get('kind')} has no spiking neurons; NIR export "
                        "needs a spiking auto-encoder (kind: sae)", file=str(run / A.SPEC), path="kind")
    blockers = N.nir_blockers(graph)
    if blockers and not approximate:
        raise _blocker_error(run, blockers)
    approximated = [f"{b.field} on layers {', '.join(b.layers)}: {b.reason}; written without it" for b in blockers]
    try:
        lowered, weights = lower_for_nir(graph, model.ir_state_dict())
        graphs = {t: N.ir_to_nir(lowered, weights, target=t, metadata=N.graph_metadata(lowered, t))
                  for t in dict.fromkeys(("standard", target))}
    except CompileError as exc:
        raise _nir_error(run, graph, exc) from None
    # Golden data: saec's own spikes on the lowered graph (the one written), on real validation images.
    images, source = _golden_images(graph, data_dir, examples)
    spikes = N.golden_spikes(lowered, weights, images, seed)
    for g in graphs.values():
        g.metadata["golden"] = {"file": N.GOLDEN_FILE, "examples": int(images.shape[0]), "seed": seed,
                                "images": f"the first {images.shape[0]} images of {source}",
                                "encoder": "saec.runtime.encoding.poisson_encode, torch.Generator().manual_seed(seed)"}
        if approximated:
            g.metadata["approximated"] = " | ".join(approximated)
    return _write_nir(run / A.EXPORT, lowered, graphs, target, spikes, approximated)


def _write_nir(export_dir: Path, lowered: IRGraph, graphs: dict, target: str, spikes: dict, approximated: list[str]):
    """Write the NIR files and the golden data, then simulate the written model against the golden spikes."""
    from saec.exporters import nir as N
    from saec.importers.nir import agreement, simulate_nir

    model_path = export_dir / N.MODEL_FILE
    target_path = export_dir / N.target_file(target) if target != "standard" else None
    N.write_checked(model_path, graphs["standard"])
    if target_path is not None:
        N.write_checked(target_path, graphs[target], type_check=N.type_checks(lowered, target))
    N.write_golden(export_dir / N.GOLDEN_FILE, spikes)
    # What a NIR consumer of the written file computes, against saec: whole trains, every layer.
    simulated = simulate_nir(model_path, spikes[N.INPUT_NODE])
    T, B = spikes[N.INPUT_NODE].shape[:2]
    report = agreement({k: v.reshape(T, B, -1) for k, v in spikes.items() if k != N.INPUT_NODE},
                       {k: v.reshape(T, B, -1) for k, v in simulated.items()})
    return N.NirExport(model=model_path, golden=export_dir / N.GOLDEN_FILE, target_model=target_path,
                       not_carried=N.not_carried(lowered), nodes=len(graphs["standard"].nodes),
                       golden_examples=int(spikes[N.INPUT_NODE].shape[1]),
                       golden_spikes=int(spikes[N.OUTPUT_NODE].sum()), approximated=approximated, agreement=report)


def record_nir_check(run: Path, result: Any) -> None:
    """Write ``RUN/export/nir_check.json``: the NIR export's own check (saec's simulation of model.nir
    on the golden input against saec's spikes), for the run's report page."""
    A.write_json(run / A.EXPORT / "nir_check.json", {
        "check": "saec's NIR simulation of model.nir on golden.nir's input vs saec's own spikes, whole trains",
        "exact": result.exact,
        "golden_examples": result.golden_examples,
        "nodes": {node: {k: int(v) for k, v in r.items()} for node, r in result.agreement.items()},
        "approximated": list(result.approximated),
        "not_carried": list(result.not_carried),
    })


# ---------------------------------------------------------------- ONNX
def export_onnx(run: Path, *, timesteps: int | None = None, batch: int | None = None) -> Path:
    """Write ``RUN/export/model.onnx`` for a trained run and check it with ONNX's own checker.

    Args:
        run: a run folder written by ``saec train`` (spec.yaml, ir.json, model.safetensors).
        timesteps: T to unroll over (SAE; default the run's T).
        batch: fix the batch dimension (default symbolic).

    Returns:
        The path of the written model.

    Raises:
        UserError: not a run folder, not trained, an impossible T / batch, or a
            model that fails ``onnx.checker.check_model(full_check=True)``.
    """
    from saec.exporters import onnx as X

    run = Path(run)
    _, model = load_model(run)
    onnx_model = X.build_onnx_model(model.graph, model.ir_state_dict(), timesteps=timesteps, batch=batch)
    try:
        X.check_model(onnx_model)
    except UserError as exc:
        raise UserError(exc.message, file=str(run)) from None
    return X.write_model(onnx_model, run / A.EXPORT / X.MODEL_FILE)


def record_onnx_check(run: Path, onnx_path: Path) -> None:
    """Write ``RUN/export/onnx_check.json``: onnxruntime against saec's runtime on the first validation
    images (Poisson-encoded with a fixed seed), whole spike trains and x_hat
    (:func:`saec.exporters.onnx.compare_with_runtime`). Without the validation data the file says why."""
    import torch

    from saec.compiler import ops
    from saec.exporters.onnx import compare_with_runtime
    from saec.runtime.encoding import poisson_encode

    file = run / A.EXPORT / "onnx_check.json"
    _, model = load_model(run)
    try:
        images = validation_set(RunConfig.of(model.graph), limit=ONNX_CHECK_EXAMPLES).images
    except UserError as exc:
        A.write_json(file, {"check": "onnxruntime vs saec", "skipped": f"no validation images: {exc}"})
        return
    encoders = list(model.graph.nodes(ops.PoissonEncode))
    inputs = (poisson_encode(images, model.graph.op(encoders[0]),
                             generator=torch.Generator().manual_seed(ONNX_CHECK_SEED)) if encoders else images)
    agreement = compare_with_runtime(onnx_path, model, inputs)
    A.write_json(file, {
        "check": "onnxruntime running model.onnx vs saec's runtime on the same input, whole spike trains and x_hat",
        "examples": int(images.shape[0]), "encoding_seed": ONNX_CHECK_SEED, "spikes_exact": agreement.spikes_exact,
        **dataclasses.asdict(agreement),
    })
