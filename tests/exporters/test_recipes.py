"""The README's deployment recipes, extracted and executed as written on a small trained run.

Each fenced block tagged ```python recipe-<name> in README.md's section
"Deploying a trained network" runs with the working directory holding
``runs/sae_dense``: a tiny 28x28 SAE with the default semantics, trained for
two steps on the embedded mnist5k subset and exported by the command line.
The spikes each snippet computes are compared with saec's, train by train.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from pathlib import Path

import nir
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from saec.cli import app
from tests.conftest import REPO

RECIPES = ("snntorch", "norse", "onnxruntime")
TINY = """\
name: sae_dense
kind: sae
latent: latent
input: {shape: [1, 28, 28]}
encoding: {type: poisson, timesteps: 6, scale: 0.5}
init: {conv_std_factor: 3.0, linear_std_factor: 3.0}
layers:
  - {name: conv1, type: conv2d, out_channels: 2, kernel_size: 5}
  - {name: flat, type: flatten}
  - {name: latent, type: linear, out_features: 8}
  - {name: fc_dec, type: linear, out_features: 1152}
  - {name: unflat, type: unflatten, shape: [2, 24, 24]}
  - {name: output, type: conv_transpose2d, out_channels: 1, kernel_size: 5}
readout: {type: max_cumulative_potential, scale: 0.5}
training: {batch_size: 16, epochs: 1, max_steps: 2}
data: {dataset: mnist5k, train_limit: 64, validation: {source: split, fraction: 0.02}}
"""


def recipe(name: str) -> str:
    """The code of the README block tagged ```python recipe-<name> (exactly one)."""
    blocks = re.findall(rf"^```python recipe-{name}\n(.*?)^```$", (REPO / "README.md").read_text(), re.S | re.M)
    assert len(blocks) == 1, f"README.md has {len(blocks)} blocks tagged recipe-{name}"
    return blocks[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder holding runs/sae_dense: trained (2 steps) and exported with the command line."""
    from saec.compiler.pipeline import compile_spec
    from saec.run.train import train

    root = tmp_path_factory.mktemp("deploy")
    (root / "tiny.yaml").write_text(TINY)
    loaded, graph = compile_spec(str(root / "tiny.yaml"), [])
    train(loaded.spec, graph, root / "runs" / "sae_dense", device="cpu", progress=False, log=lambda _: None)
    runner = CliRunner()
    for args in (["--format", "nir", "--target", "norse"], ["--format", "onnx"]):
        result = runner.invoke(app, ["export", str(root / "runs" / "sae_dense"), *args])
        assert result.exit_code == 0, result.output
    return root


def execute(code: str, workdir: Path, monkeypatch) -> tuple[dict, str]:
    """Run ``code`` as written in ``workdir``; its globals and what it printed."""
    monkeypatch.chdir(workdir)
    out = io.StringIO()
    namespace: dict = {"__name__": "recipe"}
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), namespace)
    finally:
        logging.disable(logging.NOTSET)
    return namespace, out.getvalue()


def saec_trains(workdir: Path) -> dict[str, np.ndarray]:
    """saec's own run of the trained network on the golden input: every layer's train [B, T, neurons], x_hat."""
    from saec.exporters.nir import read_golden
    from saec.run.folder import load_model

    run = workdir / "runs" / "sae_dense"
    _, model = load_model(run)
    x = read_golden(run / "export" / "golden.nir")["input"]  # [B, T, 784]
    B, T = x.shape[:2]
    train = torch.from_numpy(x.transpose(1, 0, 2).reshape(T, B, 1, 28, 28).astype(np.float32))
    with torch.no_grad():
        out = model(train[0], encoded=train, record={"conv1", "latent", "fc_dec", "output"})
    trains = {k: v.numpy().reshape(T, B, -1).transpose(1, 0, 2) > 0 for k, v in out.trains.items()}
    return {**trains, "x_hat": out.x_hat.numpy()}


@pytest.mark.parametrize("name", RECIPES)
def test_readme_recipe_reproduces_saecs_spikes(workdir, monkeypatch, name):
    namespace, printed = execute(recipe(name), workdir, monkeypatch)
    ours = saec_trains(workdir)
    spikes = namespace["spikes"]  # what the recipe computed: output spikes [B, T, neurons]
    assert ours["output"].sum() > 0 and ours["latent"].sum() > 0, "silent network: the comparison would be vacuous"
    np.testing.assert_array_equal(spikes, ours["output"])
    assert re.search(r"output spikes differing from saec: 0$", printed.strip()), printed
    if name == "onnxruntime":
        x_hat = namespace["x_hat"]
        np.testing.assert_allclose(x_hat, ours["x_hat"], rtol=0, atol=1e-5 * np.abs(ours["x_hat"]).max())
        session = namespace["session"]
        names = [o.name for o in session.get_outputs()]
        feeds = namespace["feeds"]
        for layer in ("conv1", "latent", "fc_dec", "output"):  # the other layers' trains, from the same session
            got = session.run([f"spikes.{layer}"], feeds)[0]
            T, B = got.shape[:2]
            assert f"spikes.{layer}" in names
            np.testing.assert_array_equal(got.reshape(T, B, -1).transpose(1, 0, 2) > 0, ours[layer], err_msg=layer)


def test_recipes_read_the_files_saec_export_writes(workdir):
    """The paths the recipes name exist in the exported run (a renamed file would fail loudly here too)."""
    for name in RECIPES:
        for path in re.findall(r'f"\{RUN\}/([^"]+)"', recipe(name)):
            assert (workdir / "runs" / "sae_dense" / path).is_file(), (name, path)
    golden = nir.read_data(str(workdir / "runs" / "sae_dense" / "export" / "golden.nir"))
    assert set(golden.nodes) >= {"input", "output"}
