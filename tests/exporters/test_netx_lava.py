"""Verified by Intel's own code: the netx file saec writes runs in lava's fixed-point Loihi model
(``Loihi2SimCfg(select_tag="fixed_pt")``, lava-nc 0.10.0 + lava-dl 0.6.0) and every layer's spikes
equal saec's integer simulation (saec/targets/quantize.py), spike for spike.

lava lives in its own environment (never a saec dependency): ``bash scripts/envs/lava.sh`` builds it
in ``envs/lava``; ``SAEC_LAVA_PYTHON`` points at another one's python. The driver that runs inside
it is ``scripts/lava/run_netx.py``. Slow (lava simulates process by process, a few seconds per step).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from saec.cli import app
from saec.exporters.netx import write_netx
from saec.run.loihi import LOIHI_GOLDEN, LOIHI_NETX
from saec.targets.profile import load_profile
from saec.targets.quantize import quantize
from tests.exporters.test_netx import make_run, tiny_network

REPO = Path(__file__).resolve().parents[2]
DRIVER = REPO / "scripts" / "lava" / "run_netx.py"
INSTALL = "bash scripts/envs/lava.sh envs/lava   (or set SAEC_LAVA_PYTHON to a lava environment's python)"


def lava_python() -> Path | None:
    """The lava environment's python: $SAEC_LAVA_PYTHON, else envs/lava in the repository."""
    given = os.environ.get("SAEC_LAVA_PYTHON")
    path = Path(given) if given else REPO / "envs" / "lava" / "bin" / "python"
    return path if path.is_file() else None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.vendor,
    pytest.mark.skipif(lava_python() is None, reason=f"lava is not installed; install it with: {INSTALL}"),
]


def run_in_lava(net: Path, spikes_or_golden: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(lava_python()), str(DRIVER), str(net), str(spikes_or_golden), str(out)],
                          capture_output=True, text=True, timeout=1800)


def test_lava_runs_the_netx_file_spike_for_spike_as_saecs_integer_simulation(tmp_path):
    """Every synapse kind of an auto-encoder, a conv bias, a non-dyadic decay (0.9 -> dv 410): random
    input spikes, 3 examples back to back (netx resets each layer between them)."""
    graph, weights = tiny_network(tmp_path)
    qnet = quantize(graph, weights, load_profile("loihi"))
    write_netx(qnet, tmp_path / "net.h5")
    spikes = (np.random.default_rng(1).random((6, 3, 1, 8, 8)) < 0.5).astype(np.uint8)
    np.save(tmp_path / "input.npy", spikes)
    done = run_in_lava(tmp_path / "net.h5", tmp_path / "input.npy", tmp_path / "lava.npz")
    assert done.returncode == 0, done.stdout + done.stderr
    lava = np.load(tmp_path / "lava.npz")
    sim = qnet.simulate(spikes)
    layers = ["conv1", "latent", "fc_dec", "output"]
    for layer in layers:
        assert lava[layer].shape[:2] == (6, 3)
        assert np.array_equal(lava[layer], sim[layer].reshape(lava[layer].shape)), layer
        assert sim[layer].sum() > 0, layer  # every layer fires, so equality says something
    # lava's spikes outside the compared windows: none before each layer's first input arrives
    for depth, layer in enumerate(layers, start=1):
        assert lava[f"raw:{layer}"][:depth].sum() == 0, layer


def test_saec_export_target_loihi_is_what_lava_computes(tmp_path):
    """`saec export RUN --target loihi` on a run (mnist5k validation images, T = 8): the driver checks
    lava's spikes against the golden file, every layer, and exits 0 only when all are identical."""
    run = make_run(tmp_path / "run")
    result = CliRunner().invoke(app, ["export", str(run), "--target", "loihi", "--examples", "2", "--limit", "2"])
    assert result.exit_code == 0, result.output
    export = run / "export"
    done = run_in_lava(export / LOIHI_NETX, export / LOIHI_GOLDEN, tmp_path / "lava.npz")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "check: identical spike trains in every layer" in done.stdout
    golden, lava = np.load(export / LOIHI_GOLDEN), np.load(tmp_path / "lava.npz")
    for layer in ("conv1", "latent", "fc_dec", "output"):
        assert np.array_equal(lava[layer], golden[layer].reshape(lava[layer].shape)), layer
    assert golden["conv1"].sum() > 0 and golden["output"].sum() > 0


def test_a_changed_threshold_is_seen(tmp_path):
    """The check can fail: the same file with one layer's threshold one mantissa step lower differs."""
    import h5py

    graph, weights = tiny_network(tmp_path)
    qnet = quantize(graph, weights, load_profile("loihi"))
    write_netx(qnet, tmp_path / "net.h5")
    with h5py.File(tmp_path / "net.h5", "r+") as f:
        f["layer/1/neuron/vThMant"][...] = f["layer/1/neuron/vThMant"][()] - 1
    spikes = (np.random.default_rng(1).random((6, 3, 1, 8, 8)) < 0.5).astype(np.uint8)
    sim = qnet.simulate(spikes)
    np.savez(tmp_path / "golden.npz", input=spikes, **{k: v for k, v in sim.items() if ":" not in k})
    done = run_in_lava(tmp_path / "net.h5", tmp_path / "golden.npz", tmp_path / "lava.npz")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "positions differ" in done.stdout
