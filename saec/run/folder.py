"""The run folder: open one (spec, IR, weights, each checked), start one, and the device a command runs on.

Only the run layer knows run folders; training, analysis and the exporters
get the graph, the model and the data as arguments.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch

from saec.atomicwrite import TEMPORARY_GLOB
from saec.compiler.graph import IRGraph
from saec.compiler.pipeline import compile_loaded, summarize
from saec.compiler.runconfig import ATTR as RUN_CONFIG, RunConfig, run_config
from saec.errors import UserError
from saec.run import artifacts as A
from saec.run.checkpoint import CHECKPOINTS, MANIFEST, read_manifest
from saec.runtime.model import SpikingAutoencoder
from saec.spec.loader import LoadedSpec, load_spec, resolved_yaml
from saec.spec.schema import Spec


def resolve_device(device: str) -> torch.device:
    """The torch device a ``--device`` value names (``auto``: CUDA when torch sees a GPU).

    Raises:
        UserError: ``cuda`` without a GPU, or an unknown name (located at ``--device``).
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("CUDA was asked for (--device cuda) but torch sees no GPU; use --device cpu or auto",
                        path="--device")
    if device not in ("cpu", "cuda"):
        raise UserError(f"unknown device {device!r} (cpu, cuda or auto)", path="--device")
    return torch.device(device)



def write_run_header(out: Path, spec: Spec, graph: IRGraph) -> None:
    """Write the run's resolved ``spec.yaml`` and ``ir.json`` (the IR with its run config and summary)."""
    A.write_text(out / A.SPEC, resolved_yaml(spec))
    A.write_text(out / A.IR, graph.to_json(summarize(graph)) + "\n")


def with_run_config(spec: Spec, graph: IRGraph) -> RunConfig:
    """The run config of ``graph``, compiled from ``spec`` into it when it has none (a run folder written
    before run configs existed, or a graph built without :func:`saec.compiler.pipeline.compile_loaded`)."""
    if RUN_CONFIG not in graph.attrs:
        graph.attrs[RUN_CONFIG] = run_config(spec).to_dict()
    return RunConfig.of(graph)


def load_run(run: Path) -> tuple[Spec, IRGraph]:
    """The resolved spec and IR of a run folder, checked against each other; the IR carries its run config.

    Raises:
        UserError: not a run folder, a damaged ``ir.json``, or a ``spec.yaml`` edited after the run was
            compiled (its sha256 differs from the one ``ir.json`` records); each names the file.
    """
    run = Path(run)
    if not run.is_dir():
        raise UserError("not a saec run folder (no such folder)", file=str(run))
    for name in (A.SPEC, A.IR):
        if not (run / name).is_file():
            raise UserError(f"not a saec run folder (no {name})", file=str(run))
    spec = load_spec(run / A.SPEC).spec
    ir_path = run / A.IR
    doc = A.load_json(ir_path)
    try:
        graph = IRGraph.from_dict(doc) if isinstance(doc, dict) else None
    except Exception as exc:  # noqa: BLE001 - any malformed node is "a damaged ir.json", named as such
        raise A.ArtifactError(ir_path, f"not a saec IR ({A._short(exc)})") from None
    if graph is None:
        raise A.ArtifactError(ir_path, f"not a saec IR (a JSON {type(doc).__name__}, not an object)")
    recorded = graph.attrs.get("spec_sha256")
    actual = hashlib.sha256(resolved_yaml(spec).encode()).hexdigest()
    if recorded != actual:
        raise A.ArtifactError(run / A.SPEC, f"does not match the run's IR (sha256 {actual[:12]}..., {A.IR} records "
                                            f"{str(recorded)[:12]}...): spec.yaml or ir.json was edited after "
                                            "the run was compiled, so the folder no longer describes its model")
    rebuilt = compile_loaded(LoadedSpec(spec, str(run / A.SPEC)))
    structure = [(n["name"], n["op"], n["inputs"]) for n in rebuilt.to_dict()["nodes"]]
    if structure != [(n["name"], n["op"], n["inputs"]) for n in graph.to_dict()["nodes"]]:
        raise A.ArtifactError(ir_path, f"its graph differs from the one {A.SPEC} compiles to (edited or damaged)")
    with_run_config(spec, graph)  # a folder from before run configs: compiled from its spec.yaml
    return spec, graph


def check_weights(path: Path, weights: dict[str, torch.Tensor], model: SpikingAutoencoder, *,
                  finite: bool = True) -> None:
    """Refuse weights that do not fit ``model`` (keys, shapes, dtype) or, with ``finite``, hold NaN/inf.

    Raises:
        ArtifactError: naming ``path`` and the first offending tensor.
    """
    expected = {k: v for k, v in model.ir_state_dict().items()}
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or extra:
        raise A.ArtifactError(path, "tensors do not match the run's IR"
                                    + (f"; missing {', '.join(missing)}" if missing else "")
                                    + (f"; unexpected {', '.join(extra[:5])}" if extra else ""))
    for key, want in expected.items():
        got = weights[key]
        if tuple(got.shape) != tuple(want.shape):
            raise A.ArtifactError(path, f"tensor {key} has shape {list(got.shape)}, the IR needs {list(want.shape)}")
        if not got.is_floating_point():
            raise A.ArtifactError(path, f"tensor {key} has dtype {got.dtype}, not a floating-point type")
        if finite and not torch.isfinite(got).all():
            raise A.ArtifactError(path, f"tensor {key} holds NaN or infinite values; the run diverged or the "
                                        "file was damaged")


def load_model(run: Path, device: str | torch.device = "cpu") -> tuple[Spec, SpikingAutoencoder]:
    """A trained model from a run folder (weights from model.safetensors, checked: keys, shapes, finite)."""
    spec, graph = load_run(run)
    weights = Path(run) / A.WEIGHTS
    if not weights.is_file():
        raise UserError(f"no trained weights ({A.WEIGHTS}); train or resume this run first", file=str(run))
    manifest = read_manifest(run)
    if manifest is not None and A.sha256_file(weights) != manifest["files"][A.WEIGHTS]:
        raise A.ArtifactError(weights, f"differs from the weights {MANIFEST} records (sha256): the file was changed "
                                       f"or damaged after training; `saec train --resume {run}` restores it from "
                                       "the checkpoint if that is intact")
    model = SpikingAutoencoder(graph)
    state = A.load_weights(weights)
    check_weights(weights, state, model)
    model.load_ir_state_dict(state)
    return spec, model.to(device)


def refuse_existing_run(out: Path, force: bool) -> None:
    """A fresh run may not overwrite another run's files unless ``force``."""
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a folder; give --out a folder for the run", file=str(out))
    # Only trained state is worth protecting: a folder a crash left with just spec.yaml and ir.json restarts.
    held = [name for name in (A.WEIGHTS, A.TRAIN_STATE, MANIFEST) if (out / name).exists()]
    if held and not force:
        raise UserError(f"already holds a run ({', '.join(held)}); use --resume to continue it, --force to "
                        "overwrite it, or --out for a new folder", file=str(out))


def clear_run(out: Path) -> None:
    """Remove the artifacts of an earlier run in ``out`` (``--force``), so none outlives the new run."""
    for stale in (MANIFEST, A.TRAIN_STATE, A.WEIGHTS, A.METRICS, A.EVAL, A.STATS, A.STEPS, A.REPORT):
        (out / stale).unlink(missing_ok=True)
    for folder in (A.FIGURES, A.EXPORT, CHECKPOINTS, A.TENSORBOARD):  # drawn from or exported from the old weights
        shutil.rmtree(out / folder, ignore_errors=True)
    for leftover in out.glob(TEMPORARY_GLOB):  # temporaries of a process that was killed
        leftover.unlink(missing_ok=True)

