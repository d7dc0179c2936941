"""ONNX export: checker, and onnxruntime against saec's own runtime on the same spike train.

Tolerances: spike counts and spike trains must be identical. The
reconstruction must agree within 1e-5 relative in the infinity norm
(max |onnx - torch| <= 1e-5 * max |torch|): the conv / linear products may
be summed in a different order by onnxruntime than by PyTorch, which moves
the last bits of the currents; an entry-wise relative bound is meaningless
where x_hat is near 0.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from saec.cli import app
from saec.compiler import ops
from saec.compiler.pipeline import compile_spec
from saec.exporters.onnx import (IMAGE_INPUT, IR_VERSION, OPSET, RECONSTRUCTION_OUTPUT, SPIKES_INPUT, activations_output,
                                 build_onnx_model, compare_with_runtime, counts_output, run_onnx,
                                 spike_train_mismatches, train_output)
from saec.run.export import export_onnx
from saec.run import artifacts as A
from saec.runtime.model import SpikingAutoencoder
from saec.errors import UserError
from tests.conftest import SPECS

runner = CliRunner()
X_HAT_RTOL = 1e-5

# Covers padding, stride 2 in a conv and a conv-transpose (with output padding), flatten/unflatten.
TINY = """\
name: tiny
kind: {kind}
latent: latent
input: {{shape: [1, 8, 8]}}
encoding: {{timesteps: 5}}
init: {{conv_std_factor: 3.0, linear_std_factor: 3.0}}
layers:
  - {{name: conv1, type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}}
  - {{name: conv2, type: conv2d, out_channels: 6, kernel_size: 3, stride: 2}}
  - {{name: flat, type: flatten}}
  - {{name: latent, type: linear, out_features: 8}}
  - {{name: fc_dec, type: linear, out_features: 54}}
  - {{name: unflat, type: unflatten, shape: [6, 3, 3]}}
  - {{name: deconv1, type: conv_transpose2d, out_channels: 4, kernel_size: 3, stride: 2, output_padding: 1}}
  - {{name: output, type: conv_transpose2d, out_channels: 1, kernel_size: 3, padding: 1}}
"""

# Every forward-semantics switch of the LIF and the readout.
SEMANTICS = {
    "saec": [],
    "paper": ["preset=paper"],
    "reference": ["preset=reference"],
    "subtract_reset": ["neuron.reset=subtract"],
    "no_reset_no_floor": ["neuron.reset=none", "neuron.lower_bound=null"],
    "floor_after_spike_test": ["neuron.clamp_first=false", "neuron.lower_bound_mode=clamp", "neuron.spike_when=ge"],
    # The floor above the threshold: spiking and the floor rule can coincide. A spec may not ask for it
    # (compile refuses lower_bound >= threshold), so the compiled IR's LIF ops are given it (IR_PATCH).
    "floor_above_threshold": ["neuron.clamp_first=false", "neuron.lower_bound_mode=clamp", "neuron.lower_bound=0.5",
                              "ir.lif.lower_bound=1.5"],
    # Revived potentials sit exactly on the threshold: only `>=` makes them spike.
    "revive_with_ge": ["neuron.spike_when=ge"],
    "potential_readout_t0": ["neuron.integrate=potential", "readout.t_min=0", "readout.divide_by_timesteps=false"],
}


IR_PATCH = "ir.lif."  # an override of this form sets a field of every LIF op of the compiled IR


def tiny_model(tmp_path, kind: str = "sae", overrides: list[str] = (), seed: int = 0) -> SpikingAutoencoder:
    path = tmp_path / f"tiny_{kind}.yaml"
    path.write_text(TINY.format(kind=kind))
    _, graph = compile_spec(str(path), [o for o in overrides if not o.startswith(IR_PATCH)])
    for patch in (o for o in overrides if o.startswith(IR_PATCH)):
        field, value = patch[len(IR_PATCH):].split("=")
        for node in list(graph.nodes(ops.LIF)):
            graph.replace_op(node, dataclasses.replace(graph.op(node), **{field: float(value)}))
    model = SpikingAutoencoder(graph)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    return model.eval()


def random_train(T: int, batch: int, shape: tuple[int, ...], rate: float = 0.4, seed: int = 1) -> torch.Tensor:
    return (torch.rand((T, batch, *shape), generator=torch.Generator().manual_seed(seed)) < rate).float()


@pytest.mark.parametrize("quantized", [False, True], ids=["float_weights", "half_integer_weights"])
@pytest.mark.parametrize("semantics", sorted(SEMANTICS))
def test_tiny_sae_spike_trains_identical_to_runtime(tmp_path, semantics, quantized):
    """Identical spike trains in every layer; with weights in multiples of 1/2 the first
    step's currents are exact sums, so many potentials tie with the threshold exactly."""
    model = tiny_model(tmp_path, "sae", SEMANTICS[semantics])
    if quantized:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.round(p * 2) / 2)
    graph = model.graph
    onnx_model = build_onnx_model(graph, model.ir_state_dict())
    onnx.checker.check_model(onnx_model, full_check=True)
    assert onnx_model.opset_import[0].version == OPSET
    assert onnx_model.ir_version == IR_VERSION == 8  # readable by onnxruntime >= 1.14, not just the newest
    train = random_train(5, 3, (1, 8, 8))
    layers = [graph.meta(n)["layer"] for n in graph.nodes(ops.LIF)]
    with torch.inference_mode():
        ref = model(torch.zeros(3, 1, 8, 8), encoded=train, record=set(layers))
    # Every spiking layer's whole spike train is a graph output, `spikes.<layer>` [T, batch, *shape].
    got = run_onnx(onnx_model, {SPIKES_INPUT: train.numpy()})
    for layer in layers:
        want = ref.trains[layer].numpy()
        assert 0 < want.sum() < want.size, f"{layer}: silent or saturated layer makes the check vacuous"
        np.testing.assert_array_equal(got[train_output(layer)], want, err_msg=layer)
        np.testing.assert_array_equal(got[counts_output(layer)], ref.counts[layer].numpy(), err_msg=layer)
    want_x = ref.x_hat.numpy()
    assert np.abs(want_x).max() > 0
    np.testing.assert_allclose(got[RECONSTRUCTION_OUTPUT], want_x, rtol=0, atol=X_HAT_RTOL * np.abs(want_x).max())


def test_unrolled_timesteps_and_fixed_batch(tmp_path):
    """--timesteps changes T (and the readout divisor T*s, as in the runtime); --batch fixes B."""
    model = tiny_model(tmp_path, "sae")
    onnx_model = build_onnx_model(model.graph, model.ir_state_dict(), timesteps=3, batch=2)
    onnx.checker.check_model(onnx_model, full_check=True)
    dims = [d.dim_value for d in onnx_model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [3, 2, 1, 8, 8]
    trains = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in onnx_model.graph.output
              if o.name.startswith("spikes.")}
    assert trains == {train_output("conv1"): [3, 2, 4, 8, 8], train_output("conv2"): [3, 2, 6, 3, 3],
                      train_output("latent"): [3, 2, 8], train_output("fc_dec"): [3, 2, 54],
                      train_output("deconv1"): [3, 2, 4, 8, 8], train_output("output"): [3, 2, 1, 8, 8]}
    agreement = compare_with_runtime(onnx_model, model, random_train(3, 2, (1, 8, 8), seed=5))
    assert agreement.spikes_exact, agreement.train_mismatches
    assert set(agreement.train_mismatches) == set(agreement.spikes)
    assert sum(agreement.spikes.values()) > 0
    assert agreement.x_hat_rel_err <= X_HAT_RTOL


def test_symbolic_batch_runs_any_batch_size(tmp_path):
    model = tiny_model(tmp_path, "sae")
    onnx_model = build_onnx_model(model.graph, model.ir_state_dict())
    assert onnx_model.graph.input[0].type.tensor_type.shape.dim[1].dim_param == "batch"
    for batch in (1, 4):
        agreement = compare_with_runtime(onnx_model, model, random_train(5, batch, (1, 8, 8), seed=batch))
        assert agreement.spikes_exact and agreement.x_hat_rel_err <= X_HAT_RTOL


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_ae_and_vae_export_with_one_step(tmp_path, kind):
    model = tiny_model(tmp_path, kind)
    onnx_model = build_onnx_model(model.graph, model.ir_state_dict())
    onnx.checker.check_model(onnx_model, full_check=True)
    assert [i.name for i in onnx_model.graph.input] == [IMAGE_INPUT]
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    agreement = compare_with_runtime(onnx_model, model, x)
    assert set(agreement.activation_rel_err) == set(model(x).counts)
    assert max(agreement.activation_rel_err.values()) <= X_HAT_RTOL
    assert agreement.x_hat_rel_err <= X_HAT_RTOL
    if kind == "vae":  # eval mode: z = mu, and mu / logvar are outputs
        got = run_onnx(onnx_model, {IMAGE_INPUT: x.numpy()})
        with torch.inference_mode():
            ref = model(x)
        np.testing.assert_allclose(got["mu"], ref.mu.numpy(), rtol=0, atol=X_HAT_RTOL * ref.mu.abs().max().item())
        np.testing.assert_allclose(got["logvar"], ref.logvar.numpy(), rtol=0,
                                   atol=X_HAT_RTOL * ref.logvar.abs().max().item())
        assert activations_output("fc_dec") in got


def test_train_comparison_sees_a_spike_moved_in_time():
    """Equal counts per (example, neuron), one spike one step later: 2 positions differ."""
    want = np.zeros((4, 2, 3), dtype=np.float32)
    want[1, 0, 2] = want[3, 1, 0] = 1.0
    moved = want.copy()
    moved[1, 0, 2], moved[2, 0, 2] = 0.0, 1.0
    assert np.array_equal(moved.sum(0), want.sum(0))
    assert spike_train_mismatches(moved, want) == 2 and spike_train_mismatches(want, want) == 0
    with pytest.raises(ValueError, match=r"shapes \[4, 2, 3\] and \[4, 2, 2\]"):
        spike_train_mismatches(want, want[..., :2])


def test_compare_with_runtime_fails_a_model_whose_trains_differ_with_equal_counts(tmp_path):
    """An ONNX model whose output layer's train is reversed in time (same counts): spikes_exact is False."""
    model = tiny_model(tmp_path, "sae")
    onnx_model = build_onnx_model(model.graph, model.ir_state_dict())
    name = train_output("output")
    (producer,) = [n for n in onnx_model.graph.node if name in n.output]
    producer.output[list(producer.output).index(name)] = "output.train_in_order"
    steps = onnx.numpy_helper.from_array(np.arange(4, -1, -1, dtype=np.int64), "reversed_steps")
    onnx_model.graph.initializer.append(steps)
    at = list(onnx_model.graph.node).index(producer) + 1  # before the counts' ReduceSum reads it
    onnx_model.graph.node.insert(at, onnx.helper.make_node("Gather", ["output.train_in_order", "reversed_steps"],
                                                           [name], axis=0))
    onnx.checker.check_model(onnx_model, full_check=True)
    train = random_train(5, 3, (1, 8, 8))
    agreement = compare_with_runtime(onnx_model, model, train)
    assert agreement.count_mismatches["output"] == 0 and agreement.train_mismatches["output"] > 0
    assert not agreement.spikes_exact
    assert all(agreement.train_mismatches[layer] == 0 for layer in agreement.train_mismatches if layer != "output")


def test_ae_rejects_timesteps(tmp_path):
    model = tiny_model(tmp_path, "ae")
    with pytest.raises(UserError, match="T = 1"):
        build_onnx_model(model.graph, model.ir_state_dict(), timesteps=4)


def test_op_without_lowering_is_a_spec_error(tmp_path):
    model = tiny_model(tmp_path, "sae")
    graph = model.graph.copy()
    graph.replace_op("flat", ops.SumPool2d())
    with pytest.raises(UserError, match="no lowering for IR op 'sum_pool2d'"):
        build_onnx_model(graph, model.ir_state_dict())


# ---------------------------------------------------------------- run folders and CLI
@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A run folder interrupted before its first step: initial weights, no evaluation (fast)."""
    from saec.run.train import train
    from saec.training.train import TrainingInterrupted

    out = tmp_path_factory.mktemp("run") / "sae"
    loaded, graph = compile_spec(str(SPECS / "sae_dense.yaml"), [
        "encoding.timesteps=4", "data.dataset=mnist5k", "data.train_limit=64", "data.validation.source=split",
        "data.validation.fraction=0.5"])
    with pytest.raises(TrainingInterrupted):
        train(loaded.spec, graph, out, device="cpu", progress=False, log=lambda _: None, stop_after_steps=0)
    return out


def test_export_onnx_writes_checked_model_that_matches_runtime(interrupted_run):
    from saec.run.folder import load_model

    path = export_onnx(interrupted_run)
    assert path == interrupted_run / A.EXPORT / "model.onnx"
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded, full_check=True)
    props = {p.key: p.value for p in loaded.metadata_props}
    assert props["timesteps"] == "4" and props["kind"] == "sae" and len(props["spec_sha256"]) == 64
    _, model = load_model(interrupted_run)
    agreement = compare_with_runtime(path, model, random_train(4, 2, (1, 28, 28), rate=0.2, seed=3))
    assert agreement.spikes_exact, agreement.train_mismatches
    assert sum(agreement.spikes.values()) > 0
    assert agreement.x_hat_rel_err <= X_HAT_RTOL
    assert not list(path.parent.glob(".*tmp*")), "temporary file left behind"


def test_export_cli_onnx(interrupted_run):
    """The file `saec export` writes, run by onnxruntime itself, gives saec's spike counts and x_hat."""
    import onnxruntime as ort

    from saec.run.folder import load_model

    path = interrupted_run / A.EXPORT / "model.onnx"
    path.unlink(missing_ok=True)
    result = runner.invoke(app, ["export", str(interrupted_run), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    assert path.is_file()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    train = random_train(4, 3, (1, 28, 28), rate=0.2, seed=11)
    (only_input,) = session.get_inputs()
    assert only_input.name == SPIKES_INPUT
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(names, {SPIKES_INPUT: train.numpy().astype(np.float32)})))
    _, model = load_model(interrupted_run)
    model.eval()
    with torch.inference_mode():
        ref = model(torch.zeros(train.shape[1:]), encoded=train)
    assert {counts_output(layer) for layer in ref.counts} <= set(got)
    for layer, counts in ref.counts.items():
        np.testing.assert_array_equal(got[counts_output(layer)], counts.numpy(), err_msg=layer)
    assert sum(int(c.sum()) for c in ref.counts.values()) > 0
    want = ref.x_hat.double().numpy()
    assert got[RECONSTRUCTION_OUTPUT].shape == want.shape and np.abs(want).max() > 0
    assert np.abs(got[RECONSTRUCTION_OUTPUT] - want).max() <= X_HAT_RTOL * np.abs(want).max()


def test_export_cli_missing_run_is_one_line_exit_2(tmp_path):
    result = runner.invoke(app, ["export", str(tmp_path / "nope"), "--format", "onnx"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "not a saec run folder" in lines[0]


def test_export_untrained_run_is_a_spec_error(interrupted_run, tmp_path):
    half = tmp_path / "half"
    half.mkdir()
    for name in (A.SPEC, A.IR):
        (half / name).write_text((interrupted_run / name).read_text())
    with pytest.raises(UserError, match="no trained weights"):
        export_onnx(half)
    result = runner.invoke(app, ["export", str(half), "--format", "onnx"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert not (half / A.EXPORT).exists()


# ---------------------------------------------------------------- the paper network
@pytest.mark.slow
def test_paper_sae_t16_onnxruntime_reproduces_spikes_on_mnist():
    """The paper SAE (printed equations) at T = 16 on 64 Poisson-encoded MNIST digits (the embedded subset).

    Measured once over 5 weight seeds x 64 MNIST test images (/tmp study, same code path):
    0 of 14,373,120 (example, neuron) counts differ, 2,827,670 spikes; x_hat
    relative error <= 1.9e-7. The unrolled graph has 734 nodes.
    """
    from saec.training.data import load_images
    from saec.runtime.encoding import poisson_encode

    _, graph = compile_spec(str(SPECS / "paper" / "sae.yaml"), ["encoding.timesteps=16"])
    model = SpikingAutoencoder(graph)
    model.reset_parameters(torch.Generator().manual_seed(0))
    model.eval()
    onnx_model = build_onnx_model(graph, model.ir_state_dict())
    onnx.checker.check_model(onnx_model, full_check=True)
    images = load_images("mnist5k", "train").images[:64]  # real digits that every clone has
    (enc,) = graph.nodes(ops.PoissonEncode)
    train = poisson_encode(images, graph.op(enc), generator=torch.Generator().manual_seed(100))
    agreement = compare_with_runtime(onnx_model, model, train)
    assert all(agreement.spikes[layer] > 0 for layer in agreement.spikes)
    assert agreement.spikes_exact, agreement.train_mismatches
    assert agreement.x_hat_rel_err <= X_HAT_RTOL
