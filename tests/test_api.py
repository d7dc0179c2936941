"""The Python API (saec.api, re-exported from saec): compile, train, load, module, evaluate, export;
and the README's "Python API" snippet, executed as written."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import saec
from saec.runtime.module import AutoencoderModule, AutoencoderOutput
from saec.errors import UserError
from tests.conftest import REPO, SPECS

TINY = {"data.dataset": "mnist5k", "encoding.timesteps": 2, "training.epochs": 1, "training.max_steps": 2,
        "training.batch_size": 8, "data.train_limit": 32, "data.validation.limit": 16}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> saec.Run:
    out = tmp_path_factory.mktemp("api") / "run"
    return saec.train(saec.compile(SPECS / "sae_dense.yaml", TINY), out, device="cpu", log=lambda line: None)


def test_compile_from_a_file_and_from_a_dict_agree():
    import yaml

    from_file = saec.compile(SPECS / "sae_dense.yaml", ["layers.latent.out_features=10"])
    as_dict = yaml.safe_load((SPECS / "sae_dense.yaml").read_text())
    from_dict = saec.compile(as_dict, {"layers.latent.out_features": 10})
    assert from_file.spec == from_dict.spec
    assert from_file.summary == from_dict.summary
    assert from_file.graph.op("latent") == from_dict.graph.op("latent")
    assert from_dict.source == "<dict>" and from_file.source.endswith("sae_dense.yaml")


def test_compile_errors_are_located_for_files_and_dicts():
    with pytest.raises(UserError, match=r"^--set: training.epochz: unknown field 'epochz'"):
        saec.compile(SPECS / "sae_dense.yaml", {"training.epochz": 3})
    with pytest.raises(UserError, match=r"^<dict>: layers: "):
        saec.compile({"name": "x", "kind": "sae", "latent": "a", "input": {"shape": [1, 28, 28]}, "layers": []})
    with pytest.raises(TypeError, match="not a string"):
        saec.compile(SPECS / "sae_dense.yaml", "training.lr=1")


def test_import_saec_does_not_import_torch():
    code = "import sys, saec; saec.compile; import saec.api; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_module_maps_images_and_spike_trains_to_a_typed_output(tiny_run):
    net = tiny_run.module()
    assert isinstance(net, AutoencoderModule) and isinstance(net, torch.nn.Module) and not net.training
    assert sum(p.numel() for p in net.parameters()) == 2_586_400
    images = torch.rand(3, 1, 28, 28)
    out = net(images, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, AutoencoderOutput)
    assert out.reconstruction.shape == (3, 1, 28, 28)
    assert list(out.spikes) == net.spiking_layers == ["conv1", "conv2", "latent", "fc_dec", "deconv1", "output"]
    assert out.spikes["latent"].shape == (2, 3, 100) and out.counts["latent"].shape == (3, 100)
    for layer in net.spiking_layers:
        assert torch.equal(out.spikes[layer].sum(0), out.counts[layer])
        assert set(out.spikes[layer].unique().tolist()) <= {0.0, 1.0}
    assert out.input_spikes.shape == (2, 3, 1, 28, 28)
    # the same spikes given as a spike train bypass the encoder and give the same result
    again = net(out.input_spikes)
    assert torch.equal(again.reconstruction, out.reconstruction)
    assert torch.equal(again.counts["latent"], out.counts["latent"])
    # an untrained network from the compiled spec is a module of the same kind
    fresh = saec.compile(SPECS / "sae_dense.yaml", TINY).module()
    assert fresh(images).reconstruction.shape == (3, 1, 28, 28)


def test_module_rejects_other_shapes_with_the_expected_ones():
    net = saec.compile(SPECS / "sae_dense.yaml", TINY).module()
    with pytest.raises(ValueError, match=r"expected images \[B, 1, 28, 28\] or a spike train \[T, B, 1, 28, 28\], "
                                         r"got \[3, 28, 28\]"):
        net(torch.rand(3, 28, 28))
    ae = saec.compile(SPECS / "ae.yaml").module()
    assert ae(torch.rand(2, 1, 28, 28)).spikes == {}
    with pytest.raises(ValueError, match="takes images"):
        ae(torch.rand(4, 2, 1, 28, 28))


def test_run_load_evaluate_and_export(tiny_run):
    run = saec.load_run(tiny_run.path)
    assert run.spec == tiny_run.spec and run.trained
    assert len(run.history) == 1 and run.history[0]["epoch"] == 1
    metrics = run.evaluate(device="cpu", limit=8, figures=False)
    # a limited evaluation goes beside the full one, which it leaves alone
    assert metrics["examples"] == 8 and metrics == json.loads((run.path / "eval_limit8.json").read_text())
    assert run.metrics["examples"] == 16
    full, (metrics_file, _) = run.evaluate(device="cpu", figures=False, with_paths=True)
    assert metrics_file == run.path / "eval.json" and full == run.metrics
    onnx_path = run.export("onnx")
    assert onnx_path == run.path / "export" / "model.onnx" and onnx_path.is_file()
    assert "<code>model.onnx</code>" in (run.path / "report.html").read_text()  # the report follows the export
    onnx_check = json.loads((run.path / "export" / "onnx_check.json").read_text())
    assert onnx_check["examples"] == 4 and set(onnx_check["train_mismatches"]) == set(run.module().spiking_layers)
    assert onnx_check["spikes_exact"] is True  # onnxruntime reproduces saec's spike trains on these images
    assert "onnx_check.json" in (run.path / "report.html").read_text()
    nir_result = run.export("nir", examples=2)
    check = json.loads((run.path / "export" / "nir_check.json").read_text())
    assert check["exact"] is nir_result.exact and set(check["nodes"]) == set(nir_result.agreement)
    assert "nir_check.json" in (run.path / "report.html").read_text()  # the agreement check is on the page
    with pytest.raises(UserError, match="unknown format 'tflite'"):
        run.export("tflite")
    with pytest.raises(UserError, match="no such run folder"):
        saec.load_run(run.path / "absent")


def test_the_command_line_goes_through_the_api(monkeypatch, tmp_path):
    """`saec compile/train/eval/export` call saec.api, so they cannot drift apart."""
    from typer.testing import CliRunner

    from saec import api
    from saec.cli import app

    calls: list[str] = []
    for name in ("compile", "train", "export", "load_run"):
        real = getattr(api, name)
        monkeypatch.setattr(api, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    runner = CliRunner()
    assert runner.invoke(app, ["compile", str(SPECS / "sae_dense.yaml"), "-q"]).exit_code == 0
    out = tmp_path / "run"
    sets = [item for key, value in TINY.items() for item in ("--set", f"{key}={value}")]
    result = runner.invoke(app, ["train", str(SPECS / "sae_dense.yaml"), "--out", str(out), "--device", "cpu", *sets])
    assert result.exit_code == 0, result.stderr
    assert runner.invoke(app, ["eval", str(out), "--device", "cpu", "--no-figures"]).exit_code == 0
    assert runner.invoke(app, ["export", str(out), "--format", "onnx"]).exit_code == 0
    assert calls == ["compile", "compile", "train", "load_run", "load_run", "export"]


def readme_python_snippet() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Python API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_api_snippet_runs(tmp_path, monkeypatch, capsys):
    shutil.copytree(SPECS, tmp_path / "specs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAEC_MNIST_ROOT", raising=False)
    namespace: dict = {}
    exec(compile(readme_python_snippet(), "README.md#python-api", "exec"), namespace)
    run = namespace["run"]
    assert (tmp_path / "runs" / "api_demo" / "report.html").is_file() and run.metrics["rec_loss"] > 0
    assert namespace["out"].reconstruction.shape == (8, 1, 28, 28)
    assert (tmp_path / "runs" / "api_demo" / "export" / "model.onnx").is_file()
