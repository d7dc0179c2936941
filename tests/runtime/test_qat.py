"""Quantisation-aware execution (saec/runtime/qat.py) and `saec train --target` (saec/run/hardware.py).

The quantised forward must be the chip's network: its spikes equal saec's integer simulation of the
same weights quantised for Loihi (saec/targets/quantize.py), in every layer, and the gradient must
reach the float weights (straight through the rounding).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import saec
from saec.cli import app
from saec.compiler.pipeline import compile_spec
from saec.errors import UserError
from saec.run.hardware import train_for_target
from saec.run.loihi import LOIHI_RECORD
from saec.runtime.execution import Execution
from saec.runtime.model import SpikingAutoencoder
from saec.runtime.qat import TARGET_ATTR
from saec.targets.profile import load_profile
from saec.targets.quantize import quantize
from saec.run.folder import load_model
from tests.exporters.test_netx import TINY, TINY28

LAYERS = ("conv1", "latent", "fc_dec", "output")
runner = CliRunner()


def _graphs(tmp_path: Path, decay: str):
    (tmp_path / "t.yaml").write_text(TINY.replace("decay: 0.9", f"decay: {decay}"))
    _, graph = compile_spec(str(tmp_path / "t.yaml"))
    return graph, train_for_target(graph, "loihi")


def _spikes(batch: int = 4, steps: int = 6) -> np.ndarray:
    return (np.random.default_rng(1).random((steps, batch, 1, 8, 8)) < 0.5).astype(np.float32)


def _forward(model: SpikingAutoencoder, spikes: np.ndarray):
    with torch.no_grad():
        return model(torch.zeros(spikes.shape[1], 1, 8, 8), encoded=torch.from_numpy(spikes), record=frozenset(LAYERS))


def _differing(out, sim) -> dict[str, int]:
    return {layer: int((out.trains[layer].numpy() != sim[layer].reshape(out.trains[layer].shape)).sum())
            for layer in LAYERS}


@pytest.mark.parametrize("decay", ["0.5", "0.99"])
@pytest.mark.parametrize("execution", ["fast", "reference"])
def test_quantised_forward_spikes_as_the_integer_simulation(tmp_path, decay, execution):
    """He weights x 3 (not dyadic), a conv bias, decay 0.5 (exact) and 0.99 (the chip runs 1 - 41/4096)."""
    graph, qat_graph = _graphs(tmp_path, decay)
    model = SpikingAutoencoder(qat_graph)
    model.reset_parameters(torch.Generator().manual_seed(0))
    model.execution = Execution(path=execution)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1).mul_(3) if p.dim() == 1 else p.mul_(3)
    weights = {k: v.numpy() for k, v in model.ir_state_dict().items()}
    qnet = quantize(graph, weights, load_profile("loihi"))
    spikes = _spikes()
    out = _forward(model, spikes)
    sim, x_hat = qnet.reconstruct(spikes)
    assert _differing(out, sim) == dict.fromkeys(LAYERS, 0)
    assert all(sim[layer].sum() > 0 for layer in LAYERS)
    assert np.allclose(out.x_hat.numpy(), x_hat, rtol=1e-5, atol=1e-6)
    stepwise = model.forward_stepwise(torch.zeros(4, 1, 8, 8), torch.from_numpy(spikes))
    assert all(np.array_equal(stepwise[layer].numpy(), out.trains[layer].numpy()) for layer in LAYERS)
    # the same float weights without quantisation-aware execution spike elsewhere: the check can fail
    plain = SpikingAutoencoder(graph)
    plain.load_ir_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    assert sum(_differing(_forward(plain, spikes), sim).values()) > 0


def test_gradient_passes_straight_through_to_the_float_weights(tmp_path):
    """d L / d w of the quantised forward equals d L / d w_q of the float network holding w_q."""
    graph, qat_graph = _graphs(tmp_path, "0.5")
    model = SpikingAutoencoder(qat_graph)
    model.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    qnet = quantize(graph, {k: v.numpy() for k, v in model.ir_state_dict().items()}, load_profile("loihi"))
    reference = SpikingAutoencoder(qnet.chip_graph())  # the chip's decay and thresholds, float weights w_q
    reference.load_ir_state_dict({k: torch.from_numpy(v).float() for k, v in qnet.dequantized_weights().items()})
    spikes = torch.from_numpy(_spikes())
    grads = []
    for net in (model, reference):
        out = net(torch.zeros(4, 1, 8, 8), encoded=spikes)
        out.x_hat.square().sum().backward()
        grads.append({k: p.grad.clone() for k, p in net.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        assert torch.allclose(grads[0][key], grads[1][key], rtol=1e-5, atol=1e-6), key
    assert any(g.abs().sum() > 0 for g in grads[0].values())


def test_qat_trained_model_is_its_integer_simulation(tmp_path):
    """`saec.train(..., target="loihi")` for a few steps: the run records the target, its float forward
    (loaded from the folder) is the integer simulation spike for spike on validation images, and
    `saec export --target loihi` measures no difference at all (L_rec and every spike position).

    Decay 0.5 and T = 6 keep lava's membrane decay exact (v (4096 - dv) >> 12 drops no bit of a
    multiple of 2**6 within 6 halvings); with other decays the chip truncates the decayed membrane
    toward zero each step, which the float forward does not, and a neuron within that rounding of
    its threshold can differ (decay 0.9 here: 1 position of 18,816 in the output layer)."""
    spec = yaml.safe_load(TINY28.replace("timesteps: 8", "timesteps: 6").replace("decay: 0.9", "decay: 0.5"))
    compiled = saec.compile(spec, overrides={"training.max_steps": 3, "training.epochs": 1,
                                             "training.batch_size": 16, "data.validation.limit": 8})
    run = saec.train(compiled, tmp_path / "run", device="cpu", target="loihi", log=lambda line: None)
    assert json.loads((run.path / "ir.json").read_text())["attrs"][TARGET_ATTR] == "loihi"
    _, model = load_model(run.path)
    assert model.quantizer is not None and model.quantizer.target == "loihi"
    result = runner.invoke(app, ["export", str(run.path), "--target", "loihi", "--examples", "4", "--limit", "4"])
    assert result.exit_code == 0, result.output
    record = json.loads((run.path / "export" / LOIHI_RECORD).read_text())
    assert all(row["positions_differing"] == 0 for row in record["layers"]), record["layers"]
    assert sum(row["spikes_quantized"] for row in record["layers"]) > 0
    assert record["rec_loss_float"] == pytest.approx(record["rec_loss_quantized"], rel=1e-5)
    # and directly: the trained weights' integer simulation vs the loaded model on fresh spikes
    qnet = quantize(model.graph, {k: v.numpy() for k, v in model.ir_state_dict().items()}, load_profile("loihi"))
    spikes = (np.random.default_rng(2).random((6, 3, 1, 28, 28)) < 0.3).astype(np.float32)
    with torch.no_grad():
        out = model(torch.zeros(3, 1, 28, 28), encoded=torch.from_numpy(spikes), record=frozenset(LAYERS))
    sim = qnet.simulate(spikes)
    assert _differing(out, sim) == dict.fromkeys(LAYERS, 0)


def test_speck_quantised_forward_spikes_as_the_integer_simulation(tmp_path):
    """Speck: integrate-and-fire, sum pooling, 8-bit weights at one power-of-two scale per layer; He
    weights x 3 (not dyadic). The quantisation-aware forward is saec's DYNAP-CNN integer simulation."""
    from tests.exporters.test_speck import TINY_SPECK

    layers = ("conv1", "latent", "dec1", "output")
    (tmp_path / "s.yaml").write_text(TINY_SPECK)
    _, graph = compile_spec(str(tmp_path / "s.yaml"))
    model = SpikingAutoencoder(train_for_target(graph, "speck"))
    model.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    weights = {k: v.numpy() for k, v in model.ir_state_dict().items()}
    qnet = quantize(graph, weights, load_profile("speck"))
    spikes = (np.random.default_rng(2).random((4, 3, 1, 28, 28)) < 0.5).astype(np.float32)

    def differing(m: SpikingAutoencoder) -> dict[str, int]:
        with torch.no_grad():
            out = m(torch.zeros(3, 1, 28, 28), encoded=torch.from_numpy(spikes), record=frozenset(layers))
        return {layer: int((out.trains[layer].numpy() != sim[layer].reshape(out.trains[layer].shape)).sum())
                for layer in layers}

    sim, _ = qnet.reconstruct(spikes)
    assert all(sim[layer].sum() > 0 for layer in layers)
    assert differing(model) == dict.fromkeys(layers, 0)
    plain = SpikingAutoencoder(graph)  # the same float weights without quantisation: the check can fail
    plain.load_ir_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    assert sum(differing(plain).values()) > 0


def test_train_target_without_a_quantiser_for_training_is_one_line(tmp_path):
    (tmp_path / "t.yaml").write_text(TINY28)
    result = runner.invoke(app, ["train", str(tmp_path / "t.yaml"), "--target", "xylo", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "error: --target: quantisation-aware training has no quantiser for target 'xylo' yet (targets with one: "
        "loihi, speck)")
    assert not (tmp_path / "r").exists()


def test_train_target_refuses_a_network_that_does_not_fit_at_its_line(tmp_path):
    (tmp_path / "t.yaml").write_text(TINY28.replace("reset: zero", "reset: subtract"))
    result = runner.invoke(app, ["train", str(tmp_path / "t.yaml"), "--target", "loihi", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"error: {tmp_path / 't.yaml'}:8: layers.conv1: does not fit loihi: reset 'subtract'")
    assert line.endswith("(and 3 more problems)")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("where", ["file", "--set"])
def test_train_target_refuses_bf16_at_its_line(tmp_path, where):
    """The quantised forward must be the chip's integer network; bf16 synapses would round its currents."""
    text = TINY28 + ("training: {precision: bf16}\n" if where == "file" else "")
    (tmp_path / "t.yaml").write_text(text)
    extra = ["--set", "training.precision=bf16"] if where == "--set" else []
    result = runner.invoke(app, ["train", str(tmp_path / "t.yaml"), "--target", "loihi", *extra,
                                 "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    location = f"{tmp_path / 't.yaml'}:{len(text.splitlines())}" if where == "file" else "--set"
    assert result.output.strip().splitlines()[-1] == (
        f"error: {location}: training.precision: bf16 cannot be combined with quantisation-aware training "
        f"(--target loihi): the forward must equal the chip's integer arithmetic, which bf16 synapses round away; "
        f"use training.precision: fp32, or train without --target")
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()
    # without a spec to point into, the error names the field
    _, graph = compile_spec(str(tmp_path / "t.yaml"), extra[1:])
    with pytest.raises(UserError, match=r"^training\.precision: bf16 cannot be combined"):
        train_for_target(graph, "speck")


def test_resume_takes_no_target(tmp_path):
    result = runner.invoke(app, ["train", "--resume", str(tmp_path), "--target", "loihi"])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: --resume: --resume continues a run as it was specified; give no SPEC, "
                                     "--set or --target with it")


def test_unknown_target_in_the_graph_names_it(tmp_path):
    graph, _ = _graphs(tmp_path, "0.5")
    graph.attrs[TARGET_ATTR] = "xylo"  # a profile whose quantiser training does not have
    with pytest.raises(UserError, match="quantisation-aware training has no quantiser for target 'xylo' yet"):
        SpikingAutoencoder(graph)
