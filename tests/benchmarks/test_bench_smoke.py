"""benchmarks/train_step.py --smoke: every framework trains a few tiny steps and the report
ends with the one-line summary (the real benchmark never runs in tests)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "train_step.py"
SUMMARY = re.compile(r"^saec_vs_best_peer=(\S+) mem_vs_snntorch=(\S+)$")


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_smoke_run_reports_every_framework_and_ends_with_the_summary():
    done = _run("--rounds", "1")
    lines = done.stdout.strip().splitlines()
    match = SUMMARY.match(lines[-1])
    assert match, lines[-1]
    assert float(match.group(1)) > 0 and math.isfinite(float(match.group(1)))
    rows = [line for line in lines if line.startswith("| 2 |") or line.startswith("| 3 |")]
    names = {row.split("|")[2].strip() for row in rows}
    assert {"saec", "torch_loop"} <= names
    for peer in ("snntorch", "spikingjelly"):  # present, or skipped with the install command
        assert peer in names or f"skipping {peer} unavailable" in done.stderr
    if "spikingjelly" not in names:
        assert "pip install --no-deps 'spikingjelly==2.0.0' loguru packaging tqdm" in done.stderr
    for row in rows:
        cells = row.split("|")
        assert float(cells[3]) > 0 and float(cells[7]) > 0  # wall and CPU seconds per step


def test_worker_processes_report_their_own_peak_memory():
    done = _run("--frameworks", "saec", "torch_loop", "--timesteps", "2", "--rounds", "1",
                env={"SAEC_BENCH_SUBPROCESS": "1"})
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| 2 |")]
    assert [r[2].strip() for r in rows] == ["saec", "torch_loop"]
    for r in rows:
        assert float(r[9].replace(",", "")) > 0  # peak MB of that worker alone
    assert SUMMARY.match(done.stdout.strip().splitlines()[-1])


def test_unknown_saec_switch_is_refused():
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--frameworks", "saec:warp-speed",
                           "--timesteps", "2"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "unknown saec switches ['warp-speed']" in done.stderr + done.stdout


def test_every_saec_switch_runs():
    """The lever switches of benchmarks/README.md's lever log (a broken one would fail only
    in the long benchmark run)."""
    names = ["saec:torch-scan+float-saves+no-channels-last+no-pool+omp-active+ftz", "saec:reference",
             "saec:keep-memory+heap-no-trim-change", "saec:bf16"]
    done = _run("--frameworks", *names, "--timesteps", "2", "--rounds", "1")
    rows = [line.split("|")[2].strip() for line in done.stdout.splitlines() if line.startswith("| 2 |")]
    assert rows == names
