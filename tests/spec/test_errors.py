"""Every validation rule: one located line, exit code 2, no traceback (negative tests)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saec.cli import app
from tests.conftest import SPECS

BASE = (SPECS / "sae_dense.yaml").read_text()
runner = CliRunner()


def run_compile(tmp_path: Path, text: str | None, *extra: str):
    path = tmp_path / "spec.yaml"
    if text is not None:
        path.write_text(text)
    result = runner.invoke(app, ["compile", str(path), *extra])
    return path, result


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def assert_one_line(result, pattern: str) -> str:
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert "\n" not in err, err
    assert "Traceback" not in result.output
    assert re.search(pattern, err), err
    return err


CASES = [
    # (id, old text, new text, located line needle, expected pattern after the location)
    ("unknown-field", "out_features: 100}", "out_feature: 100}", "out_feature: 100",
     r"layers\.latent\.out_feature: unknown field 'out_feature'; did you mean 'out_features'\?"),
    ("wrong-type", "decay: 0.99", 'decay: "slow"', "decay:", r"neuron\.decay: .*valid number"),
    ("decay-range", "decay: 0.99", "decay: 1.5", "decay:", r"neuron\.decay: .*less than or equal to 1 \(got 1\.5\)"),
    ("negative-timesteps", "timesteps: 100", "timesteps: -3", "timesteps:", r"encoding\.timesteps: .*greater than 0"),
    ("kernel-too-large", "out_channels: 32, kernel_size: 5}", "out_channels: 32, kernel_size: 30}", "name: conv2",
     r"layers\.conv2: kernel 30x30 is larger than its input 24x24; its input `conv1` gives 16x24x24"),
    ("missing-field", "latent: latent\n", "", "name: sae_dense", r"latent: required field missing"),
    ("duplicate-layer", "name: conv2,", "name: conv1,", "name: conv1, type: conv2d, out_channels: 32",
     r"layers\.conv1\.name: duplicate layer name 'conv1'"),
    ("unknown-reg-layer", "layers: [latent]", "layers: [latnt]", "layers: [latnt]",
     r"regularizers\.a1\.layers\[0\]: no layer named 'latnt'"),
    ("shape-mismatch", "shape: [32, 20, 20]", "shape: [32, 20, 21]", "name: unflat",
     r"layers\.unflat: cannot reshape 12800 into 32x20x21; its input `fc_dec` gives 12800"),
    ("decoder-output", "out_channels: 1, kernel_size: 5}", "out_channels: 1, kernel_size: 3}", "name: output",
     r"layers\.output: the decoder's output shape 1x26x26 differs from the input shape 1x28x28"),
    ("missing-flatten", "  - {name: flat, type: flatten}\n", "", "name: latent",
     r"layers\.latent: needs a flat input, got 32x20x20 .*`conv2`"),
    ("explicit-channels", "out_channels: 32, kernel_size: 5}", "in_channels: 8, out_channels: 32, kernel_size: 5}",
     "name: conv2", r"layers\.conv2: expects 8 input channels, got 16x24x24; its input `conv1`"),
    ("precision", "optimizer: adam,", "optimizer: adam, precision: fp16,", "precision: fp16",
     r"training\.precision: .*'fp32' or 'bf16' \(got 'fp16'\)"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_located_error(tmp_path, case):
    _, old, new, needle, pattern = case
    assert old in BASE
    text = BASE.replace(old, new, 1)
    path, result = run_compile(tmp_path, text)
    line = line_of(text, needle)
    assert_one_line(result, rf"^error: {re.escape(str(path))}:{line}: {pattern}")


def test_yaml_syntax_error(tmp_path):
    path, result = run_compile(tmp_path, "name: x\nkind: sae\n  bad: [1,\n")
    assert_one_line(result, rf"{re.escape(str(path))}:3: YAML syntax error")


def test_unsafe_tag_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    text = f'name: !!python/object/apply:os.system ["touch {marker}"]\nkind: sae\n'
    path, result = run_compile(tmp_path, text)
    assert_one_line(result, rf"{re.escape(str(path))}:1: .*python/object/apply.*Python tags are refused")
    assert not marker.exists()


def test_duplicate_yaml_key(tmp_path):
    path, result = run_compile(tmp_path, BASE + "name: again\n")
    n = len(BASE.splitlines()) + 1
    assert_one_line(result, rf"{re.escape(str(path))}:{n}: name: duplicate key 'name' \(first written at line \d+\)")


def test_missing_file(tmp_path):
    path, result = run_compile(tmp_path, None)
    assert_one_line(result, rf"{re.escape(str(path))}: no such file")


def test_unreadable_file(tmp_path):
    path, result = run_compile(tmp_path, None)
    path.mkdir()
    result = runner.invoke(app, ["compile", str(path)])
    assert_one_line(result, "is a directory")


def test_empty_file(tmp_path):
    path, result = run_compile(tmp_path, "")
    assert_one_line(result, "the spec is empty")


@pytest.mark.parametrize("override, pattern", [
    ("layers.nope.out_features=3", r"^error: --set: layers\.nope: no item named 'nope'"),
    ("layers.latnt.out_features=3", r"did you mean 'latent'\?"),
    ("training.epochz=3", r"^error: --set: training\.epochz: unknown field 'epochz'; did you mean 'epochs'\?"),
    ("training.epochs=abc", r"^error: --set: training\.epochs: .*valid integer \(got 'abc'\)"),
    ("name.x=3", r"^error: --set: name\.x: cannot descend into a scalar value"),
    ("epochs", r"^error: --set: expected KEY=VALUE"),
    ("layers.9.name=x", r"^error: --set: layers\.9: index 9 out of range"),
    ("regularizers.a1.layers=[flat]", r"^error: --set: regularizers\.a1\.layers\[0\]: layer 'flat' has no spiking"),
    ("training.precision=bf17", r"^error: --set: training\.precision: .*'fp32' or 'bf16' \(got 'bf17'\)"),
])
def test_bad_set(override, pattern):
    result = runner.invoke(app, ["compile", str(SPECS / "sae_dense.yaml"), "--set", override])
    assert_one_line(result, pattern)
