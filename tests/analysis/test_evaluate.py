"""eval.json of a tiny trained run: every documented key, values recomputed independently, `saec eval` errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from saec.cli import app
from saec.compiler.pipeline import compile_spec
from saec.analysis import metrics as M
from saec.analysis.evaluate import EVAL_KEYS, EVAL_SEED_OFFSET, evaluate
from saec.run.report import evaluate_run, validation_set
from saec.run.folder import load_model
from saec.run.train import train
from tests.conftest import SPECS

runner = CliRunner()

# The paper's networks shrunk (2-channel convs, 12 latent neurons; SAE: T = 4), trained for 3 steps of 32 on
# 256 embedded images, validated on 150 held-out ones (no MNIST download needed).
SMALL = ["layers.conv1.out_channels=2", "layers.conv2.out_channels=2", "layers.latent.out_features=12",
         "layers.fc_dec.out_features=800", "layers.unflat.shape=[2, 20, 20]", "layers.deconv1.out_channels=2"]
SCHEDULE = ["training.epochs=1", "training.batch_size=32", "training.lr=0.001", "training.max_steps=3",
            "data.dataset=mnist5k", "data.train_limit=256", "data.validation.source=split",
            "data.validation.fraction=0.05", "data.validation.limit=150"]

SPIKING_LAYERS = ("conv1", "conv2", "latent", "fc_dec", "deconv1", "output")
RATE_SUMMARY_KEYS = {"mean", "std", "min", "p5", "p25", "p50", "p75", "p95", "max", "dead", "bursting",
                     "dead_fraction", "bursting_fraction", "n_neurons", "bursting_threshold"}


def _train_tiny(tmp: Path, spec_file: str, extra: list[str]) -> Path:
    loaded, graph = compile_spec(str(SPECS / spec_file), SMALL + SCHEDULE + extra)
    run = tmp / "run"
    train(loaded.spec, graph, run, device="cpu", progress=False, log=lambda _: None)
    return run


@pytest.fixture(scope="module")
def sae_run(tmp_path_factory) -> Path:
    return _train_tiny(tmp_path_factory.mktemp("sae"), "sae_dense.yaml", ["encoding.timesteps=4"])


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory) -> Path:
    return _train_tiny(tmp_path_factory.mktemp("ae"), "ae.yaml", [])


def _reference_pass(run: Path):
    """Recompute the validation pass by hand: per-batch counts, per-example L_rec (float64), latents."""
    spec, model = load_model(run)
    val = validation_set(spec)
    model.eval()
    gen = torch.Generator().manual_seed(spec.training.seed + EVAL_SEED_OFFSET)
    B = spec.training.batch_size
    counts, losses, latents = [], [], []
    with torch.no_grad():
        for start in range(0, len(val), B):
            x = val.images[start:start + B]
            out = model(x, generator=gen)
            losses.append(((out.x_hat.double() - x.double()) ** 2).flatten(1).sum(1).numpy())
            counts.append({k: v.flatten(1).double().numpy() for k, v in out.counts.items()})
            latents.append(out.latent.double().numpy())
    return spec, model, val, counts, losses, np.concatenate(latents)


def test_eval_json_has_every_documented_key(sae_run):
    m = json.loads((sae_run / "eval.json").read_text())
    for key in ("run", "validation", "kind", "timesteps", "latent_layer", "examples", "batch_size", "rec_loss",
                "rec_loss_per_example", "rec_loss_zero_output", "spikes_per_example", "mean_firing_rate"):
        assert key in m, key
    assert set(m["layers"]) == set(SPIKING_LAYERS)
    for layer in SPIKING_LAYERS:
        entry = m["layers"][layer]
        assert {"anr", "inp", "afr", "rae", "spikes_per_example", "firing_rates"} <= set(entry)
        assert set(entry["firing_rates"]) == RATE_SUMMARY_KEYS
        assert entry["anr"] + entry["inp"] == pytest.approx(1.0, abs=1e-12)
    assert set(m["input_encoding"]["firing_rates"]) == RATE_SUMMARY_KEYS
    assert set(m["s_intra_inter"]) == set(M.DISTANCE_METRICS)
    assert set(m["s_intra_inter_detail"]) == set(M.DISTANCE_METRICS)
    # Every written key is documented (EVAL_KEYS is the README's key table).
    documented = {k.split(".")[0] for k in EVAL_KEYS}
    assert set(m) <= documented, set(m) - documented


def test_eval_json_matches_an_independent_recomputation(sae_run):
    m = json.loads((sae_run / "eval.json").read_text())
    spec, model, val, counts, losses, latents = _reference_pass(sae_run)
    T = model.timesteps
    assert m["examples"] == len(val) == 150
    assert m["timesteps"] == T == 4
    # L_rec: mean of batch means (5 batches of 32, 32, 32, 32, 22) and per example.
    assert m["rec_loss"] == pytest.approx(np.mean([b.mean() for b in losses]), rel=1e-6)
    assert m["rec_loss_per_example"] == pytest.approx(np.concatenate(losses).mean(), rel=1e-6)
    assert m["rec_loss"] != pytest.approx(m["rec_loss_per_example"], rel=1e-9)  # the partial batch weighs more
    # The all-zero output's L_rec on the same images, averaged the same way (sum of x^2 per image).
    zero = val.images.double().square().flatten(1).sum(1).numpy()
    assert m["rec_loss_zero_output"] == pytest.approx(np.mean([zero[i:i + 32].mean() for i in range(0, 150, 32)]),
                                                      rel=1e-9)
    for layer in SPIKING_LAYERS:
        per_batch = [c[layer] for c in counts]
        active = [np.any(c > 0, axis=0) for c in per_batch]
        anr = np.mean([a.mean() for a in active])
        afr = np.mean([c.sum() / (c.shape[0] * a.sum() * T) if a.sum() else 0.0 for c, a in zip(per_batch, active)])
        rae = np.mean([np.mean((c > 0).sum(1) / a.sum()) if a.sum() else 0.0 for c, a in zip(per_batch, active)])
        total = np.concatenate(per_batch)
        entry = m["layers"][layer]
        assert entry["anr"] == pytest.approx(anr, abs=1e-12), layer
        assert entry["afr"] == pytest.approx(afr, rel=1e-9), layer
        assert entry["rae"] == pytest.approx(rae, rel=1e-9), layer
        assert entry["spikes_per_example"] == pytest.approx(total.sum() / len(val), rel=1e-9), layer
        assert entry["firing_rates"]["dead"] == int(np.sum(total.sum(0) == 0)), layer
    assert m["spikes_per_example"] == pytest.approx(sum(m["layers"][k]["spikes_per_example"]
                                                        for k in SPIKING_LAYERS), rel=1e-12)
    # The latent of an SAE is its firing rate over T: counts / T.
    np.testing.assert_allclose(latents, np.concatenate([c["latent"] for c in counts]) / T, atol=1e-12)
    labels = val.labels.numpy()
    for metric in M.DISTANCE_METRICS:
        expected = M.intra_inter_ratio(latents, labels, metric)["ratio"]
        assert m["s_intra_inter"][metric] == pytest.approx(expected, rel=1e-9), metric


def test_saec_eval_reproduces_the_end_of_training_eval_json(sae_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(sae_run, copy)
    before = json.loads((copy / "eval.json").read_text())
    (copy / "eval.json").unlink()
    shutil.rmtree(copy / "figures")
    result = runner.invoke(app, ["eval", str(copy), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "validation L_rec" in result.stdout and "s_intra/s_inter" in result.stdout
    after = json.loads((copy / "eval.json").read_text())
    assert after == before  # same weights, same evaluation seed: the same numbers
    assert sorted(p.name for p in (copy / "figures").iterdir()) == [
        "firing_rates.png", "latent_clustermap.png", "latent_raster.png", "receptive_fields.png",
        "reconstructions.png"]
    assert not list(copy.glob(".*tmp*"))  # atomic writers left no temporary file


def test_eval_limit_and_no_figures(sae_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(sae_run, copy, ignore=shutil.ignore_patterns("figures"))
    full = (copy / "eval.json").read_bytes()
    metrics = evaluate_run(copy, device="cpu", limit=40, figures=False)
    assert metrics["examples"] == 40
    assert json.loads((copy / "eval_limit40.json").read_text())["examples"] == 40  # beside the full evaluation,
    assert (copy / "eval.json").read_bytes() == full  # which is kept as it was
    assert not (copy / "figures").exists() and not (copy / "figures_limit40").exists()


def test_ae_eval_json_has_clustering_but_no_spike_metrics(ae_run):
    m = json.loads((ae_run / "eval.json").read_text())
    assert m["kind"] == "ae" and m["timesteps"] == 1
    assert "layers" not in m and "input_encoding" not in m
    assert all(isinstance(m["s_intra_inter"][k], float) for k in M.DISTANCE_METRICS)
    assert sorted(p.name for p in (ae_run / "figures").iterdir()) == [
        "latent_clustermap.png", "receptive_fields.png", "reconstructions.png"]


def test_latent_clustering_reports_undefined_metrics_as_null():
    # Every latent vector is zero (a silent latent layer): nothing to compare under any metric.
    from saec.analysis.evaluate import latent_clustering

    ratios, detail = latent_clustering(np.zeros((20, 5)), np.repeat(np.arange(4), 5))
    assert ratios == {m: None for m in M.DISTANCE_METRICS}
    assert all("error" in detail[m] for m in M.DISTANCE_METRICS)


def test_evaluate_leaves_the_training_mode_alone():
    loaded, graph = compile_spec(str(SPECS / "sae_dense.yaml"), ["encoding.timesteps=2"])
    from saec.training.data import ImageSet
    from saec.runtime.model import SpikingAutoencoder

    model = SpikingAutoencoder(graph)
    model.train()
    data = ImageSet(torch.rand(6, 1, 28, 28), torch.tensor([0, 1, 0, 1, 0, 1]), "random")
    res = evaluate(model, data, batch_size=4, keep_latents=True)
    assert model.training
    assert res.latents.shape == (6, 100) and res.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert res.input_rates.shape == (784,)


# ------------------------------------------------------------------ CLI errors: one line, exit 2
def _assert_one_line(result, pattern: str) -> None:
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert "\n" not in err and "Traceback" not in result.output, err
    assert re.search(pattern, err), err


def test_eval_missing_run_is_one_line(tmp_path):
    _assert_one_line(runner.invoke(app, ["eval", str(tmp_path / "nope")]), r"nope: no such run folder")


def test_eval_folder_that_is_no_run_is_one_line(tmp_path):
    _assert_one_line(runner.invoke(app, ["eval", str(tmp_path)]), r"not a saec run folder \(no spec.yaml\)")


def test_eval_untrained_run_is_one_line(sae_run, tmp_path):
    for name in ("spec.yaml", "ir.json"):  # what a run folder holds before its first checkpoint
        shutil.copy(sae_run / name, tmp_path / name)
    _assert_one_line(runner.invoke(app, ["eval", str(tmp_path), "--device", "cpu"]),
                     r"no trained weights \(model.safetensors\)")
    assert not (tmp_path / "eval.json").exists()


def test_eval_bad_limit_and_device_are_one_line(sae_run):
    _assert_one_line(runner.invoke(app, ["eval", str(sae_run), "--device", "tpu"]), r"--device: unknown device")
    _assert_one_line(runner.invoke(app, ["eval", str(sae_run), "--device", "cpu", "--limit", "0"]),
                     r"--limit: must be a positive number")
