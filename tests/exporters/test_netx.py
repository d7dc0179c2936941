"""lava-dl netx HDF5 export (saec/exporters/netx.py) and `saec export RUN --target loihi` (saec/run/hardware.py).

The file is read back with h5py here; that lava runs it spike for spike as saec's integer simulation
is tests/exporters/test_netx_lava.py (slow, needs the lava environment).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from saec.cli import app
from saec.compiler import ops
from saec.compiler.passes.lower_nir import lower_for_nir
from saec.compiler.pipeline import compile_spec
from saec.errors import UserError
from saec.exporters.netx import read_netx_layers, write_netx
from saec.run import artifacts as A
from saec.run.hardware import HARDWARE_EXPORTERS
from saec.run.loihi import LOIHI_GOLDEN, LOIHI_NETX, LOIHI_RECORD
from saec.runtime.model import SpikingAutoencoder
from saec.targets.profile import load_profile
from saec.targets.quantize import quantize
from tests.exporters.test_nir import TINY as TINY_NIR
from tests.exporters.test_nir import make_run as make_nir_run

runner = CliRunner()

#: An auto-encoder with every synapse kind the SAE uses (conv, flatten + linear, linear + unflatten,
#: transposed conv), a conv bias, and a decay that is not dyadic (0.9 -> dv 410).
TINY = """\
name: tinyloihi
kind: sae
latent: latent
input: {shape: [1, 8, 8]}
encoding: {timesteps: 6}
neuron: {decay: 0.9, threshold: 1.0}
layers:
  - {name: conv1, type: conv2d, out_channels: 3, kernel_size: 3, bias: true}
  - {name: flat, type: flatten}
  - {name: latent, type: linear, out_features: 7}
  - {name: fc_dec, type: linear, out_features: 108}
  - {name: unflat, type: unflatten, shape: [3, 6, 6]}
  - {name: output, type: conv_transpose2d, out_channels: 1, kernel_size: 3}
"""


def tiny_network(tmp_path: Path, text: str = TINY, gain: float = 3.0, seed: int = 0):
    """(graph, float weights): He-initialised weights times ``gain`` (so every layer fires), a bias of 0.1."""
    (tmp_path / "tiny.yaml").write_text(text)
    _, graph = compile_spec(str(tmp_path / "tiny.yaml"))
    model = SpikingAutoencoder(graph)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    weights = {k: v.numpy() * gain for k, v in model.ir_state_dict().items()}
    for key in weights:
        if key.endswith(".bias"):
            weights[key] = np.full_like(weights[key], 0.1)
    return graph, weights


def test_netx_file_has_lavas_layout_and_the_quantised_integers(tmp_path):
    graph, weights = tiny_network(tmp_path)
    qnet = quantize(graph, weights, load_profile("loihi"))
    written = write_netx(qnet, tmp_path / "net.h5")
    layers = read_netx_layers(tmp_path / "net.h5")
    assert [entry["type"] for entry in layers] == ["input", "conv", "conv", "conv", "conv"]
    assert [layer.node for layer in written.layers[1:]] == ["conv1", "latent", "fc_dec", "output"]
    assert layers[0]["shape"] == (1, 8, 8)
    assert [entry["shape"] for entry in layers[1:]] == [(3, 6, 6), (7, 1, 1), (3, 6, 6), (1, 8, 8)]
    lowered, lowered_integers = lower_for_nir(graph, {f"{n}.weight": q.weight for n, q in qnet.layers.items()})
    for entry in layers[1:]:
        q = qnet.layers[entry["saec_node"]]
        # CUBA with du = 4096 (iDecay - 1 = 4095, plus lava's offset 1) and the chip's dv for decay 0.9
        assert entry["neuron"] == {"type": "CUBA", "iDecay": 4096, "vDecay": 410, "vThMant": q.threshold,
                                   "refDelay": 1}
        assert q.decay_register == 410 and entry["decay"] == 1 - 410 / 4096
        assert entry["scale"] == q.scale and q.threshold == round(1.0 * q.scale)
        assert np.array_equal(entry["weight"], lowered_integers[f"{entry['saec_node']}.weight"])
        assert entry["weight"].min() >= -256 and entry["weight"].max() <= 254 and np.all(entry["weight"] % 2 == 0)
        assert entry["kernelSize"] == tuple(lowered.op(entry["saec_node"]).kernel_size)
        assert entry["padding"] == tuple(lowered.op(entry["saec_node"]).padding)
    # the transposed conv is the flipped-kernel conv with padding k - 1 - p; the linear + unflatten a full conv
    assert layers[4]["padding"] == (2, 2) and layers[3]["padding"] == (5, 5) and layers[3]["kernelSize"] == (6, 6)
    # the bias as lava's mantissa (netx uses exponent 6): round(0.1 * scale)
    assert layers[1]["bias"].tolist() == [round(0.1 * qnet.layers["conv1"].scale)] * 3
    assert qnet.layers["conv1"].bias.tolist() == [round(0.1 * qnet.layers["conv1"].scale) << 6] * 3
    assert layers[2]["bias"] is None
    with h5py.File(tmp_path / "net.h5") as f:  # strings as slayer writes them (netx decodes S10 arrays)
        assert f["layer/1/type"].dtype == np.dtype("S10") and f["layer/1/neuron/type"][0] == b"CUBA"


def test_netx_refuses_pooling_naming_the_layer(tmp_path):
    pooled = """\
name: pooled
kind: sae
latent: conv2
input: {shape: [1, 8, 8]}
encoding: {timesteps: 4}
neuron: {decay: 0.9}
layers:
  - {name: conv1, type: conv2d, out_channels: 2, kernel_size: 3, padding: 1}
  - {name: pool, type: sum_pool2d, kernel_size: 2}
  - {name: conv2, type: conv2d, out_channels: 2, kernel_size: 3, padding: 1}
  - {name: output, type: conv2d, out_channels: 1, kernel_size: 5, padding: 4}
"""
    graph, weights = tiny_network(tmp_path, pooled)
    qnet = quantize(graph, weights, load_profile("loihi"))
    with pytest.raises(UserError) as info:
        write_netx(qnet, tmp_path / "net.h5")
    assert info.value.path == "layers.pool"
    assert info.value.message == ("netx export does not support `sum_pool2d`: lava-dl 0.6.0 netx cannot load pool "
                                  "layers (lava/lib/dl/netx/hdf5.py raises NotImplementedError for 'pool')")
    assert not (tmp_path / "net.h5").exists()


def test_netx_refuses_a_network_quantised_for_another_chip(tmp_path):
    graph, weights = tiny_network(tmp_path, TINY.replace("{decay: 0.9, threshold: 1.0}", "{decay: 1.0}")
                                  .replace(", bias: true", ""))
    qnet = quantize(graph, weights, load_profile("loihi"))
    qnet.target = "speck"
    with pytest.raises(UserError, match="netx files are for loihi; this network is quantised for speck"):
        write_netx(qnet, tmp_path / "net.h5")


# ---------------------------------------------------------------- saec export RUN --target loihi
TINY28 = TINY_NIR  # the 28 x 28 network of the NIR tests (conv, flatten, linear, unflatten, conv-transpose)


def make_run(folder: Path, spec_text: str = TINY28, *, gain: float = 3.0, seed: int = 0) -> Path:
    """A run folder as `saec train` leaves it, He weights times gain (tests.exporters.test_nir.make_run)."""
    return make_nir_run(folder, spec_text, gain=gain, seed=seed)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("loihi") / "run")
    result = runner.invoke(app, ["export", str(run), "--target", "loihi", "--examples", "3", "--limit", "3"])
    return run, result


def test_export_target_loihi_writes_netx_golden_and_record(exported):
    run, result = exported
    assert result.exit_code == 0, result.output
    assert f"lava-dl netx network written to {run / 'export' / LOIHI_NETX}" in result.output
    record = json.loads((run / "export" / LOIHI_RECORD).read_text())
    assert record["target"] == "loihi" and record["images"] == 3 and record["timesteps"] == 8
    assert [row["layer"] for row in record["layers"]] == ["conv1", "latent", "fc_dec", "output"]
    assert all(row["dv"] == 410 for row in record["layers"])
    assert record["rec_loss_float"] > 0 and record["rec_loss_quantized"] > 0
    assert f"float {record['rec_loss_float']:.3f}, quantised {record['rec_loss_quantized']:.3f}" in result.output
    golden = np.load(run / "export" / LOIHI_GOLDEN)
    assert golden["input"].shape == (8, 3, 1, 28, 28)
    for row in record["layers"]:  # the golden spikes are the integer simulation's, which the record counts
        assert int(golden[row["layer"]].sum()) == row["spikes_quantized"] > 0
    layers = read_netx_layers(run / "export" / LOIHI_NETX)
    assert [entry.get("saec_layer") for entry in layers] == [None, "conv1", "latent", "fc_dec", "output"]


def test_export_target_loihi_l_rec_recomputed_from_the_golden_input(exported):
    """The recorded quantised L_rec is the integer simulation's reconstruction of the recorded input."""
    run, _ = exported
    from saec.run.report import validation_set
    from saec.run.folder import load_model

    spec, model = load_model(run)
    qnet = quantize(model.graph, {k: v.numpy() for k, v in model.ir_state_dict().items()}, load_profile("loihi"))
    golden = np.load(run / "export" / LOIHI_GOLDEN)
    _, x_hat = qnet.reconstruct(golden["input"])
    x = validation_set(spec, limit=3).images.numpy().astype(np.float64)
    record = json.loads((run / "export" / LOIHI_RECORD).read_text())
    assert ((x_hat - x) ** 2).reshape(3, -1).sum(1).mean() == pytest.approx(record["rec_loss_quantized"], rel=1e-12)


def test_export_hardware_target_without_exporter_is_one_line(exported, monkeypatch):
    """A chip (a shipped profile) with no exporter registered: one line naming those that have one."""
    run, _ = exported
    from saec.run import hardware

    monkeypatch.delitem(hardware.HARDWARE_EXPORTERS, "xylo")
    result = runner.invoke(app, ["export", str(run), "--target", "xylo"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: --target: no exporter for hardware target 'xylo' yet (hardware exporters: "
        f"{', '.join(sorted(hardware.HARDWARE_EXPORTERS))})"]


def test_export_target_loihi_refuses_a_format_approximate_and_a_bad_limit(exported):
    run, _ = exported
    result = runner.invoke(app, ["export", str(run), "--target", "loihi", "--format", "onnx"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --target: --target loihi writes the chip's own artifact; drop --format"
    result = runner.invoke(app, ["export", str(run), "--target", "loihi", "--approximate"])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: --target: --target loihi writes the chip's own artifact; drop "
                                     "--approximate")
    result = runner.invoke(app, ["export", str(run), "--format", "nir", "--limit", "3"])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: --limit: --limit applies to a chip target "
                                     f"({', '.join(HARDWARE_EXPORTERS)}) only")
    result = runner.invoke(app, ["export", str(run), "--target", "loihi", "--limit", "0"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --limit: must be a positive number of images, got 0"


def test_export_target_loihi_refuses_a_network_that_does_not_fit(tmp_path):
    run = make_run(tmp_path / "run", TINY28.replace("reset: zero", "reset: subtract"))
    result = runner.invoke(app, ["export", str(run), "--target", "loihi"])
    assert result.exit_code == 2
    line = result.output.strip()
    assert line.startswith(f"error: {run / A.SPEC}: layers.conv1: does not fit loihi: ") and "reset" in line
    assert not (run / "export" / LOIHI_NETX).exists()


def test_export_target_loihi_refuses_zero_examples(exported):
    run, _ = exported
    result = runner.invoke(app, ["export", str(run), "--target", "loihi", "--examples", "0"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --examples: golden data needs at least 1 example, got 0"


def test_export_target_loihi_golden_first_images_of_the_measurement(exported, tmp_path):
    """--examples below --limit: the golden file holds the first images' spikes of the same encoding."""
    run, _ = exported
    result = runner.invoke(app, ["export", str(run), "--target", "loihi", "--examples", "2", "--limit", "3"])
    assert result.exit_code == 0, result.output
    golden = np.load(run / "export" / LOIHI_GOLDEN)
    assert golden["input"].shape == (8, 2, 1, 28, 28)
    record = json.loads((run / "export" / LOIHI_RECORD).read_text())
    assert record["images"] == 3 and record["golden_examples"] == 2
    too_many = runner.invoke(app, ["export", str(run), "--target", "loihi", "--examples", "4", "--limit", "3"])
    assert too_many.exit_code == 2
    assert too_many.output.strip() == "error: --examples: asks for 4 golden examples, the validation set has 3"
