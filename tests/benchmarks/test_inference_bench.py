"""benchmarks/inference.py at a tiny size (the real benchmark never runs in tests): it times the
three paths, prints every synapse's input activity and whether it ran spike-driven, and checks
the saec path's spikes against the dense path's."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "inference.py"


def test_tiny_run_reports_three_paths_and_every_synapse_input():
    done = subprocess.run([sys.executable, str(SCRIPT), "--timesteps", "2", "--batch", "2", "--rounds", "1",
                           "--threads", "1"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SAEC_SPIKE_DRIVEN": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for kind in ("saec", "spike", "dense"):
        assert re.search(rf"^{kind} +\d+\.\d+ s per batch", out, re.M), out
    activity = re.search(r"^synapse input activity .*$", out, re.M)
    assert activity, out
    found = re.findall(r"(\w+) (\d\.\d+) \((spike-driven|dense)\)", activity.group(0))
    assert [name for name, _, _ in found] == ["conv1", "conv2", "latent", "fc_dec", "deconv1", "output"]
    assert all(0.0 <= float(value) <= 1.0 for _, value, _ in found)
    assert "saec's spikes identical to dense in every layer: True" in out
    assert re.search(r"spike-driven spike positions differing from dense: conv1 \d+ of 36864", out), out
