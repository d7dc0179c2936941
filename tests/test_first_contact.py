"""A new user's first commands (README "Set up"), in a folder with no data beside it.

Runs the real `saec` command line in subprocesses, from a temporary working
directory holding only a copy of a shipped spec, with SAEC_MNIST_ROOT unset,
so nothing of this checkout's data or environment can help.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

#: A tiny schedule on the embedded data (README "Set up" gives the same --set with a real schedule).
TINY = ["--set", "encoding.timesteps=2", "--set", "training.epochs=1", "--set", "training.max_steps=2",
        "--set", "training.batch_size=8", "--set", "data.train_limit=64", "--set", "data.validation.limit=16",
        "--device", "cpu"]


def run_saec(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SAEC_MNIST_ROOT"}
    env["PYTHONPATH"] = str(REPO)  # this checkout's saec, not an installed one
    return subprocess.run([sys.executable, "-m", "saec", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def bare_folder(tmp_path: Path) -> Path:
    """A working directory with specs/sae_dense.yaml and nothing else (no data/mnist)."""
    (tmp_path / "specs").mkdir()
    shutil.copy(REPO / "specs" / "sae_dense.yaml", tmp_path / "specs" / "sae_dense.yaml")
    return tmp_path


def test_first_contact_commands_work_with_no_data_beside_them(bare_folder):
    compiled = run_saec(bare_folder, "compile", "specs/sae_dense.yaml")
    assert compiled.returncode == 0, compiled.stderr
    assert "sae_dense: sae" in compiled.stdout and "2,586,400" in compiled.stdout

    # The shipped spec names full MNIST: one line of advice, exit 2, nothing written.
    refused = run_saec(bare_folder, "train", "specs/sae_dense.yaml", *TINY)
    assert refused.returncode == 2, refused.stderr
    advice = refused.stderr.strip()
    assert "\n" not in advice and "Traceback" not in advice
    assert "--set data.dataset=mnist5k" in advice
    assert not (bare_folder / "runs").exists()  # nothing written, not even an empty folder

    # Following that advice literally works: validation falls back to a held-out split, and says so.
    trained = run_saec(bare_folder, "train", "specs/sae_dense.yaml", "--set", "data.dataset=mnist5k", *TINY)
    assert trained.returncode == 0, trained.stderr
    assert "validating on a held-out 0.1 of the training set" in trained.stdout + trained.stderr
    run = bare_folder / "runs" / "sae_dense"
    assert "validation L_rec:" in trained.stdout
    # stdout is a pipe here, not a terminal: no progress bar, one line per epoch
    assert re.search(r"^epoch 1/1: train loss [\d.]+, val L_rec [\d.]+", trained.stdout, re.M)
    assert "\r" not in trained.stdout + trained.stderr
    resolved = yaml.safe_load((run / "spec.yaml").read_text())
    assert resolved["data"]["dataset"] == "mnist5k" and resolved["data"]["validation"]["source"] == "auto"
    assert (run / "eval.json").is_file() and (run / "model.safetensors").is_file()
    assert '"validation": "mnist5k/split-val"' in (run / "eval.json").read_text()


def test_explicit_test_validation_without_the_test_set_names_a_working_way_out(bare_folder):
    refused = run_saec(bare_folder, "train", "specs/sae_dense.yaml", "--set", "data.dataset=mnist5k",
                       "--set", "data.validation.source=test", *TINY)
    assert refused.returncode == 2, refused.stderr
    assert "--set data.validation.source=split" in refused.stderr and "\n" not in refused.stderr.strip()


SHIPPED = sorted(p.relative_to(REPO / "specs").as_posix() for p in (REPO / "specs").rglob("*.yaml")
                 if p.parent.name != "sweeps")


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_spec_stops_with_advice_that_works(name, tmp_path, monkeypatch):
    """On a machine with no MNIST: the advice of the data error, followed literally, finds the data."""
    import saec
    from saec.training.data import DataError, check_data

    monkeypatch.delenv("SAEC_MNIST_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    spec = saec.compile(REPO / "specs" / name).spec
    if spec.data.dataset == "mnist":
        with pytest.raises(DataError) as info:
            check_data(spec.data)
        advice = re.search(r"--set (\S+)=(\S+)", str(info.value))
        assert advice is not None, str(info.value)
        spec = saec.compile(REPO / "specs" / name, [f"{advice.group(1)}={advice.group(2)}"]).spec
    check_data(spec.data)  # the embedded data: nothing needed on disk
    assert spec.data.dataset == "mnist5k" and spec.data.validation.source == "auto"
