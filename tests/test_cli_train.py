"""`saec train` on the command line: run folder, refusals, devices, --set, failures as one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from saec.cli import app
from saec.run import artifacts as A
from saec.training import train as train_module
from tests.conftest import REPO
from tests.training.test_train import MINI_SPEC, light_finish, real_objective  # noqa: F401 (light_finish: a fixture)

runner = CliRunner()


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "mini.yaml"
    path.write_text(MINI_SPEC)
    return path


def saec(*args: str):
    return runner.invoke(app, ["train", *args])


def one_line_error(result, code: int) -> str:
    """The command failed with ``code`` and said why in exactly one line on stderr, no traceback."""
    assert result.exit_code == code, (result.stdout, result.stderr)
    err = result.stderr.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


def test_train_writes_the_run_folder_and_says_where(spec_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default run folder is runs/<spec name> under the working directory
    result = saec(str(spec_file), "--set", "training.seed=3", "--set", "training.epochs=1", "--device", "cpu",
                  "--no-progress")
    assert result.exit_code == 0, result.stderr
    out = Path("runs") / "mini"
    assert f"run folder: {out}" in result.stdout
    assert "validation L_rec:" in result.stdout
    assert f"reconstructions: {out / A.FIGURES / 'reconstructions.png'}" in result.stdout
    resolved = yaml.safe_load((out / A.SPEC).read_text())
    assert resolved["training"]["seed"] == 3 and resolved["training"]["epochs"] == 1  # --set is recorded
    assert (out / A.FIGURES / "reconstructions.png").is_file() and (out / A.EVAL).is_file()


@pytest.mark.usefixtures("light_finish")
def test_an_existing_run_is_refused_unless_forced(spec_file, tmp_path):
    out = tmp_path / "run"
    args = [str(spec_file), "--out", str(out), "--device", "cpu", "--set", "training.epochs=1"]
    assert saec(*args).exit_code == 0
    before = (out / A.WEIGHTS).read_bytes()
    err = one_line_error(saec(*args), 2)
    assert "already holds a run" in err and "--force" in err and "--resume" in err
    assert (out / A.WEIGHTS).read_bytes() == before
    assert saec(*args, "--force", "--set", "training.seed=5").exit_code == 0
    assert (out / A.WEIGHTS).read_bytes() != before


def test_device_cuda_without_a_gpu_is_one_line(spec_file, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = one_line_error(saec(str(spec_file), "--out", str(tmp_path / "gpu"), "--device", "cuda"), 2)
    assert "--device cpu or auto" in err
    assert not (tmp_path / "gpu").exists()
    err = one_line_error(saec(str(spec_file), "--out", str(tmp_path / "x"), "--device", "gpu0"), 2)
    assert "unknown device 'gpu0'" in err


def test_bad_set_is_one_line(spec_file, tmp_path):
    err = one_line_error(saec(str(spec_file), "--out", str(tmp_path / "x"), "--set", "training.epochs=0"), 2)
    assert "training.epochs" in err


def test_resume_takes_no_spec(spec_file, tmp_path):
    err = one_line_error(saec(str(spec_file), "--resume", str(tmp_path)), 2)
    assert "--resume" in err
    err = one_line_error(saec("--resume", str(tmp_path / "nothing")), 2)
    assert "not a saec run folder" in err


def test_divergence_names_the_step(spec_file, tmp_path):
    err = one_line_error(saec(str(spec_file), "--out", str(tmp_path / "lr"), "--device", "cpu",
                              "--set", "training.lr=1e30"), 1)
    assert "training diverged" in err and "step" in err and "training.lr" in err


@pytest.mark.usefixtures("light_finish")
def test_ctrl_c_exits_130_and_the_run_resumes(spec_file, tmp_path, monkeypatch):
    calls = {"n": 0}

    def objective(model, out, x):
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return real_objective(model, out, x)

    monkeypatch.setattr(train_module, "objective", objective)
    out = tmp_path / "run"
    err = one_line_error(saec(str(spec_file), "--out", str(out), "--device", "cpu"), 130)
    assert "interrupted at epoch 2, step 1" in err and f"saec train --resume {out}" in err
    monkeypatch.setattr(train_module, "objective", real_objective)
    result = saec("--resume", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "resuming" in result.stdout and "run folder:" in result.stdout
    assert A.load_torch(out / A.TRAIN_STATE)["complete"]


def test_missing_mnist_is_one_line_naming_the_alternatives(spec_file, tmp_path):
    err = one_line_error(saec(str(spec_file), "--out", str(tmp_path / "x"), "--set", "data.dataset=mnist",
                              "--set", f"data.root={tmp_path / 'nowhere'}"), 2)
    assert "mnist5k" in err and "--data-dir" in err


def test_offline_download_is_one_line_naming_the_alternatives(spec_file, tmp_path, monkeypatch):
    from saec.training import data

    def offline(root, split):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(data, "_fetch_mnist", offline)
    started = time.perf_counter()
    err = one_line_error(saec(str(spec_file), "--out", str(tmp_path / "x"), "--set", "data.dataset=mnist",
                              "--set", f"data.root={tmp_path / 'empty'}", "--set", "data.download=true"), 2)
    assert "offline" in err and "mnist5k" in err and "--data-dir" in err
    assert time.perf_counter() - started < 30


@pytest.mark.slow
def test_real_ctrl_c_on_the_command_line(spec_file, tmp_path):
    """A real SIGINT to a real `saec train` process: exit 130, one line, a resumable checkpoint."""
    out = tmp_path / "run"
    # Many steps, so that the signal arrives while training.
    cmd = [sys.executable, "-m", "saec", "train", str(spec_file), "--out", str(out), "--device", "cpu",
           "--set", "training.max_steps=1000", "--set", "data.train_limit=4000", "--set", "training.epochs=1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # "training mini on cpu ...": the handler is installed
        assert first.startswith("training mini"), first + proc.stderr.read()
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "a checkpoint was written" in lines[0], stderr
    state = A.load_torch(out / A.TRAIN_STATE)
    assert state["global_step"] >= 1 and not state["complete"]
