"""Exclusive run folders, atomic checkpoints (SIGKILL at every write boundary), damaged and edited artifacts."""

from __future__ import annotations

import collections
import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from saec.cli import app
from saec.run import artifacts as A
from saec.run import checkpoint as C
from saec.run.folder import load_model, load_run
from saec.run.train import RunWriteFailed, train
from saec.errors import UserError
from tests.conftest import REPO
from tests.training.test_train import (MINI_SPEC, assert_same_weights, baseline, light_finish,  # noqa: F401
                                      mini, no_temporary_files)

runner = CliRunner()
quiet = dict(device="cpu", progress=False, log=lambda line: None)


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    err = result.stderr.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- exclusive runs
HOLD_LOCK = """
import sys, time
from saec.run.checkpoint import RunLock
with RunLock(sys.argv[1], "train"):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        spec, graph = mini(tmp_path)
        with pytest.raises(UserError, match=rf"run: is in use by `saec train` \(pid {holder.pid} on .*started"):
            train(spec, graph, out, **quiet)
        # the command line: one line, exit 2, and the holder's folder untouched
        result = runner.invoke(app, ["train", str(tmp_path / "mini.yaml"), "--out", str(out), "--device", "cpu"])
        assert f"pid {holder.pid}" in one_line_error(result)
        assert sorted(p.name for p in out.iterdir()) == [C.LOCK]
    finally:
        holder.communicate("\n", timeout=30)
    assert not (out / C.LOCK).exists()  # released on exit


def test_stale_lock_of_a_dead_process_is_taken_over(light_finish, tmp_path):
    out = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out.mkdir()
    (out / C.LOCK).write_text(json.dumps({"pid": dead.pid, "host": "vm", "started": "x", "command": "train"}))
    lines: list[str] = []
    spec, graph = mini(tmp_path)
    train(spec, graph, out, device="cpu", progress=False, log=lines.append)
    assert f"took over the lock of a process that is gone (pid {dead.pid})" in lines
    assert not (out / C.LOCK).exists() and (out / A.EVAL).is_file()


def test_refused_run_leaves_no_empty_folder(tmp_path):
    spec, graph = mini(tmp_path, ["data.dataset=mnist", f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(UserError):
        train(spec, graph, tmp_path / "never", **quiet)
    assert not (tmp_path / "never").exists()


# ---------------------------------------------------------------- atomic checkpoints
#: Train the mini spec with the light final evaluation (no figures) in a process of its own.
TRAIN_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from saec.run import artifacts as A, report
    from saec.analysis.evaluate import evaluate
    from saec.run.folder import load_run
    from saec.run.train import train
    from saec.compiler.pipeline import compile_spec

    def finish(out, spec, model, val_set, *, device="cpu", **_):
        metrics = evaluate(model, val_set, batch_size=spec.training.batch_size, seed=spec.training.seed,
                           device=device).metrics
        A.write_json(Path(out) / A.EVAL, metrics)
        return metrics

    report.finish_run = finish
    spec_file, out, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    if mode == "resume":
        spec, graph = load_run(out)
    else:
        loaded, graph = compile_spec(spec_file)
        spec = loaded.spec
    train(spec, graph, out, device="cpu", progress=False, log=lambda line: None, resume=mode == "resume")
""")
BOUNDARIES_PER_CHECKPOINT = 7  # 2 files, folder rename, manifest, 2 run-root links, cleanup
CHECKPOINTS_PER_RUN = 3  # end of epoch 1, end of epoch 2, complete


def _train_process(spec_file: Path, out: Path, mode: str, kill_at: int | None = None) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(A._FAULT_ENV, None)
    if kill_at is not None:
        env[A._FAULT_ENV] = str(kill_at)
    return subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, str(spec_file), str(out), mode], env=env,
                          cwd=REPO, timeout=300, capture_output=True).returncode


@pytest.fixture(scope="module")
def process_baseline(tmp_path_factory) -> Path:
    """An uninterrupted run in a process of its own (same thread setup as the killed ones)."""
    tmp = tmp_path_factory.mktemp("process_baseline")
    (tmp / "mini.yaml").write_text(MINI_SPEC)
    assert _train_process(tmp / "mini.yaml", tmp / "run", "fresh") == 0
    return tmp / "run"


def _kill_and_resume(baseline: Path, tmp_path: Path, kill_at: int) -> None:
    spec_file = tmp_path / "mini.yaml"
    spec_file.write_text(MINI_SPEC)
    out = tmp_path / f"killed{kill_at}"
    assert _train_process(spec_file, out, "fresh", kill_at) == -9  # SIGKILLed at that boundary
    if (out / C.MANIFEST).exists() or (out / A.TRAIN_STATE).exists():
        assert _train_process(spec_file, out, "resume") == 0
    else:  # killed before the first checkpoint was committed: nothing to resume, and a new start is not refused
        assert _train_process(spec_file, out, "fresh") == 0
    assert_same_weights(baseline, out)
    no_temporary_files(out)
    assert sorted(p.name for p in (out / C.CHECKPOINTS).iterdir()) == [f"{C.read_manifest(out)['serial']:06d}"]


#: In the default run (two processes of ~8 s each per kill): between the two run-root links, after the
#: commit, so resume must repair the run root; every other boundary of the run under -m slow.
REPRESENTATIVE_BOUNDARIES = (5,)


@pytest.mark.parametrize("kill_at", REPRESENTATIVE_BOUNDARIES)
def test_sigkill_at_a_write_boundary_then_resume(process_baseline, tmp_path, kill_at):
    _kill_and_resume(process_baseline, tmp_path, kill_at)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [b for b in range(1, BOUNDARIES_PER_CHECKPOINT * CHECKPOINTS_PER_RUN + 1)
                                     if b not in REPRESENTATIVE_BOUNDARIES])
def test_sigkill_at_every_write_boundary_then_resume(process_baseline, tmp_path, kill_at):
    _kill_and_resume(process_baseline, tmp_path, kill_at)


def test_a_run_has_as_many_write_boundaries_as_the_kill_tests_assume(light_finish, tmp_path, monkeypatch):
    passed = []
    monkeypatch.setattr(A, "write_boundary", lambda: passed.append(1))
    spec, graph = mini(tmp_path)
    train(spec, graph, tmp_path / "run", **quiet)
    assert len(passed) == BOUNDARIES_PER_CHECKPOINT * CHECKPOINTS_PER_RUN


# ---------------------------------------------------------------- damaged and edited artifacts
def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return A.load_weights(path)


def _corrupt_weights(kind: str):
    def apply(path: Path) -> None:
        data = path.read_bytes()
        if kind == "truncated":
            path.write_bytes(data[: len(data) // 2])
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "garbage":
            path.write_bytes(os.urandom(4096))
        else:
            tensors = _tensors(path)
            if kind == "wrong_shape":
                tensors["latent.weight"] = torch.zeros(3, 3)
            elif kind == "missing_key":
                del tensors["latent.weight"]
            elif kind == "nan":
                tensors["latent.weight"] = tensors["latent.weight"].clone().fill_(float("nan"))
            elif kind == "inf":
                tensors["conv1.weight"] = tensors["conv1.weight"].clone().fill_(float("inf"))
            metadata = A.weights_metadata(path)  # the same step and spec hash: only the tensors change
            path.unlink()  # a new file, not the hard-linked checkpoint copy
            A.save_weights(path, tensors, metadata)
    return apply


def _corrupt_state(kind: str):
    def apply(path: Path) -> None:
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[:100])
        elif kind == "garbage":
            path.write_bytes(os.urandom(2048))
        elif kind == "list":
            torch.save([1, 2, 3], path)
        elif kind == "keyless":
            torch.save({}, path)
    return apply


WEIGHT_DAMAGE = ["truncated", "empty", "garbage", "wrong_shape", "missing_key", "nan", "inf"]
STATE_DAMAGE = ["truncated", "garbage", "list", "keyless"]
READERS = {  # every command that reads a trained run, as command-line arguments after the run folder
    "eval": lambda run: ["eval", str(run), "--device", "cpu", "--no-figures", "--limit", "4"],
    "stats": lambda run: ["stats", str(run), "--device", "cpu", "--examples", "4"],
    "export_nir": lambda run: ["export", str(run), "--format", "nir", "--examples", "1"],
    "export_onnx": lambda run: ["export", str(run), "--format", "onnx"],
    "resume": lambda run: ["train", "--resume", str(run), "--device", "cpu", "--no-progress"],
}


@pytest.fixture
def run_copy(baseline, tmp_path) -> Path:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(baseline[0], out)
    return out


def _checkpoint_file(run: Path, name: str) -> Path:
    return run / C.CHECKPOINTS / f"{C.read_manifest(run)['serial']:06d}" / name


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("damage", WEIGHT_DAMAGE)
def test_damaged_weights_are_one_line_naming_the_file(run_copy, reader, damage):
    target = _checkpoint_file(run_copy, A.WEIGHTS) if reader == "resume" else run_copy / A.WEIGHTS
    _corrupt_weights(damage)(target)
    err = one_line_error(runner.invoke(app, READERS[reader](run_copy)))
    assert A.WEIGHTS in err, err
    # the manifest's hash catches every change first
    expected = "sha256 differs" if reader == "resume" else f"differs from the weights {C.MANIFEST} records"
    assert expected in err, err


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("damage", WEIGHT_DAMAGE)
def test_damaged_weights_without_a_manifest_are_checked_by_content(run_copy, reader, damage):
    """A run folder from before checkpoint manifests: the weights themselves are checked."""
    import shutil

    (run_copy / C.MANIFEST).unlink()
    shutil.rmtree(run_copy / C.CHECKPOINTS)
    _corrupt_weights(damage)(run_copy / A.WEIGHTS)
    err = one_line_error(runner.invoke(app, READERS[reader](run_copy)))
    expected = {"truncated": "not a readable safetensors", "empty": "not a readable safetensors",
                "garbage": "not a readable safetensors", "wrong_shape": "latent.weight has shape [3, 3]",
                "missing_key": "missing latent.weight", "nan": "NaN or infinite", "inf": "NaN or infinite"}[damage]
    assert f"{A.WEIGHTS}: " in err and expected in err, err


@pytest.mark.parametrize("damage", STATE_DAMAGE)
def test_damaged_training_state_is_one_line_naming_the_file(run_copy, damage):
    _corrupt_state(damage)(_checkpoint_file(run_copy, A.TRAIN_STATE))
    err = one_line_error(runner.invoke(app, READERS["resume"](run_copy)))
    assert A.TRAIN_STATE in err and "sha256 differs" in err, err


@pytest.mark.parametrize("damage", STATE_DAMAGE)
def test_training_state_checks_name_the_file(tmp_path, damage):
    """A state that passes the hash (an old run without a manifest) is still checked field by field."""
    path = tmp_path / A.TRAIN_STATE
    torch.save({"format": 2}, path)
    _corrupt_state(damage)(path)
    with pytest.raises(UserError, match=rf"{A.TRAIN_STATE}: (not a readable training state \(|holds a list|"
                                        r"not a complete saec training state \(missing format)") as err:
        C.check_state(path, A.load_torch(path))
    assert "weights_only=False" not in str(err.value)  # torch's advice to run the pickle is not passed on


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("content", ["[]", "NaN", "{", '{"format": "saec-ir", "version": 1, "nodes": [{}]}'])
def test_damaged_ir_is_one_line_naming_the_file(run_copy, reader, content):
    (run_copy / A.IR).write_text(content)
    err = one_line_error(runner.invoke(app, READERS[reader](run_copy)))
    assert f"{A.IR}:" in err, err


@pytest.mark.parametrize("reader", READERS)
def test_edited_spec_is_refused_by_its_hash(run_copy, reader):
    spec = run_copy / A.SPEC
    spec.write_text(spec.read_text().replace("lr: 0.002", "lr: 0.02"))
    err = one_line_error(runner.invoke(app, READERS[reader](run_copy)))
    assert f"{A.SPEC}: does not match the run's IR" in err and "edited" in err, err


def test_a_comment_in_spec_yaml_is_not_an_edit(run_copy):
    spec = run_copy / A.SPEC
    spec.write_text("# my notes\n" + spec.read_text())
    load_run(run_copy)  # the hash is over the resolved spec, not the bytes


def test_nan_weights_are_refused_by_load_model(run_copy):
    (run_copy / C.MANIFEST).unlink()
    _corrupt_weights("nan")(run_copy / A.WEIGHTS)
    with pytest.raises(UserError, match=r"model.safetensors: tensor latent.weight holds NaN or infinite"):
        load_model(run_copy)


def test_identical_tensors_give_identical_bytes(tmp_path):
    a = {"b.weight": torch.ones(2), "a.weight": torch.zeros(3)}
    b = {"a.weight": torch.zeros(3), "b.weight": torch.ones(2)}
    A.save_weights(tmp_path / "a.safetensors", a, {"x": "1", "global_step": "2"})
    A.save_weights(tmp_path / "b.safetensors", b, {"global_step": "2", "x": "1"})
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


# ---------------------------------------------------------------- hostile environments
def test_full_disk_mid_run_is_one_line_exit_1_and_keeps_the_checkpoint(light_finish, tmp_path, monkeypatch):
    spec, graph = mini(tmp_path)
    out = tmp_path / "full"
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):  # the disk fills up while the second checkpoint is written
        calls["n"] += 1
        if calls["n"] == 2:
            Path(f).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(A.torch, "save", save)
    with pytest.raises(RunWriteFailed, match=r"global step 6 failed: No space left on device; the last good "
                                             r"checkpoint \(global step 3\)"):
        train(spec, graph, out, **quiet)
    no_temporary_files(out)
    assert not (out / C.LOCK).exists()
    monkeypatch.setattr(A.torch, "save", real_save)
    assert C.read_manifest(out)["global_step"] == 3
    train(*load_run(out), out, resume=True, **quiet)  # the kept checkpoint resumes
    assert C.read_manifest(out)["complete"]


shutil_usage = collections.namedtuple("usage", "total used free")


def test_full_disk_on_the_command_line(tmp_path, monkeypatch):
    (tmp_path / "mini.yaml").write_text(MINI_SPEC)
    real_save = torch.save

    def save(obj, f, *args, **kwargs):  # what torch raises when the disk is full
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(A.torch, "save", save)
    monkeypatch.setattr("shutil.disk_usage", lambda path: shutil_usage(total=1, used=1, free=0))
    result = runner.invoke(app, ["train", str(tmp_path / "mini.yaml"), "--out", str(tmp_path / "r"), "--device",
                                 "cpu", "--no-progress"])
    err = one_line_error(result, 1)
    assert "No space left on device" in err and "no checkpoint had been written" in err
    no_temporary_files(tmp_path / "r")
    monkeypatch.setattr(A.torch, "save", real_save)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_one_line(tmp_path):
    (tmp_path / "mini.yaml").write_text(MINI_SPEC)
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = runner.invoke(app, ["train", str(tmp_path / "mini.yaml"), "--out", str(locked / "run")])
        assert "Permission denied" in one_line_error(result)
    finally:
        locked.chmod(0o755)


def test_unwritable_out_is_one_line(tmp_path, monkeypatch):
    """The same refusal as a read-only folder gives, for a test process that runs as root."""
    (tmp_path / "mini.yaml").write_text(MINI_SPEC)
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if "ro" in self.parts:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    result = runner.invoke(app, ["train", str(tmp_path / "mini.yaml"), "--out", str(tmp_path / "ro" / "run")])
    err = one_line_error(result)
    assert err.startswith(f"error: {tmp_path / 'ro' / 'run'}: cannot write the run folder: Permission denied"), err


def test_out_under_a_file_is_one_line(tmp_path):
    (tmp_path / "mini.yaml").write_text(MINI_SPEC)
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        result = runner.invoke(app, ["train", str(tmp_path / "mini.yaml"), "--out", str(out), "--device", "cpu"])
        err = one_line_error(result)
        assert str(tmp_path / "file") in err and ("not a folder" in err or "Not a directory" in err), err


def test_eval_is_refused_while_the_run_trains(run_copy):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_copy)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = (run_copy / A.EVAL).read_bytes()
        err = one_line_error(runner.invoke(app, ["eval", str(run_copy), "--device", "cpu", "--no-figures"]))
        assert f"is in use by `saec train` (pid {holder.pid}" in err
        assert (run_copy / A.EVAL).read_bytes() == before
    finally:
        holder.communicate("\n", timeout=30)


def test_a_lock_on_a_new_folder_leaves_no_empty_folders_behind(tmp_path):
    """A run refused after locking (bad data, say) must not leave runs/<name>/ or runs/ behind."""
    from saec.run.checkpoint import RunLock

    (tmp_path / "keep").mkdir()
    with RunLock(tmp_path / "keep" / "runs" / "a" / "b", "train"):
        assert (tmp_path / "keep" / "runs" / "a" / "b").is_dir()
    assert not (tmp_path / "keep" / "runs").exists() and (tmp_path / "keep").is_dir()
    # a folder that received a file stays, with its parents
    with RunLock(tmp_path / "runs" / "c", "train"):
        (tmp_path / "runs" / "c" / "model.safetensors").write_bytes(b"x")
    assert (tmp_path / "runs" / "c" / "model.safetensors").is_file()
    assert not (tmp_path / "runs" / "c" / "saec.lock").exists()
