"""saec sweep: the sweep file (validation, located errors, expansion), the scheduler, the tables."""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from saec.run import sweep as S
from saec.cli import app
from saec.run import artifacts as A
from saec.errors import UserError
from tests.conftest import SPECS

runner = CliRunner()


def write_sweep(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(text).replace("SPECS", str(SPECS)))
    return path


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


GOOD = """\
name: demo
configs:
  - {name: dense, spec: SPECS/sae_dense.yaml, set: {training.epochs: 3}}
  - {name: ae, spec: SPECS/ae.yaml}
set:
  training.epochs: 2
  data.dataset: mnist5k
grid:
  training.lr: [0.001, 0.0005]
seeds: [0, 1]
out: OUT
"""


# ------------------------------------------------------------------ the sweep file
def test_expansion_configs_x_grid_x_seeds(tmp_path):
    sweep = S.load_sweep(write_sweep(tmp_path, GOOD.replace("OUT", str(tmp_path / "out"))))
    assert sweep.name == "demo" and sweep.out == tmp_path / "out"
    assert len(sweep.runs) == 2 * 2 * 2
    assert sweep.configs == ("dense__training.lr=0.001", "dense__training.lr=0.0005",
                             "ae__training.lr=0.001", "ae__training.lr=0.0005")
    run = sweep.runs[0]
    assert run.folder == tmp_path / "out" / "dense__training.lr=0.001" / "seed0"
    # Order of overrides: common set, the config's set, the grid point, the seed (later ones win).
    assert run.set_args() == ['training.epochs=2', 'data.dataset="mnist5k"', "training.epochs=3",
                              "training.lr=0.001", "training.seed=0"]
    from saec.compiler.pipeline import compile_spec

    spec = compile_spec(str(run.spec_file), run.set_args())[0].spec
    assert (spec.training.epochs, spec.training.lr, spec.training.seed) == (3, 0.001, 0)
    ae = [r for r in sweep.runs if r.config.startswith("ae")][-1]
    spec = compile_spec(str(ae.spec_file), ae.set_args())[0].spec
    assert (spec.kind, spec.training.epochs, spec.training.lr, spec.training.seed) == ("ae", 2, 0.0005, 1)


def test_base_without_configs_names_rows_after_the_spec(tmp_path):
    sweep = S.load_sweep(write_sweep(tmp_path, """\
        base: SPECS/sae_dense.yaml
        grid: {regularizers.p2.weight: [0.01, 0.1]}
        """))
    assert sweep.name == "sweep" and sweep.out == Path("runs/sweeps/sweep")
    assert sweep.configs == ("sae_dense__p2.weight=0.01", "sae_dense__p2.weight=0.1")
    assert [r.seed for r in sweep.runs] == [0, 0]


def test_shipped_sweeps_load():
    table1 = S.load_sweep(SPECS / "sweeps" / "table1.yaml")
    assert len(table1.runs) == 7 * 5 and table1.seeds == (0, 1, 2, 3, 4)
    assert table1.configs == ("SAE", "SAE-sparse", "SAE-dense", "AE", "AE-l2", "VAE", "beta-VAE")
    small = S.load_sweep(SPECS / "sweeps" / "cpu_small.yaml")
    assert small.configs == ("SAE", "SAE-sparse", "SAE-dense", "AE", "VAE")
    assert "encoding.timesteps=8" in small.runs[0].set_args()


BAD = [
    # (id, sweep text, needle of the located line (None: line 1 / no line), message pattern)
    ("unknown-field", "base: SPECS/sae.yaml\nseed: [0]\n", "seed:", r"seed: unknown field 'seed'; did you mean 'seeds'\?"),
    ("seeds-type", "base: SPECS/sae.yaml\nseeds: [0, one]\n", "seeds:", r"seeds\[1\]: .*valid integer"),
    ("negative-seed", "base: SPECS/sae.yaml\nseeds: [-1]\n", "seeds:", r"seeds\[0\]: .*greater than or equal to 0"),
    ("repeated-seed", "base: SPECS/sae.yaml\nseeds: [1, 1]\n", "seeds:", r"seeds: seeds repeat"),
    ("empty-grid", "base: SPECS/sae.yaml\ngrid: {training.lr: []}\n", "grid:", r"grid\.training\.lr: .*at least 1"),
    ("config-field", "configs:\n  - {name: a, spec: SPECS/sae.yaml, sett: {}}\n", "name: a",
     r"configs\[0\]\.sett: unknown field 'sett'; did you mean 'set'\?"),
    ("duplicate-config", "configs:\n  - {name: a, spec: SPECS/sae.yaml}\n  - {name: a, spec: SPECS/ae.yaml}\n",
     "SPECS/ae.yaml", r"configs\[1\]\.name: duplicate configuration name 'a'"),
    ("no-spec", "configs:\n  - {name: a}\n", "name: a", r"configs\[0\]: no spec"),
    ("nothing", "seeds: [0]\n", None, r"nothing to run"),
    ("missing-spec-file", "base: SPECS/nope.yaml\n", "base:", r"base: no such spec file .*nope\.yaml"),
    ("bad-spec-key", "base: SPECS/sae.yaml\nset:\n  training.epochz: 3\n", "training.epochz",
     r"set\.training\.epochz: unknown field 'epochz'; did you mean 'epochs'\? .*spec key training\.epochz"),
    ("bad-spec-value", "base: SPECS/sae.yaml\ngrid:\n  encoding.timesteps: [4, -2]\n", "encoding.timesteps",
     r"grid\.encoding\.timesteps: .*greater than 0"),
    ("not-a-mapping", "- 1\n- 2\n", None, r"a sweep file must be a mapping"),
    ("yaml-syntax", "base: [SPECS/sae.yaml\n", None, r"YAML syntax error"),
]


@pytest.mark.parametrize("text,needle,pattern", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_sweep_files_are_one_located_line(tmp_path, text, needle, pattern):
    path = write_sweep(tmp_path, text)
    result = runner.invoke(app, ["sweep", str(path)])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert "\n" not in err and "Traceback" not in result.output, err
    line = f":{line_of(path, needle.replace('SPECS', str(SPECS)))}" if needle else r"(:\d+)?"
    where = f"error: {re.escape(str(path))}{line}: "
    assert re.match(where + pattern, err), err
    assert not (tmp_path / "runs").exists()


def test_missing_sweep_file_is_one_line(tmp_path):
    result = runner.invoke(app, ["sweep", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and result.stderr.strip().endswith("none.yaml: no such file")


# ------------------------------------------------------------------ scheduler (fake training processes)
# A stand-in for `python -m saec train`: sleeps, records its thread setting and times, and leaves a complete
# run folder (a copy of a prepared train_state.pt and an eval.json derived from the seed); "fail" exits 1.
FAKE_TRAIN = """\
import json, os, shutil, sys, time
folder, state, behaviour, template = sys.argv[1:5]
start = time.time()
try:
    time.sleep(30.0 if behaviour == "slow" else 0.4)
except KeyboardInterrupt:  # like saec train: checkpoint, exit 130
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "interrupted"), "w").close()
    sys.exit(130)
if behaviour == "fail":
    print("boom: training failed"); sys.exit(1)
os.makedirs(folder, exist_ok=True)
shutil.copy(template, os.path.join(folder, "train_state.pt"))
seed = int(folder.rstrip("/").split("seed")[-1])
json.dump({"rec_loss": 10.0 + seed, "latent_layer": "latent",
           "layers": {"latent": {"anr": 0.5, "afr": 0.1 * (seed + 1), "rae": 0.2}},
           "s_intra_inter": {"euclidean": 0.8}}, open(os.path.join(folder, "eval.json"), "w"))
json.dump({"state": state, "threads": os.environ["OMP_NUM_THREADS"], "start": start, "end": time.time()},
          open(os.path.join(folder, "fake.json"), "w"))
"""


@pytest.fixture
def fake_training(tmp_path, monkeypatch):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    template = tmp_path / "complete_state.pt"
    A.save_torch(template, {"complete": True})
    failing: set[str] = set()
    slow: set[str] = set()

    def command(run, state, *, data_dir, device):
        behaviour = "fail" if run.label in failing else "slow" if run.label in slow else "ok"
        return [sys.executable, str(script), str(run.folder), state, behaviour, str(template)]

    monkeypatch.setattr(S, "train_command", command)
    monkeypatch.setattr(S, "check_sweep_data", lambda sweep, data_dir=None: None)  # fake runs read no data
    return failing, slow


def small_sweep(tmp_path: Path) -> S.Sweep:
    return S.load_sweep(write_sweep(tmp_path, f"""\
        name: fake
        configs:
          - {{name: a, spec: SPECS/ae.yaml}}
          - {{name: b, spec: SPECS/vae.yaml}}
        seeds: [0, 1]
        out: {tmp_path / 'out'}
        """))


def test_runs_in_parallel_with_threads_split_and_tabulates(tmp_path, fake_training):
    sweep = small_sweep(tmp_path)
    lines: list[str] = []
    outcome = S.run_sweep(sweep, jobs=2, log=lines.append, threads_per_job=None)
    assert len(outcome.ran) == 4 and not outcome.failed and not outcome.skipped
    fakes = [json.loads((r.folder / "fake.json").read_text()) for r in sweep.runs]
    assert {f["threads"] for f in fakes} == {str(max(1, S.available_cores() // 2))}
    assert {f["state"] for f in fakes} == {"new"}
    # Two at a time: some pair of runs overlapped, and never three at once.
    intervals = sorted((f["start"], f["end"]) for f in fakes)
    overlaps = [sum(s < e2 and s2 < e for s2, e2 in intervals) - 1 for s, e in intervals]
    assert max(overlaps) >= 1
    assert all(sum(s <= t < e for s, e in intervals) <= 2 for t, _ in intervals)
    table = (tmp_path / "out" / "table.md").read_text()
    # Seeds 0 and 1: L_rec 10 and 11 -> 10.50 ± 0.50 (population std); AFR 0.1 and 0.2 -> 0.150 ± 0.050.
    assert "| a | 2/2 | 10.50 ± 0.50 | 0.500 ± 0.000 | 0.150 ± 0.050 | 0.200 ± 0.000 | 0.800 ± 0.000 |" in table
    rows = list(csv.DictReader((tmp_path / "out" / "table.csv").open()))
    assert [r["config"] for r in rows] == ["a", "b"]
    assert float(rows[0]["rec_loss_mean"]) == 10.5 and float(rows[0]["rec_loss_std"]) == 0.5
    assert len(list(csv.DictReader((tmp_path / "out" / "runs.csv").open()))) == 4
    summary = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert summary["jobs"] == 2 and summary["trained"] == 4 and summary["wall_s"] > 0

    # Rerun: everything is complete, nothing is started.
    again = S.run_sweep(S.load_sweep(sweep.file), jobs=2, log=lines.append)
    assert not again.ran and len(again.skipped) == 4


def test_interrupted_runs_resume_and_failures_are_reported(tmp_path, fake_training):
    sweep = small_sweep(tmp_path)
    # seed 0 of `a` was interrupted: a checkpoint that is not complete, written by `saec train` for this spec.
    interrupted = sweep.runs[0].folder
    interrupted.mkdir(parents=True)
    A.save_torch(interrupted / A.TRAIN_STATE, {"complete": False})
    fake_training[0].add("b seed 1")
    lines: list[str] = []
    outcome = S.run_sweep(sweep, jobs=1, log=lines.append)
    assert json.loads((interrupted / "fake.json").read_text())["state"] == "resumable"
    assert [r.label for r, _, _ in outcome.failed] == ["b seed 1"]
    run, code, log_path = outcome.failed[0]
    assert code == 1 and "boom: training failed" in log_path.read_text()
    assert any("FAILED b seed 1 (exit 1)" in line and "boom" in line for line in lines)
    assert "| b | 1/2 | 10.00 ± 0.00 |" in (tmp_path / "out" / "table.md").read_text()


def test_ctrl_c_asks_running_jobs_to_checkpoint_and_writes_the_table(tmp_path, fake_training):
    sweep = small_sweep(tmp_path)
    fake_training[1].update({"a seed 0", "a seed 1"})
    started: list[str] = []
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("started"):
            started.append(line)
            if len(started) == 2:
                time.sleep(1.0)  # let both children reach their sleep, then press Ctrl-C
                raise KeyboardInterrupt

    t0 = time.perf_counter()
    with pytest.raises(S.SweepInterrupted, match="rerun `saec sweep"):
        S.run_sweep(sweep, jobs=2, log=log)
    assert time.perf_counter() - t0 < 20  # the children stopped on SIGINT, not after their 30 s
    for run in sweep.runs[:2]:
        assert (run.folder / "interrupted").is_file()
    assert not sweep.runs[2].folder.exists()  # never started
    assert sum("interrupted a seed" in line for line in lines) == 2 and not any("FAILED" in x for x in lines)
    assert "| a | 0/2 |" in (tmp_path / "out" / "table.md").read_text()


def test_a_folder_of_another_spec_is_refused(tmp_path):
    sweep = small_sweep(tmp_path)
    run = sweep.runs[0]
    run.folder.mkdir(parents=True)
    A.save_torch(run.folder / A.TRAIN_STATE, {"complete": True})
    (run.folder / A.SPEC).write_text((SPECS / "vae.yaml").read_text())  # not what config `a` asks for
    with pytest.raises(UserError, match="holds a run of a different spec"):
        S.run_state(run)


def test_train_command_new_and_resumed(tmp_path):
    run = small_sweep(tmp_path).runs[1]
    new = S.train_command(run, "new", data_dir="/data", device="cpu")
    assert new[1:4] == ["-m", "saec", "train"] and "--force" in new and "--resume" not in new
    assert new[new.index("--out") + 1] == str(run.folder)
    assert new[new.index("--data-dir") + 1] == "/data"
    assert "training.seed=1" in new
    resumed = S.train_command(run, "resumable", data_dir=None, device="cpu")
    assert resumed[4:6] == ["--resume", str(run.folder)] and "--set" not in resumed


def test_jobs_must_be_positive(tmp_path):
    with pytest.raises(UserError, match="--jobs: must be at least 1"):
        S.run_sweep(small_sweep(tmp_path), jobs=0)


def test_mean_std_is_population_std():
    assert S.mean_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, 1.118033988749895), rel=1e-15)


# ------------------------------------------------------------------ end to end (real training processes)
def test_real_sweep_of_two_tiny_sae_runs_tabulates_their_eval_json(tmp_path):
    """Two `saec train` processes (a 2-channel SAE, T = 2, one epoch of 2 steps on the embedded subset,
    seeds 0 and 1), then the table against the runs' own eval.json, recomputed here."""
    tiny = {"layers.conv1.out_channels": 2, "layers.conv2.out_channels": 2, "layers.latent.out_features": 12,
            "layers.fc_dec.out_features": 800, "layers.unflat.shape": "[2, 20, 20]",
            "layers.deconv1.out_channels": 2, "encoding.timesteps": 2,
            # Full-scale encoding and readout: the latent layer fires within 2 steps, so every column is defined.
            "encoding.scale": 1.0, "readout.scale": 1.0, "data.dataset": "mnist5k", "data.train_limit": 32,
            "data.validation": "{source: split, limit: 32}", "training.epochs": 1, "training.max_steps": 2,
            "training.batch_size": 16}
    path = write_sweep(tmp_path, "name: tiny\nbase: SPECS/sae_dense.yaml\nset:\n"
                       + "".join(f"  {key}: {value}\n" for key, value in tiny.items())
                       + f"seeds: [0, 1]\nout: {tmp_path / 'out'}\n")
    result = runner.invoke(app, ["sweep", str(path), "--jobs", "2"])
    assert result.exit_code == 0, result.output
    assert "2 trained, 0 already complete, 0 failed" in result.stdout

    folders = [tmp_path / "out" / "sae_dense" / f"seed{seed}" for seed in (0, 1)]
    evals = [json.loads((folder / A.EVAL).read_text()) for folder in folders]
    for seed, folder in enumerate(folders):  # each run trained what the sweep asked for
        spec = yaml.safe_load((folder / A.SPEC).read_text())
        assert spec["training"]["seed"] == seed and spec["encoding"]["timesteps"] == 2
        assert {layer["name"]: layer for layer in spec["layers"]}["latent"]["out_features"] == 12
    per_seed = {
        "rec_loss": [e["rec_loss"] for e in evals],
        "latent_anr": [e["layers"][e["latent_layer"]]["anr"] for e in evals],
        "latent_afr": [e["layers"][e["latent_layer"]]["afr"] for e in evals],
        "latent_rae": [e["layers"][e["latent_layer"]]["rae"] for e in evals],
        "s_intra_inter_euclidean": [e["s_intra_inter"]["euclidean"] for e in evals],
    }
    for stem, values in per_seed.items():
        assert all(isinstance(v, float) and math.isfinite(v) for v in values), (stem, values)
    assert per_seed["rec_loss"][0] != per_seed["rec_loss"][1]  # two different runs, not one tabulated twice

    def cell(values: list[float], decimals: int) -> str:
        return f"{statistics.fmean(values):.{decimals}f} ± {statistics.pstdev(values):.{decimals}f}"

    decimals = {"rec_loss": 2, "latent_anr": 3, "latent_afr": 3, "latent_rae": 3, "s_intra_inter_euclidean": 3}
    expected_row = "| sae_dense | 2/2 | " + " | ".join(cell(v, decimals[k]) for k, v in per_seed.items()) + " |"
    assert expected_row in (tmp_path / "out" / "table.md").read_text().splitlines()
    (row,) = csv.DictReader((tmp_path / "out" / "table.csv").open())
    assert (row["config"], row["seeds_done"], row["seeds"]) == ("sae_dense", "2", "2")
    for stem, values in per_seed.items():
        assert float(row[f"{stem}_mean"]) == pytest.approx(statistics.fmean(values), rel=1e-12, abs=1e-15)
        assert float(row[f"{stem}_std"]) == pytest.approx(statistics.pstdev(values), rel=1e-9, abs=1e-15)
        assert row[f"{stem}_n"] == "2"
    runs = list(csv.DictReader((tmp_path / "out" / "runs.csv").open()))
    assert [(r["seed"], r["complete"]) for r in runs] == [("0", "True"), ("1", "True")]
    for r, i in zip(runs, (0, 1)):
        assert {stem: float(r[stem]) for stem in per_seed} == {stem: v[i] for stem, v in per_seed.items()}

    again = runner.invoke(app, ["sweep", str(path), "--jobs", "2"])
    assert again.exit_code == 0 and "0 trained, 2 already complete" in again.stdout


@pytest.mark.slow
def test_real_sweep_of_two_tiny_runs_then_resume_skips(tmp_path):
    small = ["layers.conv1.out_channels: 2", "layers.conv2.out_channels: 2", "layers.latent.out_features: 12",
             "layers.fc_dec.out_features: 800", "layers.unflat.shape: [2, 20, 20]",
             "layers.deconv1.out_channels: 2"]
    path = write_sweep(tmp_path, "base: SPECS/ae.yaml\nset:\n" + "".join(f"  {s}\n" for s in small) + f"""\
  data.dataset: mnist5k
  data.train_limit: 128
  data.validation: {{source: split, limit: 100}}
  training.epochs: 1
  training.max_steps: 2
seeds: [0, 1]
out: {tmp_path / 'out'}
""")
    result = runner.invoke(app, ["sweep", str(path), "--jobs", "2"])
    assert result.exit_code == 0, result.output
    assert "2 trained, 0 already complete, 0 failed" in result.stdout
    table = (tmp_path / "out" / "table.md").read_text()
    assert re.search(r"\| ae \| 2/2 \| \d+\.\d\d ± \d+\.\d\d \| – \| – \| – \| 0\.\d{3} ± 0\.\d{3} \|", table), table
    again = runner.invoke(app, ["sweep", str(path), "--jobs", "2"])
    assert again.exit_code == 0 and "0 trained, 2 already complete" in again.stdout


def test_cells_mark_metrics_defined_for_some_seeds_only():
    assert S._cell([], 2, 2) == "–"
    assert S._cell([0.5], 3, 2) == "0.500 ± 0.000 (n=1)"
    assert S._cell([1.0, 3.0], 2, 2) == "2.00 ± 1.00"


def test_missing_data_stops_the_sweep_once_before_any_run(tmp_path, monkeypatch):
    """No MNIST anywhere: one located error, and no run started (not one failure per run)."""
    monkeypatch.delenv("SAEC_MNIST_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    started: list = []
    monkeypatch.setattr(S.subprocess, "Popen", lambda *a, **k: started.append(a) or pytest.fail("a run started"))
    sweep = S.load_sweep(write_sweep(tmp_path, f"""\
        name: nodata
        configs:
          - {{name: a, spec: SPECS/ae.yaml}}
          - {{name: b, spec: SPECS/vae.yaml}}
        seeds: [0, 1]
        out: {tmp_path / 'out'}
        """))
    with pytest.raises(UserError) as info:
        S.run_sweep(sweep, jobs=1, log=lambda line: None)
    message = str(info.value)
    assert message.startswith(f"{sweep.file}: data: ") and "no run was started" in message
    # the advice fits a sweep file (saec sweep has no --set), and following it works:
    assert "`data.dataset: mnist5k` in the sweep file's `set`" in message and "--set" not in message
    assert "--data-dir" in message and "configuration a" in message
    fixed = write_sweep(tmp_path, sweep.file.read_text().replace("seeds:", "set: {data.dataset: mnist5k}\nseeds:"))
    S.check_sweep_data(S.load_sweep(fixed))
    assert not started and not list((tmp_path / "out").rglob("*.log"))


def test_the_embedded_data_sweep_passes_the_data_check_with_nothing_on_disk(tmp_path, monkeypatch):
    monkeypatch.delenv("SAEC_MNIST_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    S.check_sweep_data(S.load_sweep(SPECS / "sweeps" / "cpu_small.yaml"))


# ------------------------------------------------------------------ plan (--dry-run), device, findings
def _fake_mnist(root: Path, split: str) -> Path:
    """A folder in which the MNIST files of ``split`` exist (empty: the plan and the checks read no data)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    prefix = "t10k" if split == "test" else "train"
    for stem in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        (raw / f"{prefix}-{stem}").touch()
    return root


def test_dry_run_prints_steps_per_configuration_and_starts_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("SAEC_MNIST_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(S.subprocess, "Popen", lambda *a, **k: pytest.fail("a run started"))
    path = write_sweep(tmp_path, f"""\
        name: plan
        configs:
          - {{name: spiking, spec: SPECS/sae_dense.yaml, set: {{encoding.timesteps: 8}}}}
          - {{name: capped, spec: SPECS/sae.yaml, set: {{encoding.timesteps: 4, training.max_steps: 10}}}}
          - {{name: ae, spec: SPECS/ae.yaml, set: {{training.epochs: 2}}}}
        set: {{data.dataset: mnist5k, training.epochs: 3}}
        seeds: [0, 1, 2]
        out: {tmp_path / 'out'}
        """)
    result = runner.invoke(app, ["sweep", str(path), "--dry-run", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    # No MNIST test set here: validation holds out a tenth of mnist5k, 4,500 images train: ceil(4500/64) = 71.
    assert "| spiking | sae | 8 | 64 | 0.0005 constant | 3 | 71 | 213 | 3 |" in result.stdout
    assert "| capped | sae | 4 | 64 | 0.0005 constant | 3 | 10 | 30 | 3 |" in result.stdout  # max_steps caps the epoch
    assert "| ae | ae | 1 | 64 | 0.0005 constant | 2 | 71 | 142 | 3 |" in result.stdout
    # (213 + 30 + 142) x 3 seeds; spiking (213 + 30) x 3, x T: 213 x 3 x 8 + 30 x 3 x 4
    assert "total: 1,155 optimizer steps, 729 of them spiking (5,472 steps x T)" in result.stdout
    assert "sweep plan: 9 runs (3 configurations x 3 seeds)" in result.stdout
    assert result.stdout.strip().endswith("dry run, nothing started")
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()

    # With the MNIST test set found, all 5,000 images train (79 steps), and full MNIST gives 938.
    data = _fake_mnist(tmp_path / "mnist", "test")
    result = runner.invoke(app, ["sweep", str(path), "--dry-run", "--device", "cpu", "--data-dir", str(data)])
    assert "| spiking | sae | 8 | 64 | 0.0005 constant | 3 | 79 | 237 | 3 |" in result.stdout, result.output
    from saec.compiler.pipeline import compile_spec
    from saec.training.data import planned_train_size

    full = compile_spec(str(SPECS / "reference" / "sae.yaml"), [])[0].spec.data
    assert planned_train_size(full, str(_fake_mnist(data, "train"))) == 60_000
    assert planned_train_size(full.model_copy(update={"train_limit": 1000}), str(data)) == 1000


def test_shipped_table1_plan_is_the_papers_schedule(tmp_path):
    data = _fake_mnist(_fake_mnist(tmp_path / "mnist", "train"), "test")
    plans = S.plan_sweep(S.load_sweep(SPECS / "sweeps" / "table1.yaml"), str(data))
    # 60,000 images / batch 64 = 938 steps per epoch, 10 epochs, T = 100 for the SAEs, 5 seeds.
    assert [(p.config, p.timesteps, p.steps_per_run, p.runs) for p in plans] == [
        (name, 100 if name.startswith("SAE") else 1, 9380, 5)
        for name in ("SAE", "SAE-sparse", "SAE-dense", "AE", "AE-l2", "VAE", "beta-VAE")]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
def test_cuda_without_a_gpu_is_one_line_before_anything_is_written(tmp_path, monkeypatch, dry):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(S.subprocess, "Popen", lambda *a, **k: pytest.fail("a run started"))
    path = write_sweep(tmp_path, GOOD.replace("OUT", str(tmp_path / "out")))
    result = runner.invoke(app, ["sweep", str(path), "--device", "cuda"] + (["--dry-run"] if dry else []))
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == ("error: --device: CUDA was asked for (--device cuda) but torch sees no GPU; "
                                     "use --device cpu or auto")
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_findings_judge_the_finished_runs_by_model_name(tmp_path):
    sweep = S.load_sweep(write_sweep(tmp_path, f"""\
        name: claims
        configs:
          - {{name: SAE, spec: SPECS/ae.yaml}}
          - {{name: SAE-dense, spec: SPECS/ae.yaml}}
        seeds: [0, 1, 2]
        out: {tmp_path / 'out'}
        """))
    for run, rec in zip(sweep.runs, (60.0, 62.0, 64.0, 40.0, 41.0, 42.0)):
        run.folder.mkdir(parents=True)
        A.save_torch(run.folder / A.TRAIN_STATE, {"complete": True})
        A.write_json(run.folder / A.EVAL, {"rec_loss": rec, "rec_loss_zero_output": 81.52})
    # one seed of SAE-dense unfinished: the claim waits for it
    A.save_torch(sweep.runs[-1].folder / A.TRAIN_STATE, {"complete": False})
    result = runner.invoke(app, ["sweep", str(sweep.file), "--findings"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "out" / "findings.md").read_text()
    assert text.startswith(f"Results: sweep `claims` ({sweep.file}), 5 of 6 runs finished")
    rows = {line.split(" (")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "SAE-sparse: 0 finished seed(s), 3 needed" in rows["L_rec: SAE-sparse > SAE-dense"]
    assert "SAE-dense: 2 finished seed(s), 3 needed" in rows["latent ANR: SAE-dense > SAE"]
    A.save_torch(sweep.runs[-1].folder / A.TRAIN_STATE, {"complete": True})
    results = S.seed_results(S.load_sweep(sweep.file))
    assert [m["seed"] for m in results["SAE-dense"]] == [0, 1, 2]
    # these stand-ins are AEs: no spiking latent layer, so the ANR claim has nothing to judge
    S.write_findings(S.load_sweep(sweep.file))
    assert "SAE-dense: latent ANR undefined for 3 of 3 seeds" in (tmp_path / "out" / "findings.md").read_text()
    assert [m["rec_loss"] for m in results["SAE"]] == [60.0, 62.0, 64.0]
    assert all("train_steps" not in m for m in results["SAE"])  # no checkpoint manifest: steps unknown
    # the checkpoint manifest's global step says how long each run trained: unequal budgets are not compared
    from saec.run.checkpoint import MANIFEST, MANIFEST_FORMAT

    for run, steps in zip(sweep.runs, (9480, 9480, 9480, 316, 316, 316)):
        A.write_json(run.folder / MANIFEST, {"format": MANIFEST_FORMAT, "serial": 1, "global_step": steps,
                                             "complete": True, "files": {A.WEIGHTS: "0", A.TRAIN_STATE: "0"}})
    results = S.seed_results(S.load_sweep(sweep.file))
    assert [m["train_steps"] for m in results["SAE"] + results["SAE-dense"]] == [9480] * 3 + [316] * 3
    # (the verdict rule on unequal steps: tests/analysis/test_claims.py)


def test_shipped_claims_sweep_runs_the_papers_models_on_the_probed_schedule(tmp_path):
    """specs/sweeps/claims_cpu.yaml: 8 configurations x 3 seeds; the schedule of benchmarks/claims_probes.md."""
    from saec.compiler.pipeline import compile_spec

    sweep = S.load_sweep(SPECS / "sweeps" / "claims_cpu.yaml")
    assert sweep.configs == ("VAE", "beta-VAE", "SAE", "SAE-sparse", "SAE-dense", "SAE-dense-saec", "AE", "AE-l2")
    assert sweep.seeds == (0, 1, 2) and len(sweep.runs) == 24
    specs = {r.config: compile_spec(str(r.spec_file), r.set_args())[0].spec for r in sweep.runs if r.seed == 2}
    for name, spec in specs.items():
        t = spec.training
        assert (spec.data.dataset, spec.data.validation.limit, t.batch_size, t.seed) == ("mnist5k", 1000, 64, 2), name
        if spec.kind == "sae":
            assert (spec.encoding.timesteps, t.epochs, t.lr, t.schedule.type) == (16, 4, 1e-4, "cosine"), name
        elif spec.kind == "vae":
            assert (t.epochs, t.lr, t.schedule.type) == (120, 5e-4, "constant"), name
        else:
            assert (t.epochs, t.lr, t.schedule.type) == (8, 1e-4, "cosine"), name
    # the reference preset (the published code) for the paper's three SAEs, the deployable default beside them
    assert [specs[n].preset for n in ("SAE", "SAE-sparse", "SAE-dense", "SAE-dense-saec")] == [
        "reference", "reference", "reference", "saec"]
    assert specs["SAE-dense"].regularizers == specs["SAE-dense-saec"].regularizers
    # 5,000 images / 64 = 79 steps per epoch when the test set validates: 12 spiking runs x 316 steps at T = 16,
    # 6 AE runs x 632, 6 VAE runs x 9,480
    plans = S.plan_sweep(sweep, str(_fake_mnist(tmp_path / "mnist", "test")))
    assert {p.config: p.steps_per_run for p in plans} == {
        **{n: 316 for n in ("SAE", "SAE-sparse", "SAE-dense", "SAE-dense-saec")},
        **{n: 632 for n in ("AE", "AE-l2")}, **{n: 9480 for n in ("VAE", "beta-VAE")}}
    assert sum(p.steps_per_run * p.runs for p in plans) == 64_464
    assert sum(p.steps_per_run * p.runs * p.timesteps for p in plans if p.kind == "sae") == 60_672


def test_plan_of_custom_data_leaves_the_steps_unknown(tmp_path):
    """The size of custom data is known only by reading it: the plan says so instead of guessing."""
    from saec.training.data import planned_train_size

    sweep = S.load_sweep(write_sweep(tmp_path, f"""\
        configs:
          - {{name: own, spec: SPECS/ae.yaml, set: {{data.dataset: npz, data.root: {tmp_path / 'x.npz'}}}}}
          - {{name: embedded, spec: SPECS/ae.yaml, set: {{data.dataset: mnist5k, data.validation.source: split}}}}
        """))
    plans = S.plan_sweep(sweep)
    assert [(p.config, p.steps_per_epoch, p.steps_per_run) for p in plans] == [("own", None, None),
                                                                                 ("embedded", 71, 710)]
    text = S.render_plan(sweep, plans)
    assert "| own | ae | 1 | 64 | 0.0005 constant | 10 | ? | ? | 1 |" in text
    assert text.endswith("total: 710 optimizer steps, 0 of them spiking (0 steps x T); custom data: steps unknown "
                         "until the data is read")
    from saec.compiler.pipeline import compile_spec

    assert planned_train_size(compile_spec(str(sweep.runs[0].spec_file), sweep.runs[0].set_args())[0].spec.data) \
        is None
