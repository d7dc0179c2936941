"""Quantisation to Loihi and Speck formats, and the integer simulation in each chip's arithmetic,
checked spike for spike against saec's float runtime on dyadic networks (where quantising is exact)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from saec.compiler import ops
from saec.compiler.pipeline import compile_spec
from saec.runtime.model import SpikingAutoencoder
from saec.errors import UserError
from saec.targets.profile import load_profile
from saec.targets.quantize import (LOIHI_UV_LIMIT, loihi_cuba_step, loihi_decay, quantize, speck_iaf_step)
from tests.conftest import SPECS

PROFILES = Path(__file__).resolve().parents[2] / "saec" / "targets" / "profiles"

T = 6
DENSE = """\
name: q
kind: sae
latent: latent
input: {shape: [1, 6, 6]}
encoding: {timesteps: 6}
neuron: NEURON
layers:
  - {name: conv1, type: conv2d, out_channels: 3, kernel_size: 3}
  - {name: flat, type: flatten}
  - {name: latent, type: linear, out_features: 5}
  - {name: fc_dec, type: linear, out_features: 48}
  - {name: unflat, type: unflatten, shape: [3, 4, 4]}
  - {name: output, type: conv_transpose2d, out_channels: 1, kernel_size: 3}
"""
POOLED = """\
name: qp
kind: sae
latent: conv2
input: {shape: [1, 8, 8]}
encoding: {timesteps: 6}
neuron: NEURON
layers:
  - {name: conv1, type: conv2d, out_channels: 3, kernel_size: 3, padding: 1}
  - {name: pool, type: sum_pool2d, kernel_size: 2}
  - {name: conv2, type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}
  - {name: output, type: conv2d, out_channels: 1, kernel_size: 5, padding: 4}
"""


def _dyadic_model(tmp_path: Path, text: str, neuron: str, seed: int = 0):
    """A compiled graph and weights that are multiples of 1/8 in [-1, 1] (max |w| = 1 in each layer)."""
    path = tmp_path / "q.yaml"
    path.write_text(text.replace("NEURON", neuron))
    _, graph = compile_spec(str(path))
    rng = np.random.default_rng(seed)
    weights = {}
    for node in graph.nodes((ops.Conv2d, ops.ConvTranspose2d, ops.Linear)):
        model_w = SpikingAutoencoder(graph).ir_state_dict()[f"{node}.weight"]
        w = rng.integers(-8, 9, size=tuple(model_w.shape)) / 8.0
        w.flat[0] = 1.0  # the layer's largest magnitude, so the scale is the same in every draw
        weights[f"{node}.weight"] = w
    return graph, weights


def _float_spikes(qnet, encoded: np.ndarray) -> dict[str, np.ndarray]:
    """saec's float runtime on the chip's network: the chip's decays and thresholds, dequantised weights."""
    model = SpikingAutoencoder(qnet.chip_graph())
    model.load_ir_state_dict({k: torch.from_numpy(v).float() for k, v in qnet.dequantized_weights().items()})
    layers = {qnet.graph.meta(q.neuron)["layer"] for q in qnet.layers.values()}
    x = torch.zeros((encoded.shape[1], *encoded.shape[2:]))
    with torch.no_grad():
        out = model(x, encoded=torch.from_numpy(encoded).float(), record=frozenset(layers))
    return {layer: out.trains[layer].numpy() for layer in layers}


def _encoded(shape, seed: int = 1, p: float = 0.5) -> np.ndarray:
    return (np.random.default_rng(seed).random((T, 3, *shape)) < p).astype(np.float64)


@pytest.mark.parametrize("text", [DENSE, POOLED], ids=["dense", "pooled"])
def test_loihi_integer_simulation_equals_the_float_runtime_on_dyadic_weights(tmp_path, text):
    graph, weights = _dyadic_model(tmp_path, text, "{decay: 0.5, threshold: 1.0}")
    qnet = quantize(graph, weights, load_profile("loihi"))
    for q in qnet.layers.values():
        assert q.scale == 128 and q.threshold == 128 and q.decay_register == 2048 and q.decay == 0.5
        assert np.array_equal(q.weight, weights[f"{q.node}.weight"] * 128)  # exact: multiples of 16
    encoded = _encoded(tuple(graph.meta("_input")["shape"]))
    chip = qnet.simulate(encoded)
    ref = _float_spikes(qnet, encoded)
    for layer, train in ref.items():
        assert np.array_equal(chip[layer], train), layer
    active = ("conv1", graph.attrs["latent"])
    assert all(chip[layer].sum() > 0 for layer in active), {k: int(v.sum()) for k, v in chip.items()}


@pytest.mark.parametrize("neuron", ["{decay: 1.0, reset: subtract, spike_when: ge}", "{decay: 1.0, reset: zero}"])
def test_speck_integer_simulation_equals_the_float_runtime_on_dyadic_weights(tmp_path, neuron):
    graph, weights = _dyadic_model(tmp_path, POOLED, neuron)  # Speck has no reshape: no dense decoder
    qnet = quantize(graph, weights, load_profile("speck"))
    gt = "spike_when" not in neuron
    for q in qnet.layers.values():
        assert q.scale == 64 and q.spike_at == 64 + gt and q.float_threshold == 1.0
    encoded = _encoded(tuple(graph.meta("_input")["shape"]))
    chip = qnet.simulate(encoded)
    ref = _float_spikes(qnet, encoded)
    for layer, train in ref.items():
        assert np.array_equal(chip[layer], train), layer
    assert chip["conv1"].sum() > 0


def test_loihi_quantises_the_decay_to_the_chips(tmp_path):
    graph, weights = _dyadic_model(tmp_path, DENSE, "{decay: 0.99}")
    qnet = quantize(graph, weights, load_profile("loihi"))
    for q in qnet.layers.values():
        assert q.decay_register == 41 and q.decay == 1 - 41 / 4096
    chip = qnet.chip_graph()
    assert {chip.op(n).decay for n in chip.nodes(ops.LIF)} == {1 - 41 / 4096}
    assert {graph.op(n).decay for n in graph.nodes(ops.LIF)} == {0.99}  # the input graph is left alone


def test_loihi_weights_are_even_8_bit_and_round_to_the_nearest(tmp_path):
    graph, weights = _dyadic_model(tmp_path, DENSE, "{decay: 0.5}")
    weights["conv1.weight"] = weights["conv1.weight"] * 0.3  # max 0.3: scale 2**floor(log2(254 / 0.3)) = 512
    qnet = quantize(graph, weights, load_profile("loihi"))
    q = qnet.layers["conv1"]
    assert q.scale == 512 and q.threshold == 512
    assert np.all(q.weight % 2 == 0) and q.weight.min() >= -256 and q.weight.max() <= 254
    assert np.abs(q.weight - weights["conv1.weight"] * 512).max() <= 1.0  # nearest even integer


def test_loihi_arithmetic_follows_lavas_fixed_point_model():
    # decays round toward zero (sign * (|x * (4096 - d)| >> 12)), as lava/proc/lif/models.py does
    assert loihi_decay(np.array([5, -5, 4095, -4095]), 2048).tolist() == [2, -2, 2047, -2047]
    assert loihi_decay(np.array([100]), 41).tolist() == [98]  # 100 * 4055 / 4096 = 98.99...
    from saec.targets.quantize import QuantizedLayer
    q = QuantizedLayer(node="x", neuron="x.lif", weight=np.zeros(1, dtype=np.int64), bias=None, scale=1.0,
                       threshold=10, decay=0.5, decay_register=2048, reset="zero", spike_at=(10 << 6) + 1,
                       float_threshold=10.0)
    # v > vth << 6 spikes and resets to 0; exactly vth << 6 does not spike
    v, fired = loihi_cuba_step(np.zeros((1, 2), dtype=np.int64), np.array([[10, 11]]), q)
    assert fired.tolist() == [[False, True]] and v.tolist() == [[640, 0]]
    # u wraps as lava wraps it: above 2**23 by 2**24; exactly 2**23 stays (lava's test is strict)
    v, _ = loihi_cuba_step(np.zeros((1, 2), dtype=np.int64), np.array([[2 ** 17 + 1, 2 ** 17]]),
                           QuantizedLayer(**{**q.__dict__, "spike_at": 2 ** 30}))
    assert v.tolist() == [[(2 ** 23 + 64) - 2 ** 24, 2 ** 23 - 1]]  # the second: 2**23, then v's clip
    # v saturates at +-(2**23 - 1)
    v, _ = loihi_cuba_step(np.array([[-(LOIHI_UV_LIMIT - 1)]]), np.array([[-32768]]),
                           QuantizedLayer(**{**q.__dict__, "decay_register": 0}))
    assert v.tolist() == [[-(LOIHI_UV_LIMIT - 1)]]


def test_speck_neuron_subtracts_its_register_and_clamps_at_minus_2_to_15():
    from saec.targets.quantize import QuantizedLayer
    q = QuantizedLayer(node="x", neuron="x.lif", weight=np.zeros(1, dtype=np.int64), bias=None, scale=1.0,
                       threshold=64, decay=1.0, decay_register=None, reset="subtract", spike_at=64,
                       float_threshold=64.0)
    v, fired = speck_iaf_step(np.array([[60, 0]]), np.array([[10, -40000]]), q)
    assert fired.tolist() == [[True, False]] and v.tolist() == [[6, -2 ** 15]]


def test_quantize_refuses_a_network_that_does_not_fit_and_a_target_without_quantiser(tmp_path):
    graph, weights = _dyadic_model(tmp_path, DENSE, "{decay: 0.5}")
    with pytest.raises(UserError) as err:
        quantize(graph, weights, load_profile("speck"))
    assert str(err.value).startswith("layers.conv1: does not fit speck: LIF leak (decay 0.5) is not supported")
    # a profile that names no quantiser (xylo's, before Xylo got one, without its `quantizer:` line)
    text = (Path(PROFILES) / "xylo.yaml").read_text().replace("name: xylo", "name: xylo_noq")
    (tmp_path / "noq.yaml").write_text("\n".join(l for l in text.splitlines() if not l.startswith("quantizer:")))
    with pytest.raises(UserError) as err:
        quantize(graph, weights, load_profile(tmp_path / "noq.yaml"))
    assert str(err.value) == ("--target: no quantiser for target 'xylo_noq' yet "
                              "(quantisers: loihi_cuba, dynapcnn_iaf, xylo_iaf)")


def test_the_shipped_target_specs_quantise():
    for name, target in (("loihi_sae", "loihi"), ("speck_ae", "speck")):
        _, graph = compile_spec(str(SPECS / "targets" / f"{name}.yaml"), ["encoding.timesteps=2"])
        model = SpikingAutoencoder(graph)
        model.reset_parameters(torch.Generator().manual_seed(0))
        weights = {k: v.numpy() for k, v in model.ir_state_dict().items()}
        qnet = quantize(graph, weights, load_profile(target))
        assert set(qnet.layers) == {graph.inputs(n)[0] for n in graph.nodes(ops.LIF)}


def test_loihi_tiny_weights_keep_the_threshold_in_17_bits(tmp_path):
    graph, weights = _dyadic_model(tmp_path, DENSE, "{decay: 0.5}")
    weights["conv1.weight"] = weights["conv1.weight"] / 2 ** 12  # 254 / 2**-12 wants a scale of 2**19
    q = quantize(graph, weights, load_profile("loihi")).layers["conv1"]
    assert q.scale == 2 ** 16 and q.threshold == 2 ** 16 <= 2 ** 17 - 1
    assert np.abs(q.weight).max() == 16  # 2**-12 * 2**16: precision lost, range kept


@pytest.mark.parametrize("target", ["loihi", "speck"])
def test_quantised_reconstruction_equals_the_float_runtimes(tmp_path, target):
    neuron = "{decay: 0.5}" if target == "loihi" else "{decay: 1.0, reset: subtract, spike_when: ge}"
    graph, weights = _dyadic_model(tmp_path, POOLED, neuron)
    qnet = quantize(graph, weights, load_profile(target))
    encoded = _encoded(tuple(graph.meta("_input")["shape"]))
    _, x_hat = qnet.reconstruct(encoded)
    model = SpikingAutoencoder(qnet.chip_graph())
    model.load_ir_state_dict({k: torch.from_numpy(v).float() for k, v in qnet.dequantized_weights().items()})
    with torch.no_grad():
        out = model(torch.zeros((3, 1, 8, 8)), encoded=torch.from_numpy(encoded).float())
    assert x_hat.shape == (3, 1, 8, 8) and x_hat.max() > 0
    # U is exact in both (dyadic); the division by T * scale = 1.2 rounds in float32 there
    np.testing.assert_allclose(x_hat, out.x_hat.numpy(), rtol=2e-7, atol=0)


def test_the_targets_package_does_not_import_torch():
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("import sys; import saec.targets.quantize, saec.targets.fit, saec.targets.profile; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"
