"""The lesser faults of issue 13: Ctrl-C in the final evaluation, --set locations, simulate errors naming the
file, compile -o temporaries, sweeps with damaged runs."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from saec.run import sweep as S
from saec.cli import app
from saec.run import artifacts as A
from saec.run import report
from saec.run.train import train
from saec.training.train import TrainingInterrupted
from tests.conftest import SPECS
from tests.training.test_train import mini
from tests.run.test_sweep import fake_training, small_sweep  # noqa: F401 (fake_training: a fixture)

runner = CliRunner()


def test_ctrl_c_during_the_final_evaluation_is_honoured(tmp_path, monkeypatch):
    spec, graph = mini(tmp_path)
    out = tmp_path / "run"

    def finish(*args, **kwargs):  # the user presses Ctrl-C while the final evaluation runs
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("Ctrl-C did not stop the final evaluation")

    monkeypatch.setattr(report, "finish_run", finish)
    with pytest.raises(TrainingInterrupted, match=r"stopped during the final evaluation; the last good checkpoint "
                                                  r"\(global step 6\).*was kept; `saec train --resume"):
        train(spec, graph, out, device="cpu", progress=False, log=lambda line: None)
    assert not (out / A.EVAL).exists()


def test_errors_in_a_part_set_changed_name_the_set(tmp_path):
    result = runner.invoke(app, ["compile", str(SPECS / "sae_dense.yaml"), "--set", "layers.conv1.kernel_size=40"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {SPECS / 'sae_dense.yaml'}:13: layers.conv1: kernel 40x40 is larger than its input 28x28; its input "
        "`input` gives 1x28x28 (after --set layers.conv1.kernel_size)")


def test_simulate_errors_name_the_graph_file(tmp_path):
    import nir

    graph = nir.NIRGraph(nodes={"inp": nir.Input(input_type={"input": np.array([3])}),
                                "th": nir.Threshold(np.ones(3)),
                                "out": nir.Output(output_type={"output": np.array([3])})},
                         edges=[("inp", "th"), ("th", "out")])
    nir.write(tmp_path / "thr.nir", graph)
    np.save(tmp_path / "in.npy", np.zeros((4, 1, 3)))
    result = runner.invoke(app, ["simulate", str(tmp_path / "thr.nir"), "--input", str(tmp_path / "in.npy")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {tmp_path / 'thr.nir'}: cannot simulate: node `th`")


def test_compile_output_temporary_name_carries_the_pid(tmp_path, monkeypatch):
    renames = []
    real_replace = os.replace

    def replace(src, dst):
        renames.append(Path(src).name)
        return real_replace(src, dst)

    monkeypatch.setattr(A.os, "replace", replace)
    result = runner.invoke(app, ["compile", str(SPECS / "sae.yaml"), "-q", "-o", str(tmp_path / "ir.json")])
    assert result.exit_code == 0, result.output
    assert renames == [f".ir.json.tmp-{os.getpid()}"] and (tmp_path / "ir.json").is_file()


def test_compile_output_into_a_file_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    result = runner.invoke(app, ["compile", str(SPECS / "sae.yaml"), "-q", "-o", str(tmp_path / "f" / "ir.json")])
    assert result.exit_code == 2 and "Not a directory" in result.stderr and "\n" not in result.stderr.strip()


def test_a_damaged_run_in_a_sweep_is_reported_and_the_others_run(tmp_path, fake_training):
    sweep = small_sweep(tmp_path)
    damaged = sweep.runs[1].folder
    damaged.mkdir(parents=True)
    (damaged / A.SPEC).write_text("name: [unclosed\n")
    A.save_torch(damaged / A.TRAIN_STATE, {"complete": False})
    lines: list[str] = []
    outcome = S.run_sweep(sweep, jobs=1, log=lines.append)
    assert [r.label for r, _, _ in outcome.failed] == [sweep.runs[1].label]
    assert len(outcome.ran) == 3
    assert any(line.startswith(f"FAILED {sweep.runs[1].label}: ") and "damaged run folder" in line for line in lines)


def test_a_damaged_eval_json_counts_as_missing_in_the_table(tmp_path, fake_training):
    sweep = small_sweep(tmp_path)
    S.run_sweep(sweep, jobs=2, log=lambda line: None)
    assert "| a | 2/2 |" in (tmp_path / "out" / "table.md").read_text()
    (sweep.runs[0].folder / A.EVAL).write_text('{"rec_loss": 1.0')  # truncated
    (sweep.runs[1].folder / A.EVAL).write_text("NaN")
    S.write_tables(sweep)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| a | 0/2 |" in table
    assert S.run_state(sweep.runs[0]) == "resumable"  # the next sweep redoes it


def test_unwritable_sweep_out_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    path = tmp_path / "sweep.yaml"
    # the embedded data: the device and data checks (run before anything is written) pass, the folder fails
    path.write_text(f"base: {SPECS / 'ae.yaml'}\nset: {{data.dataset: mnist5k}}\nout: {tmp_path / 'file' / 'out'}\n")
    result = runner.invoke(app, ["sweep", str(path), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err == f"error: {tmp_path / 'file' / 'out'}: cannot write the sweep's output folder: Not a directory"
    assert json.loads(json.dumps(err))  # one plain line


@pytest.mark.parametrize("override", ["layers.latent.neuron={reset: none}",
                                      "layers.latent.neuron={lower_bound: null, threshold: 0.5}"])
def test_a_run_folder_spec_compiles_to_its_ir_with_per_layer_neuron_overrides(tmp_path, override):
    """spec.yaml keeps only the override fields written (unset ones inherit), so load_run's check holds."""
    from saec.compiler.pipeline import compile_spec
    from saec.run.folder import load_run
    from saec.spec.loader import resolved_yaml

    loaded, graph = compile_spec(str(SPECS / "sae_dense.yaml"), [override])
    run = tmp_path / "run"
    A.write_text(run / A.SPEC, resolved_yaml(loaded.spec))
    A.write_text(run / A.IR, graph.to_json())
    spec, ir = load_run(run)
    assert spec == loaded.spec and ir.to_dict()["nodes"] == graph.to_dict()["nodes"]
