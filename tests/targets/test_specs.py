"""The shipped target specs (specs/targets/): each fits its target, and the Speck one runs in saec's runtime."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from saec.cli import app
from saec.compiler import ops
from saec.compiler.pipeline import compile_spec
from saec.runtime.model import SpikingAutoencoder
from saec.training.objective import objective
from saec.errors import UserError
from tests.conftest import SPECS

runner = CliRunner()
TARGET_SPECS = {"loihi": "loihi_sae.yaml", "speck": "speck_ae.yaml", "xylo": "xylo_dense.yaml"}


@pytest.mark.parametrize("target", sorted(TARGET_SPECS))
def test_each_target_spec_compiles_clean_for_its_target(target):
    result = runner.invoke(app, ["compile", str(SPECS / "targets" / TARGET_SPECS[target]), "--target", target])
    assert result.exit_code == 0, result.output
    assert f"{target}: fits" in result.stdout


def test_loihi_spec_trains_with_the_chips_decay():
    _, graph = compile_spec(str(SPECS / "targets" / "loihi_sae.yaml"))
    decays = {graph.op(n).decay for n in graph.nodes(ops.LIF)}
    assert decays == {1 - 41 / 4096}  # what dv = round(4096 * (1 - 0.99)) = 41 runs on the chip


def test_speck_spec_has_pooling_and_a_4x4_latent():
    _, graph = compile_spec(str(SPECS / "targets" / "speck_ae.yaml"))
    pools = list(graph.nodes(ops.SumPool2d))
    assert pools == ["pool1", "pool2"]
    assert all(graph.op(p).stride == graph.op(p).kernel_size == (2, 2) for p in pools)
    assert tuple(graph.meta("pool2")["shape"]) == (16, 4, 4)
    assert tuple(graph.meta("latent.lif")["shape"]) == (4, 4, 4)
    assert {graph.op(n).decay for n in graph.nodes(ops.LIF)} == {1.0}
    # a pool's synapses: each output sums a 2x2 window of its own channel
    assert graph.meta("pool1")["synapses"] == 8 * 12 * 12 * 4


def test_speck_spec_runs_layerwise_and_stepwise_alike_and_trains():
    _, graph = compile_spec(str(SPECS / "targets" / "speck_ae.yaml"), ["encoding.timesteps=4"])
    model = SpikingAutoencoder(graph)
    model.reset_parameters(torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((2, 1, 28, 28), generator=gen)
    layers = {"conv1", "conv2", "latent", "dec1", "dec2", "dec3", "output"}
    with torch.no_grad():
        out = model(x, generator=gen, record=frozenset({"_encode", *layers}))
    stepwise = model.forward_stepwise(x, out.encoded)
    for layer in layers:
        assert torch.equal(stepwise[layer], out.trains[layer]), layer
    assert float(out.trains["conv2"].sum()) > 0  # spikes reach past the first pooling
    model.zero_grad()
    loss = objective(model, model(x, encoded=out.encoded), x)[0]
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_sum_pool_layer_rules_are_located(tmp_path):
    spec = tmp_path / "pool.yaml"
    text = (SPECS / "targets" / "speck_ae.yaml").read_text()
    spec.write_text(text.replace("{name: pool1, type: sum_pool2d, kernel_size: 2}",
                                 "{name: pool1, type: sum_pool2d, kernel_size: 2, spiking: true}"))
    with pytest.raises(UserError) as err:
        compile_spec(str(spec))
    assert err.value.path == "layers.pool1.spiking" and "unknown field 'spiking'" in str(err.value)
    spec.write_text(text.replace("a1: {weight: 0.01, layers: [latent]}", "a1: {weight: 0.01, layers: [pool2]}"))
    with pytest.raises(UserError) as err:
        compile_spec(str(spec))
    assert err.value.path == "regularizers.a1.layers[0]"
    assert "layer 'pool2' has no spiking neurons to regularise" in str(err.value)


@pytest.mark.parametrize("target", ["loihi", "speck"])
def test_target_specs_export_to_nir_exactly(target):
    """The vendors' importers read NIR: neither spec uses semantics NIR cannot carry. (Not xylo_dense: Xylo
    resets by subtraction, which NIR's neurons cannot say; its export writes the CubaLIF graph rockpool
    reads, whose neurons subtract.)"""
    from saec.compiler.passes.lower_nir import lower_for_nir
    from saec.exporters.nir import ir_to_nir, nir_blockers

    _, graph = compile_spec(str(SPECS / "targets" / TARGET_SPECS[target]), ["encoding.timesteps=2"])
    assert nir_blockers(graph) == []
    model = SpikingAutoencoder(graph)
    model.reset_parameters(torch.Generator().manual_seed(0))
    lowered, weights = lower_for_nir(graph, {k: v.numpy() for k, v in model.ir_state_dict().items()})
    kinds = {type(node).__name__ for node in ir_to_nir(lowered, weights).nodes.values()}
    assert kinds == ({"Input", "Conv2d", "IF", "SumPool2d", "Output"} if target == "speck"
                     else {"Input", "Conv2d", "LIF", "Output"})
