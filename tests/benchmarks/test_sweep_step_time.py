"""benchmarks/sweep_step_time.py: a tiny sweep's step times and its projection table (the real
measurement of specs/sweeps/table1.yaml never runs in tests)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

from tests.conftest import REPO, SPECS

SCRIPT = REPO / "benchmarks" / "sweep_step_time.py"


def test_measures_the_named_configs_and_projects_every_config(tmp_path):
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(textwrap.dedent(f"""\
        name: tiny
        configs:
          - {{name: spiking, spec: {SPECS}/sae.yaml, set: {{encoding.timesteps: 2, training.batch_size: 4}}}}
          - {{name: spiking-too, spec: {SPECS}/sae_dense.yaml, set: {{encoding.timesteps: 2, training.batch_size: 4}}}}
          - {{name: other-batch, spec: {SPECS}/sae.yaml, set: {{encoding.timesteps: 2}}}}
          - {{name: ae, spec: {SPECS}/ae.yaml}}
        set: {{data.dataset: mnist5k, data.validation.source: split, training.epochs: 2}}
        seeds: [0, 1]
        """))
    done = subprocess.run([sys.executable, str(SCRIPT), str(sweep), "--configs", "spiking", "--steps", "1",
                           "--warmup", "0"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"^spiking \(sae, T=2, batch 4\), 1 thread\(s\): [\d.]+ s/step wall, [\d.]+ s/step CPU$", out,
                     re.M), out
    # 4,500 training images (a tenth held out) / batch 4 = 1,125 steps per epoch, 2 epochs, 2 seeds.
    row = re.search(r"^\| spiking \| 2250 \| 2 \| spiking \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", out, re.M)
    assert row, out
    per_step, wall, hours, hours_wall = map(float, row.groups())
    assert per_step > 0 and abs(hours - 2250 * 2 * per_step / 3600) < 0.051
    # the other spiking config of the same T and batch borrows the measured step time; other batches and the AE not
    assert re.search(r"^\| spiking-too \| 2250 \| 2 \| spiking \| " + re.escape(row.group(1)), out, re.M), out
    assert "| other-batch | 142 | 2 | not measured | – | – | – | – |" in out
    assert "| ae | 142 | 2 | not measured | – | – | – | – |" in out
    assert re.search(r"^total with 1 thread\(s\): [\d.]+ h", out, re.M), out


def test_an_unknown_config_is_one_line():
    done = subprocess.run([sys.executable, str(SCRIPT), str(SPECS / "sweeps" / "cpu_small.yaml"), "--configs",
                           "nope"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "not configurations of" in done.stderr and "'nope'" in done.stderr
