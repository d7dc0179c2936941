"""benchmarks/weight_grad.py at a tiny size (the real measurement never runs in tests): both gradients,
every layer that has one, each activity, with a ratio and a rounding-sized difference."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from saec.runtime.kernels import cpu_spike
from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "weight_grad.py"


@pytest.mark.skipif(cpu_spike.library() is None, reason="no C compiler: the spike-driven kernel is not built")
@pytest.mark.parametrize("gradient, layers", [
    ("weight", ["conv1", "conv2", "latent", "fc_dec", "deconv1", "output"]),
    ("input", ["conv2", "latent", "fc_dec", "deconv1", "output"]),  # conv1 reads the encoding: no input gradient
])
def test_tiny_run_times_every_layer_at_every_activity(gradient, layers):
    done = subprocess.run([sys.executable, str(SCRIPT), "--timesteps", "2", "--batch", "2", "--rounds", "1",
                           "--activities", "0.05", "0.5", "--gradient", gradient],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{gradient} gradients; crossover now 0.1" in done.stdout
    rows = re.findall(r"^(\w+) +\S+\(.*?\) +(\d\.\d{3}) +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+) +([\d.e+-]+)$",
                      done.stdout, re.M)
    assert [(name, float(act)) for name, act, *_ in rows] == [(n, a) for n in layers for a in (0.05, 0.5)]
    for *_, dense, _, spike, ratio, diff in rows:
        assert float(dense) > 0 and float(spike) > 0 and float(ratio) > 0
        assert float(diff) < 1e-5  # the two differ by summation order only
