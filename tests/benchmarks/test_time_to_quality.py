"""benchmarks/time_to_quality.py: its validation L_rec is the number `saec train` prints, snnTorch trains
from saec's weights on saec's spikes, batches and schedule, and a smoke run ends with the machine-readable
line (the real measurement never runs in tests; nothing here asserts on speed)."""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "time_to_quality.py"
sys.path.insert(0, str(SCRIPT.parent))
import time_to_quality as ttq  # noqa: E402

NUMBER = r"(never|\d+\.\d)"
LAST_LINE = re.compile(rf"^ttq saec_s={NUMBER} snntorch_s={NUMBER} saec_rec_5min=(\S+) snntorch_rec_5min=(\S+) "
                       r"target=(\S+) budget_s=(\S+)$")


def _tiny_args(**changes) -> argparse.Namespace:
    """Tiny options: T=2, batch 4, 8 training images (2 steps per epoch), 8 held-out validation images."""
    args = argparse.Namespace(epochs=2, timesteps=2, batch=4, train_images=8, val_images=8, validation="split",
                              data_dir=None, device="cpu", budget_s=300.0, seed=None)
    for k, v in changes.items():
        setattr(args, k, v)
    return args


def test_smoke_run_ends_with_the_machine_readable_line():
    """As the measurement runs: a worker process per framework (SAEC_BENCH_SUBPROCESS)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    # one thread: idle OpenMP workers of the snnTorch worker (wait policy unset) spin, which on a loaded
    # machine made this tiny run take minutes instead of seconds
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--validation", "split", "--threads", "1"], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={**env, "SAEC_BENCH_SUBPROCESS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    match = LAST_LINE.match(lines[-1])
    assert match, lines[-1]
    assert match.group(5) == "45" and match.group(6) == "300"
    for rec in (match.group(3), match.group(4)):
        assert math.isfinite(float(rec)) and float(rec) > 0
    rows = {row.split("|")[1].strip(): [c.strip() for c in row.split("|")[2:-1]]
            for row in lines if row.startswith("| saec |") or row.startswith("| snntorch |")}
    assert set(rows) == {"saec", "snntorch"}
    for cells in rows.values():
        # 1 epoch of 16 images in batches of 4: the schedule ends after 4 steps, before the budget
        assert cells[6] == "4" and cells[-1] == "schedule"
        assert float(cells[7]) > 0  # training seconds
    assert any(line.startswith("machine: ") for line in lines)
    # saec's worker runs as the saec command line does, snnTorch's with its defaults
    assert any(line.endswith("OMP_WAIT_POLICY: saec PASSIVE, snntorch unset") for line in lines), lines


def test_reaching_the_target_reports_the_training_seconds_of_that_validation(capsys):
    # a target the untrained network already meets: reached at the validation before the first step
    assert ttq.main(["--smoke", "--validation", "split", "--frameworks", "saec", "--target-rec", "1000"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"ttq saec_s=0\.0 saec_rec_5min=\d+\.\d+ target=1000 budget_s=300", last), last


HOW = ("pass --data-dir DIR (or set SAEC_MNIST_ROOT=DIR) naming an MNIST folder that holds the test set (the "
       "measurement validates on its first 8 images), or --validation split for a smoke run without it")


def test_missing_mnist_test_set_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAEC_MNIST_ROOT", str(tmp_path))  # an MNIST folder without the test set
    monkeypatch.chdir(tmp_path)
    for argv, root in ((["--smoke"], tmp_path), (["--smoke", "--data-dir", str(tmp_path / "nowhere")],
                                                 tmp_path / "nowhere")):
        assert ttq.main(argv) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"error: --data-dir: no MNIST test set in {root} (t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, "
            f"plain or .gz, in MNIST/raw, raw or the folder itself); {HOW}"]


def test_missing_mnist_folder_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SAEC_MNIST_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./data/mnist either
    assert ttq.main(["--smoke"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --data-dir: no MNIST folder found (nothing at $SAEC_MNIST_ROOT or ./data/mnist); {HOW}"]


def test_cuda_without_a_gpu_is_one_line_and_exit_2(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ttq.main(["--smoke", "--validation", "split", "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --device: CUDA was asked for (--device cuda) but torch sees no GPU; use --device cpu or auto"]


@pytest.mark.parametrize("option", ["--budget-s", "--validate-every", "--val-images"])
def test_non_positive_options_are_refused(option, capsys):
    assert ttq.main(["--smoke", "--validation", "split", option, "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {option}: must be positive, got 0"]


def test_saec_trains_and_validates_as_saec_train_does(tmp_path):
    """The script's saec trainer ends an epoch with the weights `saec train` checkpoints there, and its
    validation L_rec of them is the val L_rec `saec train` prints for that epoch (metrics.jsonl)."""
    import json

    import torch

    from saec import demo
    from saec.compiler.pipeline import compile_spec
    from saec.run.folder import load_model, with_run_config
    from saec.run.train import train
    from saec.training.data import make_splits
    from saec.training.train import TrainingInterrupted

    # threshold 0.1: the network fires at T = 4, so the reconstruction is not the all-zero one
    overrides = demo.schedule_overrides(epochs=2, timesteps=4) + [
        "training.batch_size=4", "data.train_limit=8", "data.validation.source=split",
        "data.validation.limit=6", "neuron.threshold=0.1"]
    loaded, graph = compile_spec(str(demo.SPEC), overrides)
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):  # stopped after epoch 1 (2 steps): no final evaluation, no figures
        train(loaded.spec, graph, out, device="cpu", progress=False, log=lambda line: None, stop_after_steps=2)
    printed = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert printed["epoch"] == 1 and printed["global_step"] == 2
    spec, trained = load_model(out)
    train_set, val_set = make_splits(spec.data, None, seed=spec.training.seed)

    ours = ttq.validation_rec_loss(lambda x, gen: trained(x, generator=gen).x_hat, val_set,
                                   spec.training.batch_size, spec.training.seed, "cpu")
    assert ours == printed["val_rec_loss"]
    assert abs(ours - demo.all_zero_rec_loss(val_set.images, 4)) > 1.0  # a reconstruction, not silence

    framework = ttq.Framework("saec", graph, with_run_config(loaded.spec, graph), train_set, val_set, "cpu",
                              budget_s=300.0)
    framework.train(2)
    assert framework.global_step == 2 and framework.epoch == 1
    for key, weight in trained.ir_state_dict().items():
        assert torch.equal(framework.trainer.model.ir_state_dict()[key], weight), key
    assert framework.validate() == printed["val_rec_loss"]


def test_snntorch_trains_from_saecs_weights_spikes_batches_and_schedule():
    pytest.importorskip("snntorch")
    import torch

    from saec.runtime.encoding import poisson_encode

    args = _tiny_args()
    frameworks = {name: ttq.make_framework(name, args) for name in ("saec", "snntorch")}
    ours, theirs = frameworks["saec"], frameworks["snntorch"]
    for key, weight in ours.trainer.model.ir_state_dict().items():
        assert torch.equal(theirs.params.w[key.split(".")[0]].detach(), weight)
    assert torch.equal(ours.trainer.noise.get_state(), theirs.trainer.noise.get_state())
    # the spike train saec's model draws is the one poisson_encode (snnTorch's input) draws from that state
    x = ours.train_set.images[:4]
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    with torch.no_grad():
        inside = ours.trainer.model(x, generator=a, record=frozenset({"_encode"})).encoded
    assert torch.equal(inside, poisson_encode(x, ours.graph.op("_encode"), generator=b))
    for framework in frameworks.values():
        framework.train(3)  # one epoch of 2 steps and one step into the next
    assert ours.global_step == theirs.global_step == 3 and ours.epoch == theirs.epoch == 1
    # the same number of draws from the same stream, and the same cosine learning rate after one epoch
    assert torch.equal(ours.trainer.noise.get_state(), theirs.trainer.noise.get_state())
    assert ours.trainer.opt.param_groups[0]["lr"] == theirs.opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert math.isfinite(ours.loss) and math.isfinite(theirs.loss)
    assert ours.train_s > 0 and theirs.train_s > 0 and ours.stopped_by is theirs.stopped_by is None


def test_seed_reaches_both_frameworks_through_the_workers():
    args = _tiny_args(seed=3, batch=None, train_images=None)
    assert "--seed" in ttq._worker_args(args) and ttq._worker_args(args)[-1] == "3"
    _, _, config = ttq.demo_run_config(args)
    assert config.training.seed == 3 and config.training.batch_size == 64  # the demo's batch


def test_the_budget_stops_training_at_a_step_boundary():
    framework = ttq.make_framework("saec", _tiny_args(budget_s=1e-9))
    reply = framework.chunk(3)
    assert reply["stopped_by"] == "budget" and reply["step"] == 0
    assert math.isfinite(reply["val_rec"])


def test_json_into_a_missing_folder_is_refused_before_the_run(tmp_path, capsys):
    target = tmp_path / "no" / "ttq.json"
    assert ttq.main(["--smoke", "--validation", "split", "--json", str(target)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --json: {target.parent} is not a folder; name a file in an existing folder"]
    assert not target.parent.exists()


def test_json_holds_every_validation(tmp_path, capsys):
    import json

    target = tmp_path / "ttq.json"
    assert ttq.main(["--smoke", "--validation", "split", "--frameworks", "saec", "--json", str(target)]) == 0
    written = json.loads(target.read_text())
    steps = [h["step"] for h in written["history"]["saec"]]
    assert steps == [0, 2, 4] and written["budget_s"] == 300 and written["machine"]
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("ttq saec_s=never saec_rec_5min=")


@pytest.mark.parametrize("name", ["saec", "snntorch"])
def test_a_nan_loss_stops_the_framework_as_diverged(name):
    import torch

    if name == "snntorch":
        pytest.importorskip("snntorch")
    framework = ttq.make_framework(name, _tiny_args())
    module = framework.trainer.model if name == "saec" else framework.params
    (_, poisoned), *others = list(module.named_parameters())
    with torch.no_grad():
        poisoned.fill_(float("nan"))  # the loss (P2 on this layer's potential) becomes NaN
    before = {k: v.detach().clone() for k, v in others}
    reply = framework.chunk(2)
    assert reply["stopped_by"] == "diverged" and reply["step"] == 0
    for k, v in others:  # stopped before the update
        assert torch.equal(v.detach(), before[k]), k
