"""saec stats: fan-out and synaptic operations on hand-built cases, activation sparsity,
stats.json of a tiny trained run, and the CLI's one-line errors."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from saec.cli import app
from saec.compiler import ops
from saec.compiler.passes.cost import synapses
from saec.compiler.passes.shapes import output_shape
from saec.compiler.pipeline import compile_spec
from saec.analysis.stats import (DEFINITIONS, HOROWITZ_45NM_FP32, activation_sparsity, connection_sparsity, fan_out,
                                  footprint_bytes, measure_stats, synaptic_operations)
from saec.run.report import run_stats
from saec.run import artifacts as A
from saec.training.data import ImageSet
from saec.runtime.model import SpikingAutoencoder
from saec.errors import UserError
from tests.conftest import SPECS

runner = CliRunner()


# ---------------------------------------------------------------- fan-out, by hand
def test_fan_out_of_3x3_conv_corner_edge_centre():
    """5x5 input, 3x3 kernel, no padding -> 3x3 output: a corner pixel reaches one
    output position, an edge-middle pixel three, the centre all nine; times 2 channels."""
    op = ops.Conv2d(in_channels=1, out_channels=2, kernel_size=(3, 3))
    fo = fan_out(op, (1, 5, 5), torch.ones(2, 1, 3, 3))
    assert fo[0, 0, 0] == 2 and fo[0, 4, 4] == 2
    assert fo[0, 0, 2] == 6
    assert fo[0, 2, 2] == 18
    per_axis = torch.tensor([1.0, 2, 3, 2, 1], dtype=torch.float64)
    assert torch.equal(fo[0], 2 * torch.outer(per_axis, per_axis))


def test_fan_out_skips_zero_weights_and_counts_padding_reach():
    w = torch.ones(2, 1, 3, 3)
    w[0, 0, 0, 0] = 0.0  # the only tap linking input (0, 0) to output (0, 0) in channel 0
    op = ops.Conv2d(in_channels=1, out_channels=2, kernel_size=(3, 3))
    fo = fan_out(op, (1, 5, 5), w)
    assert fo[0, 0, 0] == 1 and fo[0, 2, 2] == 17
    padded = ops.Conv2d(in_channels=1, out_channels=2, kernel_size=(3, 3), padding=(1, 1))
    assert fan_out(padded, (1, 5, 5), torch.ones(2, 1, 3, 3))[0, 0, 0] == 2 * 4  # 2x2 outputs around the corner


def test_fan_out_of_linear_counts_nonzero_column_entries():
    w = torch.randn(4, 3)
    w[1, 0] = 0.0
    w[2, 0] = 0.0
    fo = fan_out(ops.Linear(in_features=3, out_features=4), (3,), w)
    assert fo.tolist() == [2.0, 4.0, 4.0]


def _brute_force_fan_out(op: ops.ConvTranspose2d, in_shape, weight):
    """Scatter every input position through every non-zero tap; count distinct targets."""
    c_in, h, w = in_shape
    (kh, kw), (sh, sw), (ph, pw) = op.kernel_size, op.stride, op.padding
    _, oh, ow = output_shape(op, in_shape, "t")
    out = torch.zeros(in_shape, dtype=torch.float64)
    for c, i, j in itertools.product(range(c_in), range(h), range(w)):
        for o, a, b in itertools.product(range(op.out_channels), range(kh), range(kw)):
            y, x = i * sh - ph + a, j * sw - pw + b
            if weight[c, o, a, b] != 0 and 0 <= y < oh and 0 <= x < ow:
                out[c, i, j] += 1
    return out


def test_fan_out_of_strided_conv_transpose_matches_brute_force():
    op = ops.ConvTranspose2d(in_channels=2, out_channels=3, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1),
                             output_padding=(1, 1))
    weight = torch.randn(2, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    weight[weight.abs() < 0.5] = 0.0  # some zero taps
    assert torch.equal(fan_out(op, (2, 4, 4), weight), _brute_force_fan_out(op, (2, 4, 4), weight))


@pytest.mark.parametrize("op, in_shape", [
    (ops.Conv2d(in_channels=2, out_channels=3, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)), (2, 7, 7)),
    (ops.ConvTranspose2d(in_channels=3, out_channels=2, kernel_size=(5, 5), padding=(1, 1)), (3, 6, 6)),
    (ops.Linear(in_features=6, out_features=5), (6,)),
])
def test_all_ones_fan_out_sums_to_the_compilers_synapse_count(op, in_shape):
    """NeuroBench Dense per step (all weights and inputs 1) == the cost pass's `synapses`."""
    from saec.compiler.passes.params import weight_shapes

    fo = fan_out(op, in_shape, torch.ones(weight_shapes(op)["weight"]))
    assert fo.sum().item() == synapses(op, in_shape, output_shape(op, in_shape, "t"))


def test_synaptic_operations_equal_neurobench_binarised_forward():
    """sum(events * fan-out) == sum of the layer's output with binarised inputs and weights,
    summed over time steps (NeuroBench's SynapticOperations, computed literally)."""
    op = ops.Conv2d(in_channels=2, out_channels=4, kernel_size=(3, 3), padding=(1, 1))
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(4, 2, 3, 3, generator=gen)
    weight[weight.abs() < 0.3] = 0.0
    spikes = (torch.rand(6, 3, 2, 5, 5, generator=gen) < 0.3).double()  # [T, B, C, H, W]
    literal = sum(F.conv2d(spikes[t], (weight != 0).double(), padding=1).sum() for t in range(6)).item()
    events = spikes.sum(0)  # per example and neuron, summed over T
    assert synaptic_operations(events, fan_out(op, (2, 5, 5), weight)) == literal
    assert literal > 0


def test_activation_sparsity_hand_case():
    # 2 examples, T = 5: layer a has 4 neurons and 6 spikes, layer b 2 neurons and 4 spikes.
    # Possible outputs 6 * 5 * 2 = 60, non-zero 10 -> sparsity 50 / 60.
    assert activation_sparsity({"a": 6.0, "b": 4.0}, {"a": 4, "b": 2}, timesteps=5, examples=2) == 50 / 60
    assert activation_sparsity({"a": 0.0}, {"a": 4}, timesteps=5, examples=2) == 1.0


def test_connection_sparsity_and_footprint_hand_cases():
    a = torch.ones(3, 4)
    a[0, :3] = 0.0  # 3 zeros of 12
    b = torch.ones(2, 1, 2, 2)
    b[1, 0, 1, 1] = 0.0  # 1 zero of 8
    assert connection_sparsity([a, b]) == 4 / 20
    assert connection_sparsity([torch.ones(5)]) == 0.0 and connection_sparsity([torch.zeros(2, 2)]) == 1.0
    with pytest.raises(ValueError, match="no weights"):
        connection_sparsity([])
    # bytes as stored: 12 float32 + 3 float64 + 7 int8
    assert footprint_bytes([a, torch.zeros(3, dtype=torch.float64), torch.zeros(7, dtype=torch.int8)]) == 48 + 24 + 7


def _tiny_ae(tmp_path):
    spec = tmp_path / "tiny_ae.yaml"
    spec.write_text("""\
name: tiny_ae
kind: ae
latent: latent
input: {shape: [1, 4, 4]}
layers:
  - {name: flat, type: flatten}
  - {name: latent, type: linear, out_features: 3}
  - {name: fc_dec, type: linear, out_features: 16}
  - {name: unflat, type: unflatten, shape: [1, 4, 4]}
""")
    _, graph = compile_spec(str(spec), [])
    model = SpikingAutoencoder(graph)
    model.reset_parameters(torch.Generator().manual_seed(0))
    return model


def test_stats_connection_sparsity_and_footprint_of_hand_set_weights(tmp_path):
    """latent: 16x3 weights with 12 zeros (+3 biases); fc_dec: 3x16 weights with 6 zeros (+16 biases)."""
    model = _tiny_ae(tmp_path)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
        state = model.ir_state_dict()
        state["latent.weight"][:, :4] = 0.0  # 3 x 4 = 12 zeros
        state["fc_dec.weight"][:2, :3] = 0.0  # 2 x 3 = 6 zeros
        state["fc_dec.bias"][:] = 0.0  # a zero bias is not a zero connection
    images = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    stats = measure_stats(model, ImageSet(images, torch.zeros(2, dtype=torch.long), "hand"), batch_size=2)
    latent, fc_dec, total = stats["layers"]["latent"], stats["layers"]["fc_dec"], stats["total"]
    assert (latent["zero_weights"], latent["connection_sparsity"]) == (12, 12 / 48)
    assert (fc_dec["zero_weights"], fc_dec["connection_sparsity"]) == (6, 6 / 48)
    assert latent["parameter_bytes"] == 4 * (48 + 3) and fc_dec["parameter_bytes"] == 4 * (48 + 16)
    assert total["zero_weights"] == 18 and total["connection_sparsity"] == 18 / 96
    assert total["parameter_bytes"] == 4 * (48 + 3 + 48 + 16)
    assert total["footprint_bytes"] == 4 * (48 + 3 + 48 + 16)  # no buffers in this network
    assert {"connection_sparsity", "footprint_bytes", "zero_weights", "parameter_bytes"} <= set(DEFINITIONS)


def test_connection_sparsity_and_footprint_equal_neurobenchs_own_metrics(tmp_path):
    """On hand-built torch layers (NeuroBench visits Linear/Conv; a BatchNorm adds buffers) and on saec's network."""
    nb_static = pytest.importorskip(
        "neurobench.metrics.static",
        reason="neurobench not installed: pip install --no-deps neurobench==2.3.0 (it needs snntorch, installed)")
    from neurobench.models import TorchModel

    gen = torch.Generator().manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 10),
                              torch.nn.BatchNorm1d(10), torch.nn.Linear(10, 5, bias=False))
    with torch.no_grad():
        for layer in (net[0], net[2], net[4]):
            w = torch.randn(layer.weight.shape, generator=gen)
            layer.weight.copy_(torch.where(w.abs() < 0.7, torch.zeros_like(w), w))
    weights = [net[0].weight, net[2].weight, net[4].weight]
    ours = connection_sparsity(weights)
    assert 0.3 < ours < 0.7
    assert round(ours, 4) == nb_static.ConnectionSparsity()(TorchModel(net))
    assert footprint_bytes([*net.parameters(), *net.buffers()]) == nb_static.Footprint()(TorchModel(net))
    model = _tiny_ae(tmp_path)
    stats = measure_stats(model, ImageSet(torch.rand(2, 1, 4, 4, generator=gen), torch.zeros(2, dtype=torch.long),
                                          "rand"), batch_size=2)
    assert stats["total"]["footprint_bytes"] == nb_static.Footprint()(TorchModel(model))


# ---------------------------------------------------------------- AE on hand-made images
def test_ae_stats_count_macs_from_nonzero_pixels(tmp_path):
    model = _tiny_ae(tmp_path)
    images = torch.zeros(2, 1, 4, 4)
    images[0, 0, 0, :3] = 0.5  # 3 non-zero pixels
    images[1, 0, 2, 2] = 1.0  # 1 non-zero pixel
    stats = measure_stats(model, ImageSet(images, torch.zeros(2, dtype=torch.long), "hand"), batch_size=2)
    latent = stats["layers"]["latent"]
    assert latent["synop_kind"] == "MAC" and latent["presynaptic"] == "input image"
    assert latent["synops_per_example"] == (3 + 1) * 3 / 2  # non-zero pixels x fan-out 3, per example
    with torch.inference_mode():
        act = model(images).counts["latent"]
    nonzero = (act != 0).sum().item()
    assert stats["layers"]["fc_dec"]["synops_per_example"] == nonzero * 16 / 2
    assert stats["total"]["effective_acs_per_example"] == 0
    assert stats["total"]["energy_joules_per_inference"] == pytest.approx(
        stats["total"]["synops_per_example"] * HOROWITZ_45NM_FP32.mac_joules, rel=1e-12)


# ---------------------------------------------------------------- a tiny trained run
# Two one-step epochs, interrupted at the start of the second: weights after one
# optimizer step and the run folder of `saec train`, without finish_run's figures.
# Validation on a held-out part of the embedded subset: no data beyond a fresh clone.
TINY_TRAINING = ["encoding.timesteps=4", "training.max_steps=1", "training.epochs=2", "data.dataset=mnist5k",
                 "data.train_limit=64", "data.validation.source=split", "data.validation.limit=32"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from saec.run.train import train
    from saec.training.train import TrainingInterrupted

    out = tmp_path_factory.mktemp("stats") / "sae_dense"
    loaded, graph = compile_spec(str(SPECS / "sae_dense.yaml"), TINY_TRAINING)
    with pytest.raises(TrainingInterrupted):
        train(loaded.spec, graph, out, device="cpu", progress=False, log=lambda _: None, stop_after_steps=1)
    return out


def test_stats_json_of_a_trained_run(trained_run):
    from saec.training.data import make_splits
    from saec.analysis.evaluate import evaluate
    from saec.run.folder import load_model

    result = runner.invoke(app, ["stats", str(trained_run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "activation sparsity" in result.output and "conv1" in result.output
    stats = json.loads((trained_run / A.STATS).read_text())
    assert stats["examples"] == 32 and stats["timesteps"] == 4
    layers = stats["layers"]
    assert list(layers) == ["conv1", "conv2", "latent", "fc_dec", "deconv1", "output"]
    for name, layer in layers.items():
        for key in ("neurons", "synapses", "firing_rate", "dead", "bursting", "spikes_per_example",
                    "synops_per_example"):
            assert layer[key] is not None, (name, key)
        assert 0 <= layer["firing_rate"] <= 1 and 0 <= layer["dead"] <= layer["neurons"]
        assert layer["synop_kind"] == "AC"
        assert layer["spikes_per_example"] == pytest.approx(layer["firing_rate"] * layer["neurons"] * 4, rel=1e-9)
    total = stats["total"]
    for key in ("synops_per_example", "dense_macs_per_example", "activation_sparsity",
                "energy_joules_per_inference"):
        assert total[key] is not None, key
    assert total["dense_macs_per_example"] == 13_260_800  # the SAE's MACs of one ANN pass (compile summary)
    assert total["dense_synops_per_example"] == 4 * 13_260_800
    # Linear layers without zero weights: every presynaptic spike reaches all outputs.
    assert layers["fc_dec"]["synops_per_example"] == pytest.approx(layers["latent"]["spikes_per_example"] * 12_800)
    assert layers["latent"]["synops_per_example"] == pytest.approx(layers["conv2"]["spikes_per_example"] * 100)
    # The first layer is driven by the input spikes; each reaches at most 16 channels x 25 taps.
    assert 0 < layers["conv1"]["synops_per_example"] <= total["input_spikes_per_example"] * 16 * 25
    assert total["synops_per_example"] == pytest.approx(sum(v["synops_per_example"] for v in layers.values()))
    assert total["activation_sparsity"] == pytest.approx(1 - total["firing_rate"])
    assert total["energy_joules_per_inference"] == pytest.approx(total["synops_per_example"] * 0.9e-12)
    assert total["ann_energy_joules_per_inference"] == pytest.approx(13_260_800 * 4.6e-12)
    # Connection sparsity and footprint over the SAE's weights (no biases, no buffers), from the weights themselves.
    _, trained = load_model(trained_run)
    weights = trained.ir_state_dict()
    zeros = {name: int((weights[f"{name}.weight"] == 0).sum()) for name in layers}
    for name, layer in layers.items():
        assert layer["zero_weights"] == zeros[name]
        assert layer["connection_sparsity"] == zeros[name] / layer["weights"]
        assert layer["parameter_bytes"] == 4 * layer["weights"]
    assert total["connection_sparsity"] == sum(zeros.values()) / 2_586_400
    assert total["footprint_bytes"] == 4 * 2_586_400 == total["parameter_bytes"]
    assert set(stats["definitions"]) >= {"synops_per_example", "activation_sparsity", "sources",
                                         "connection_sparsity", "footprint_bytes"}
    assert "Horowitz" in stats["energy_per_operation"]["source"]
    # Same encoding noise as the run's evaluation, so the same spikes.
    spec, model = load_model(trained_run)
    _, val = make_splits(spec.data, None, seed=spec.training.seed)
    evaluated = evaluate(model, val, batch_size=spec.training.batch_size, seed=spec.training.seed).metrics
    for name, layer in layers.items():
        assert layer["spikes_per_example"] == evaluated["layers"][name]["spikes_per_example"], name


def test_stats_examples_limits_the_evaluated_set(trained_run):
    _, stats = run_stats(trained_run, examples=5)
    assert stats["examples"] == 5
    assert stats["definitions"] is DEFINITIONS


def test_stats_cli_missing_run_is_one_line_exit_2(tmp_path):
    result = runner.invoke(app, ["stats", str(tmp_path / "nope")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "not a saec run folder" in lines[0]


def test_stats_cli_untrained_run_is_one_line_exit_2(trained_run, tmp_path):
    half = tmp_path / "half"
    half.mkdir()
    for name in (A.SPEC, A.IR):
        (half / name).write_text((trained_run / name).read_text())
    result = runner.invoke(app, ["stats", str(half)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "no trained weights" in lines[0]
    assert not (half / A.STATS).exists()


def test_stats_bad_examples_is_a_spec_error(trained_run):
    with pytest.raises(UserError, match="--examples"):
        run_stats(trained_run, examples=0)


def test_synaptic_operations_through_a_sum_pool(tmp_path):
    """A conv after a sum pool receives every spike of the pooled window as one event at the pooled
    position (the DYNAP-CNN way): its synaptic operations are the pooled counts x fan-out."""
    from saec.analysis.evaluate import EVAL_SEED_OFFSET

    spec = tmp_path / "pooled.yaml"
    spec.write_text("""\
name: pooled
kind: sae
latent: conv1
input: {shape: [1, 4, 4]}
encoding: {timesteps: 5, scale: 1.0}
neuron: {decay: 1.0, threshold: 0.5}
layers:
  - {name: conv1, type: conv2d, out_channels: 2, kernel_size: 1}
  - {name: pool, type: sum_pool2d, kernel_size: 2}
  - {name: conv2, type: conv2d, out_channels: 3, kernel_size: 3, padding: 1}
  - {name: up, type: conv_transpose2d, out_channels: 1, kernel_size: 3}
""")
    _, graph = compile_spec(str(spec), [])
    model = SpikingAutoencoder(graph)
    model.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.synapses["conv1"].weight.fill_(1.0)  # every input spike makes conv1 spike
    images = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    stats = measure_stats(model, ImageSet(images, torch.zeros(2, dtype=torch.long), "hand"), batch_size=2)
    with torch.inference_mode():
        out = model(images, generator=torch.Generator().manual_seed(EVAL_SEED_OFFSET))
    pooled = F.avg_pool2d(out.counts["conv1"].double(), 2, divisor_override=1)  # [B, 2, 2, 2]
    weight = model.ir_state_dict()["conv2.weight"]
    literal = F.conv2d(pooled, (weight != 0).double(), padding=1).sum().item()
    assert pooled.sum() > 0
    assert stats["layers"]["conv2"]["synops_per_example"] == pytest.approx(literal / 2, rel=1e-12)
