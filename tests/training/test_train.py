"""The training loop: run folder, resume after an interruption, determinism, divergence, Ctrl-C."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from saec.compiler.graph import IRGraph
from saec.compiler.pipeline import compile_spec
from saec.compiler.runconfig import RunConfig
from saec.run import artifacts as A
from saec.training import train as train_module
from saec.run.checkpoint import LOCK
from saec.run import folder as run_folder
from saec.run.folder import load_model
from saec.run.train import train
from saec.training.train import TrainingDiverged, TrainingInterrupted
from saec.errors import UserError
from saec.spec.loader import load_spec

real_objective = train_module.objective

# A small 28x28 SAE (conv 5x5 stride 2 -> 2x12x12, latent 8, conv-T 6x6 stride 2 -> 1x28x28) on the
# embedded mnist5k data: 96 training images in batches of 16, 3 steps per epoch, 2 epochs, T=4.
MINI_SPEC = """\
name: mini
kind: sae
latent: latent
input: {shape: [1, 28, 28]}
encoding: {timesteps: 4}
layers:
  - {name: conv1, type: conv2d, out_channels: 2, kernel_size: 5, stride: 2}
  - {name: flat, type: flatten}
  - {name: latent, type: linear, out_features: 8}
  - {name: fc_dec, type: linear, out_features: 288}
  - {name: unflat, type: unflatten, shape: [2, 12, 12]}
  - {name: output, type: conv_transpose2d, out_channels: 1, kernel_size: 6, stride: 2}
regularizers: {p2: {weight: 0.01}, a1: {weight: 0.01, layers: [latent]}}
training: {epochs: 2, batch_size: 16, max_steps: 3, seed: 0, lr: 0.002}
data: {dataset: mnist5k, train_limit: 96, validation: {source: split, fraction: 0.1, limit: 32}}
"""
STEPS_PER_EPOCH, EPOCHS = 3, 2
RUN_FILES = {A.SPEC, A.IR, A.WEIGHTS, A.TRAIN_STATE, A.METRICS, A.EVAL, A.FIGURES}


def mini(tmp_path: Path, overrides: list[str] = ()):
    """(spec, graph) of the mini network."""
    path = tmp_path / "mini.yaml"
    path.write_text(MINI_SPEC)
    loaded, graph = compile_spec(str(path), list(overrides))
    return loaded.spec, graph


def run(tmp_path: Path, name: str, overrides: list[str] = (), **kwargs):
    spec, graph = mini(tmp_path, overrides)
    out = tmp_path / name
    return out, train(spec, graph, out, device="cpu", progress=False, log=lambda line: None, **kwargs)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return A.load_weights(out / A.WEIGHTS)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def metric_rows(out: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock field."""
    rows = [json.loads(line) for line in (out / A.METRICS).read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def folder_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def no_temporary_files(out: Path) -> None:
    leftovers = [str(p) for p in out.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]
    assert leftovers == []


@pytest.fixture
def light_finish(monkeypatch):
    """finish_run with eval.json but without figures, for the tests about the loop itself
    (the real finish_run, figures included, runs in the baseline and the CLI tests)."""
    from saec.run import report
    from saec.analysis.evaluate import evaluate

    def finish(out, spec, model, val_set, *, device="cpu", **_):
        metrics = evaluate(model, val_set, batch_size=spec.training.batch_size, seed=spec.training.seed,
                           device=device).metrics
        A.write_json(Path(out) / A.EVAL, metrics)
        return metrics

    monkeypatch.setattr(report, "finish_run", finish)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One uninterrupted run, shared by the comparisons below."""
    tmp = tmp_path_factory.mktemp("baseline")
    out, final = run(tmp, "run")
    return out, final, mini(tmp)


# ---------------------------------------------------------------- the run folder
def test_run_folder_holds_every_artifact(baseline, tmp_path):
    out, final, (spec, graph) = baseline
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    figures = [p.name for p in (out / A.FIGURES).iterdir()]
    assert "reconstructions.png" in figures and all(name.endswith(".png") for name in figures)
    no_temporary_files(out)
    # spec.yaml: resolved, every default written out, loads back to the same Spec
    assert load_spec(out / A.SPEC).spec == spec
    assert "potential_per_timestep" in (out / A.SPEC).read_text()
    # ir.json: loads back to the same IR
    assert IRGraph.read_json(out / A.IR) == graph
    # model.safetensors: keyed by IR node name
    with safe_open(str(out / A.WEIGHTS), framework="pt") as f:
        assert set(f.keys()) == {f"{n}.weight" for n in ("conv1", "latent", "fc_dec", "output")}
        assert f.metadata()["global_step"] == str(STEPS_PER_EPOCH * EPOCHS)
    # train_state.pt: loads with weights_only=True (A.load_torch does) and says the run is complete
    state = torch.load(out / A.TRAIN_STATE, weights_only=True)
    assert state["complete"] and state["global_step"] == STEPS_PER_EPOCH * EPOCHS and state["epoch"] == EPOCHS
    # metrics.jsonl: one line per epoch
    rows = metric_rows(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert [r["global_step"] for r in rows] == [3, 6]
    for row in rows:
        assert math.isfinite(row["train_loss"]) and math.isfinite(row["val_rec_loss"])
        assert 0 <= row["val_latent_anr"] <= 1
    # eval.json: the final validation metrics
    ev = json.loads((out / A.EVAL).read_text())
    assert ev["rec_loss"] == pytest.approx(final["rec_loss"]) and ev["examples"] == 32
    assert ev["rec_loss"] == pytest.approx(rows[-1]["val_rec_loss"])
    assert (out / A.FIGURES / "reconstructions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # load_model gives back the trained weights
    _, model = load_model(out)
    for key, value in model.ir_state_dict().items():
        assert torch.equal(value, weights(out)[key])


def test_training_lowers_the_loss(light_finish, tmp_path):
    out, _ = run(tmp_path, "longer", ["training.epochs=3", "training.max_steps=6", "data.train_limit=192"])
    rows = metric_rows(out)
    assert rows[-1]["train_rec"] < rows[0]["train_rec"]


# ---------------------------------------------------------------- determinism and resume
def test_same_seed_same_weights_other_seed_differs(light_finish, baseline, tmp_path):
    out, _ = run(tmp_path, "again")
    assert_same_weights(baseline[0], out)
    assert metric_rows(baseline[0]) == metric_rows(out)
    other, _ = run(tmp_path, "seed1", ["training.seed=1"])
    assert any(not torch.equal(a, b) for a, b in zip(weights(baseline[0]).values(), weights(other).values()))


@pytest.mark.parametrize("stop_after", [2, STEPS_PER_EPOCH, STEPS_PER_EPOCH + 1],
                         ids=["mid_epoch_1", "epoch_boundary", "mid_epoch_2"])
def test_resume_after_interruption_ends_with_identical_weights(light_finish, stop_after, baseline, tmp_path):
    spec, graph = mini(tmp_path)
    out = tmp_path / "interrupted"
    with pytest.raises(TrainingInterrupted, match=f"global step {stop_after}"):
        train(spec, graph, out, device="cpu", progress=False, log=lambda line: None, stop_after_steps=stop_after)
    state = A.load_torch(out / A.TRAIN_STATE)
    assert state["global_step"] == stop_after and not state["complete"]
    assert (state["epoch"], state["step_in_epoch"]) == divmod(stop_after, STEPS_PER_EPOCH)
    assert not (out / A.EVAL).exists()
    no_temporary_files(out)
    # resume as the CLI does: spec and IR from the run folder
    spec2, graph2 = run_folder.load_run(out)
    lines: list[str] = []
    final = train(spec2, graph2, out, device="cpu", progress=False, log=lines.append, resume=True)
    assert any(line.startswith("resuming") for line in lines)
    assert_same_weights(baseline[0], out)
    assert metric_rows(baseline[0]) == metric_rows(out)
    assert final["rec_loss"] == pytest.approx(baseline[1]["rec_loss"], abs=0)
    # a finished run resumes to nothing
    lines.clear()
    train(spec2, graph2, out, device="cpu", progress=False, log=lines.append, resume=True)
    assert lines == [f"run {out} is already complete; nothing to do"]


def test_resume_needs_a_checkpoint(tmp_path):
    spec, graph = mini(tmp_path)
    with pytest.raises(UserError, match="nothing to resume"):
        train(spec, graph, tmp_path / "empty", device="cpu", progress=False, resume=True)


def test_bf16_run_says_so_and_resumes_in_bf16(light_finish, baseline, tmp_path):
    spec, graph = mini(tmp_path, ["training.precision=bf16"])
    whole = tmp_path / "whole"
    lines: list[str] = []
    train(spec, graph, whole, device="cpu", progress=False, log=lines.append)
    header = next(line for line in lines if line.startswith("training mini on cpu"))
    assert header.endswith(f"2 epochs, precision bf16) -> {whole}")
    # the run records how it was trained: metrics.jsonl, the run config in ir.json, spec.yaml
    assert [row["precision"] for row in metric_rows(whole)] == ["bf16", "bf16"]
    assert [row["precision"] for row in metric_rows(baseline[0])] == ["fp32", "fp32"]
    assert RunConfig.of(IRGraph.read_json(whole / A.IR)).training.precision == "bf16"
    assert load_spec(whole / A.SPEC).spec.training.precision == "bf16"
    # from the same seed bf16 ends with other weights than fp32 ...
    assert all(not torch.equal(a, b) for a, b in zip(weights(baseline[0]).values(), weights(whole).values()))
    # ... and an interrupted bf16 run, resumed from its folder, ends with the uninterrupted bf16 run's
    # weights: the steps after the resume ran in bf16 too
    out = tmp_path / "resumed"
    with pytest.raises(TrainingInterrupted):
        train(spec, graph, out, device="cpu", progress=False, log=lambda line: None,
              stop_after_steps=STEPS_PER_EPOCH + 1)
    lines.clear()
    train(*run_folder.load_run(out), out, device="cpu", progress=False, log=lines.append, resume=True)
    assert any(line.startswith("resuming") for line in lines)
    assert any(line.endswith(f"precision bf16) -> {out}") for line in lines)
    assert_same_weights(whole, out)
    assert metric_rows(whole) == metric_rows(out)


# ---------------------------------------------------------------- failures
def _objective_calling(hook):
    """train.objective wrapped so that ``hook(call_number, loss)`` runs before it returns."""
    calls = {"n": 0}

    def wrapped(model, out, x):
        loss, parts = real_objective(model, out, x)
        calls["n"] += 1
        return hook(calls["n"], loss, parts)

    return wrapped


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(light_finish, tmp_path, monkeypatch):
    spec, graph = mini(tmp_path)
    out = tmp_path / "nan"
    snapshot: dict[str, bytes] = {}

    def hook(n, loss, parts):
        if n == STEPS_PER_EPOCH + 1:  # first step of epoch 2: epoch 1's checkpoint is on disk
            snapshot.update(folder_bytes(out))
        if n == STEPS_PER_EPOCH + 2:
            return loss * float("nan"), {**parts, "rec": float("nan")}
        return loss, parts

    monkeypatch.setattr(train_module, "objective", _objective_calling(hook))
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 2 \(global step 5\).*the last good checkpoint "
                                              r"\(global step 3\).*was kept"):
        train(spec, graph, out, device="cpu", progress=False, log=lambda line: None)
    assert A.WEIGHTS in snapshot and A.TRAIN_STATE in snapshot
    assert snapshot.pop(LOCK)  # the run folder was locked while training wrote it ...
    # byte for byte: nothing was written after the bad step (... and unlocked), except the per-step log
    # (steps.csv), which records every step that ran, up to the last good one (a resume drops the rows
    # after its checkpoint)
    after = folder_bytes(out)
    logged = [int(line.split(",")[2]) for line in after.pop("steps.csv").decode().splitlines()[1:]]
    snapshot.pop("steps.csv")
    assert after == snapshot
    assert logged == list(range(1, STEPS_PER_EPOCH + 2))  # the bad step (global step 5) is not logged
    no_temporary_files(out)
    # the kept checkpoint resumes
    monkeypatch.setattr(train_module, "objective", real_objective)
    assert A.load_torch(out / A.TRAIN_STATE)["global_step"] == STEPS_PER_EPOCH
    train(*run_folder.load_run(out), out, device="cpu", progress=False, log=lambda line: None, resume=True)


def test_huge_learning_rate_diverges_with_a_clear_message(tmp_path):
    spec, graph = mini(tmp_path, ["training.lr=1e30"])
    with pytest.raises(TrainingDiverged,
                       match=r"(loss became|weights .* became) (nan|inf|NaN).*no checkpoint had been written"):
        train(spec, graph, tmp_path / "lr", device="cpu", progress=False, log=lambda line: None)


def test_ctrl_c_finishes_the_step_and_writes_a_resumable_checkpoint(light_finish, baseline, tmp_path, monkeypatch):
    spec, graph = mini(tmp_path)
    out = tmp_path / "ctrl_c"

    def hook(n, loss, parts):
        if n == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the real signal, delivered to the real handler
        return loss, parts

    monkeypatch.setattr(train_module, "objective", _objective_calling(hook))
    lines: list[str] = []
    with pytest.raises(TrainingInterrupted, match="global step 2.*resume with"):
        train(spec, graph, out, device="cpu", progress=False, log=lines.append)
    assert any(line.startswith("Ctrl-C: finishing this step") for line in lines)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    state = A.load_torch(out / A.TRAIN_STATE)
    assert (state["global_step"], state["step_in_epoch"]) == (2, 2)  # the step in flight was completed
    monkeypatch.setattr(train_module, "objective", real_objective)
    train(*run_folder.load_run(out), out, device="cpu", progress=False, log=lambda line: None, resume=True)
    assert_same_weights(baseline[0], out)


def test_second_ctrl_c_stops_at_once_without_a_checkpoint(tmp_path, monkeypatch):
    spec, graph = mini(tmp_path)
    out = tmp_path / "twice"

    def hook(n, loss, parts):
        if n == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return loss, parts

    monkeypatch.setattr(train_module, "objective", _objective_calling(hook))
    with pytest.raises(TrainingInterrupted, match="second Ctrl-C.*no checkpoint had been written.*start the run"):
        train(spec, graph, out, device="cpu", progress=False, log=lambda line: None)
    assert not (out / A.TRAIN_STATE).exists() and not (out / A.WEIGHTS).exists()


def test_existing_run_is_refused_unless_forced(light_finish, baseline, tmp_path):
    spec, graph = mini(tmp_path)
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(spec, graph, out, device="cpu", progress=False, log=lambda line: None, stop_after_steps=1)
    before = folder_bytes(out)
    with pytest.raises(UserError, match="already holds a run"):
        train(spec, graph, out, device="cpu", progress=False, log=lambda line: None)
    assert folder_bytes(out) == before
    train(spec, graph, out, device="cpu", progress=False, log=lambda line: None, force=True)
    assert_same_weights(baseline[0], out)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        train(spec, graph, tmp_path / "file", device="cpu", progress=False)


def test_device_choices(tmp_path, monkeypatch):
    spec, graph = mini(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="--device cpu or auto"):
        train(spec, graph, tmp_path / "cuda", device="cuda", progress=False)
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        train(spec, graph, tmp_path / "tpu", device="tpu", progress=False)
    assert run_folder.resolve_device("auto") == torch.device("cpu")
    assert not (tmp_path / "cuda").exists()


def test_missing_data_names_the_alternatives(tmp_path):
    spec, graph = mini(tmp_path, ["data.dataset=mnist", f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(UserError) as err:
        train(spec, graph, tmp_path / "nodata", device="cpu", progress=False)
    message = str(err.value)
    assert "\n" not in message and "mnist5k" in message and "--data-dir" in message
