"""The NIR lowerings are exact: saec's runtime gives identical spikes before and after each one.

Every simulation here runs in float64 (the rewrites are exact in real
arithmetic; float64 rounding, ~1e-16, cannot move a membrane across the
threshold on these random inputs), on random weights scaled so that every
layer fires.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from saec.compiler import ops
from saec.compiler.errors import CompileError
from saec.compiler.graph import IRGraph
from saec.compiler.passes import lower_nir as L
from saec.compiler.pipeline import FLOWS, compile_spec, run_flow
from saec.runtime.model import SpikingAutoencoder
from saec.errors import UserError

T, BATCH = 6, 3

# 8x8 SAE with every op kind the lowerings touch: conv, flatten, linear,
# unflatten, padded and unpadded transposed convolutions, a non-square kernel.
SAE_YAML = """
name: tiny
kind: sae
latent: latent
input: {shape: [1, 8, 8]}
encoding: {type: poisson, timesteps: 6, scale: 0.5}
neuron: {type: lif, decay: 0.9, threshold: 1.0, reset: zero, lower_bound: null}
layers:
  - {name: conv1, type: conv2d, out_channels: 3, kernel_size: [3, 2]}
  - {name: conv2, type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}
  - {name: flat, type: flatten}
  - {name: latent, type: linear, out_features: 10}
  - {name: fc_dec, type: linear, out_features: 140}
  - {name: unflat, type: unflatten, shape: [4, 7, 5]}
  - {name: deconv1, type: conv_transpose2d, out_channels: 3, kernel_size: [4, 2], padding: [1, 0]}
  - {name: output, type: conv_transpose2d, out_channels: 1, kernel_size: 3, padding: [1, 0]}
readout: {type: max_cumulative_potential, scale: 0.5}
"""

# A deeper fully connected middle: three linears between flatten and unflatten.
MLP_YAML = """
name: mlp
kind: sae
latent: latent
input: {shape: [2, 4, 4]}
encoding: {type: poisson, timesteps: 6, scale: 0.5}
neuron: {type: lif, decay: 0.8, threshold: 1.0, reset: zero, lower_bound: null}
layers:
  - {name: flat, type: flatten}
  - {name: hidden, type: linear, out_features: 12}
  - {name: latent, type: linear, out_features: 6}
  - {name: fc_dec, type: linear, out_features: 32}
  - {name: unflat, type: unflatten, shape: [2, 4, 4]}
  - {name: output, type: conv2d, out_channels: 2, kernel_size: 1}
readout: {type: max_cumulative_potential, scale: 0.5}
"""


def compile_yaml(tmp_path: Path, text: str, *overrides: str) -> IRGraph:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return compile_spec(str(path), list(overrides))[1]


def random_weights(graph: IRGraph, seed: int = 0, gain: float = 2.5) -> dict[str, torch.Tensor]:
    """He-initialised weights times ``gain`` (enough drive that every layer fires), float64."""
    model = SpikingAutoencoder(graph)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    return {k: (v * gain).double() for k, v in model.ir_state_dict().items()}


def input_train(graph: IRGraph, seed: int = 1) -> torch.Tensor:
    (inp,) = graph.nodes(ops.Input)
    shape = tuple(graph.meta(inp)["shape"])
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand((T, BATCH, *shape), generator=gen, dtype=torch.float64) < 0.4).double()


def simulate(graph: IRGraph, state: dict, train: torch.Tensor) -> dict[str, torch.Tensor]:
    """Spike trains [T, B, neurons] of every spiking layer, plus the reconstruction, in float64."""
    model = SpikingAutoencoder(graph).double()
    model.load_ir_state_dict({k: torch.as_tensor(np.asarray(v)).double() for k, v in state.items()})
    layers = {graph.meta(n)["layer"] for n in graph.nodes(ops.LIF)}
    with torch.no_grad():
        out = model(train[0], encoded=train, record=layers)
    trains = {k: v.reshape(v.shape[0], v.shape[1], -1) for k, v in out.trains.items()}
    trains["x_hat"] = out.x_hat
    return trains


def assert_same_spikes(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for layer in before:
        if layer == "x_hat":
            torch.testing.assert_close(after[layer], before[layer], rtol=1e-12, atol=1e-12)
            continue
        assert torch.equal(before[layer], after[layer]), f"layer {layer}: spikes differ"
        assert before[layer].sum() > 0, f"layer {layer} never fired: the comparison would be vacuous"


def lower_one(graph: IRGraph, state: dict, *passes) -> tuple[IRGraph, dict]:
    lowered = graph.copy()
    changed = [p(lowered) for p in passes]
    assert changed[0], f"{passes[0].__name__} changed nothing"
    run_flow(lowered, "compile", after="lowering")  # the lowered graph is a valid compiled graph
    return lowered, L.lower_weights(lowered, state)


@pytest.fixture
def sae(tmp_path):
    graph = compile_yaml(tmp_path, SAE_YAML)
    return graph, random_weights(graph), input_train(graph)


def test_conv_transpose_lowers_to_conv_with_identical_spikes(sae):
    graph, state, train = sae
    lowered, new_state = lower_one(graph, state, L.lower_conv_transpose)
    assert not list(lowered.nodes(ops.ConvTranspose2d))
    op = lowered.op("deconv1")
    assert isinstance(op, ops.Conv2d) and op.padding == (4 - 1 - 1, 2 - 1 - 0)
    assert lowered.meta("deconv1")["lowered_from"]["type"] == "conv_transpose2d"
    assert_same_spikes(simulate(graph, state, train), simulate(lowered, new_state, train))


def test_linear_unflatten_lowers_to_padded_conv_with_identical_spikes(sae):
    graph, state, train = sae
    lowered, new_state = lower_one(graph, state, L.lower_linear_unflatten)
    op = lowered.op("fc_dec")
    assert isinstance(op, ops.Conv2d)
    assert (op.in_channels, op.out_channels, op.kernel_size, op.padding) == (10, 4, (7, 5), (6, 4))
    # the unflatten moved in front of fc_dec and now shapes its input as 10 x 1 x 1
    assert lowered.inputs("fc_dec") == ("unflat",) and lowered.op("unflat").shape == (10, 1, 1)
    assert tuple(lowered.meta("fc_dec.lif")["shape"]) == (4, 7, 5)
    assert_same_spikes(simulate(graph, state, train), simulate(lowered, new_state, train))


def test_flatten_linear_lowers_to_full_kernel_conv_with_identical_spikes(sae):
    graph, state, train = sae
    lowered, new_state = lower_one(graph, state, L.lower_flatten_linear)
    latent, fc_dec = lowered.op("latent"), lowered.op("fc_dec")
    assert isinstance(latent, ops.Conv2d) and latent.kernel_size == (6, 7)  # conv2 gives 4 x 6 x 7
    assert isinstance(fc_dec, ops.Conv2d) and fc_dec.kernel_size == (1, 1)  # on 10 x 1 x 1
    # the flatten travelled past both linears and both neurons, to just before the unflatten
    assert lowered.inputs("unflat") == ("flat",) and lowered.inputs("flat") == ("fc_dec.lif",)
    assert_same_spikes(simulate(graph, state, train), simulate(lowered, new_state, train))


def test_fold_reshapes_removes_flatten_unflatten_pairs(sae):
    graph, state, train = sae
    lowered, new_state = lower_one(graph, state, L.lower_linear_unflatten, L.lower_flatten_linear)
    assert L.fold_reshapes(lowered)
    assert not list(lowered.nodes((ops.Flatten, ops.Unflatten)))
    assert lowered.inputs("fc_dec") == ("latent.lif",)
    assert_same_spikes(simulate(graph, state, train), simulate(lowered, new_state, train))


@pytest.mark.parametrize("spec_yaml", [SAE_YAML, MLP_YAML], ids=["sae", "mlp"])
def test_nir_flow_leaves_only_convolutions_and_neurons(tmp_path, spec_yaml):
    graph = compile_yaml(tmp_path, spec_yaml)
    state, train = random_weights(graph, gain=3.0), input_train(graph)
    lowered, new_state = L.lower_for_nir(graph, state)
    kinds = {type(lowered.op(n)) for n in lowered.order()}
    assert kinds <= {ops.Input, ops.PoissonEncode, ops.Conv2d, ops.LIF, ops.MaxCumulativeReadout, ops.Output}
    assert set(new_state) == set(state)
    assert_same_spikes(simulate(graph, state, train), simulate(lowered, new_state, train))
    assert graph.order() != lowered.order() and "flat" in graph  # the input graph is untouched


def test_nir_flow_runs_its_passes_in_order(tmp_path):
    graph = compile_yaml(tmp_path, SAE_YAML)
    report = run_flow(graph.copy(), "nir")
    assert report.ran == FLOWS["nir"] == L.NIR_FLOW
    assert report.changed[:4] == ["lower_conv_transpose", "lower_linear_unflatten", "lower_flatten_linear",
                                  "fold_reshapes"]


def test_weight_transforms_match_the_documented_formulas(sae):
    graph, state, _ = sae
    lowered, new = L.lower_for_nir(graph, state)
    w = state["deconv1.weight"].numpy()  # [in, out, kh, kw]
    np.testing.assert_array_equal(new["deconv1.weight"], w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    w = state["latent.weight"].numpy()  # [10, 4*6*7]
    np.testing.assert_array_equal(new["latent.weight"], w.reshape(10, 4, 6, 7))
    w = state["fc_dec.weight"].numpy()  # [4*7*5, 10]
    np.testing.assert_array_equal(new["fc_dec.weight"], w.reshape(4, 7, 5, 10).transpose(0, 3, 1, 2)[:, :, ::-1, ::-1])


def test_lower_weights_refuses_weights_that_were_already_lowered(sae):
    graph, state, _ = sae
    lowered, new = L.lower_for_nir(graph, state)
    with pytest.raises(ValueError, match=r"latent.weight: expected a weight of shape \[10, 168\] to lower, got \[10, 4, 6, 7\]"):
        L.lower_weights(lowered, new)


STRIDED_YAML = """
name: strided
kind: sae
latent: latent
input: {shape: [1, 9, 9]}
encoding: {type: poisson, timesteps: 6, scale: 0.5}
layers:
  - {name: conv1, type: conv2d, out_channels: 3, kernel_size: 3, stride: 2}
  - {name: flat, type: flatten}
  - {name: latent, type: linear, out_features: 10}
  - {name: fc_dec, type: linear, out_features: 48}
  - {name: unflat, type: unflatten, shape: [3, 4, 4]}
  - {name: output, type: conv_transpose2d, out_channels: 1, kernel_size: 3, stride: 2}
"""


def test_strided_conv_transpose_is_rejected_naming_the_layer(tmp_path):
    graph = compile_yaml(tmp_path, STRIDED_YAML)
    with pytest.raises(CompileError, match=r"node `output`: a transposed convolution with stride 2x2 has no NIR"):
        L.lower_for_nir(graph, random_weights(graph))


def test_conv_transpose_padding_beyond_kernel_is_rejected(tmp_path):
    graph = compile_yaml(tmp_path, SAE_YAML)
    graph.replace_op("output", graph.with_op("output", padding=(3, 0)))
    with pytest.raises(CompileError, match="padding 3x0 > kernel 3x3 - 1"):
        L.lower_conv_transpose(graph)


def test_linear_with_bias_before_unflatten_is_rejected(tmp_path):
    graph = compile_yaml(tmp_path, SAE_YAML, "layers.fc_dec.bias=true")
    with pytest.raises(CompileError, match="node `fc_dec`: a linear layer with a bias followed by an unflatten"):
        L.lower_linear_unflatten(graph)


def test_flatten_linear_keeps_the_bias_per_output(tmp_path):
    graph = compile_yaml(tmp_path, SAE_YAML, "layers.latent.bias=true")
    state = random_weights(graph)
    state["latent.bias"] = torch.linspace(-1.0, 1.0, 10, dtype=torch.float64)
    train = input_train(graph)
    lowered, new_state = L.lower_for_nir(graph, state)
    assert lowered.op("latent").bias
    assert_same_spikes(simulate(graph, state, train), simulate(lowered, new_state, train))


def test_nir_flow_error_becomes_a_located_spec_error_through_compile_spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SAE_YAML)
    with pytest.raises(UserError, match=r"spec.yaml:\d+: layers.fc_dec: a linear layer with a bias"):
        compile_spec(str(path), ["layers.fc_dec.bias=true"], flow="nir")
