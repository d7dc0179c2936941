"""Hostile specs and sweep files: bounded parsing, finite numbers, cross-field rules, resource guards.

Every case: one located line, exit 2, no traceback, and quickly.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saec.run import sweep as S
from saec.cli import app
from saec.compiler.passes.cost import _taps
from saec.compiler.passes.memory import estimate_training_memory
from saec.compiler.pipeline import compile_spec
from saec.spec import loader
from tests.conftest import SPECS
from tests.spec.test_errors import BASE, assert_one_line, line_of, run_compile

runner = CliRunner()


def compile_text(tmp_path: Path, text: str, *extra: str):
    start = time.perf_counter()
    path, result = run_compile(tmp_path, text, *extra)
    assert time.perf_counter() - start < 10, "took too long"
    return path, result


# ---------------------------------------------------------------- the YAML parser
PARSER_CASES = [
    # (id, text, located line, expected message pattern)
    ("recursive-alias", "name: &a [*a]\n", 1, r"name\[0\]: a recursive alias"),
    ("deep-flow-list", "name: " + "[" * 5000 + "]" * 5000 + "\n", 1, r"nested deeper than 32 levels"),
    ("deep-flow-map", "name: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", 1, r"nested deeper than 32 levels"),
    ("deep-block", "".join("  " * i + "a:\n" for i in range(60)), 33, r"nested deeper than 32 levels"),
    ("nul", "name: x\nkind: s\x00ae\n", 2, r"non-printable character U\+0000 at column 8"),
    ("control", "name: x\x01\n", 1, r"non-printable character U\+0001 at column 8"),
    ("ufffe", "name: x\nkind: sae\n\ufffe\n", 3, r"non-printable character U\+FFFE at column 1"),
    ("list-key", "? [1, 2]\n: 3\n", 1, r"a mapping key must be a plain name, not a list or mapping"),
    ("alias-bomb", "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")), None,
     r"expands to more than 100,000 values"),
    ("many-aliases", "a: &a 1\nb: [" + ", ".join(["*a"] * 1001) + "]\n", 2, r"more than 1000 aliases"),
    ("huge-integer", "name: x\nseed: " + "9" * 5000 + "\n", None, r"a value cannot be read: Exceeds the limit"),
]


@pytest.mark.parametrize("text, line, pattern", [c[1:] for c in PARSER_CASES], ids=[c[0] for c in PARSER_CASES])
def test_hostile_yaml_is_one_located_line(tmp_path, text, line, pattern):
    path, result = compile_text(tmp_path, text)
    where = f"{re.escape(str(path))}:{line}: " if line else f"{re.escape(str(path))}(:\\d+)?: "
    assert_one_line(result, f"^error: {where}.*{pattern}")


def test_a_huge_bad_tag_gives_a_short_line(tmp_path):
    path, result = compile_text(tmp_path, "name: !" + "x" * 1_000_000 + " 1\n")  # just under the size limit
    err = assert_one_line(result, rf"^error: {re.escape(str(path))}:1: could not determine a constructor")
    assert len(err) <= 800


def test_files_beyond_the_size_limit_are_refused_unread(tmp_path):
    path, result = compile_text(tmp_path, "# " + "x" * (loader.MAX_FILE_BYTES + 10) + "\n")
    assert_one_line(result, rf"^error: {re.escape(str(path))}: is larger than 1024 KiB")


def test_a_device_file_is_refused(tmp_path):
    result = runner.invoke(app, ["compile", "/dev/zero"])
    assert_one_line(result, r"^error: /dev/zero: is not a regular file")


def test_not_utf8_is_located(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"name: x\nkind: \xff\n")
    assert_one_line(runner.invoke(app, ["compile", str(path)]), rf"^error: {re.escape(str(path))}:2: not UTF-8")


@pytest.mark.parametrize("value", ["&a [*a]", "[" * 100 + "]" * 100, "x\x01"])
def test_set_values_have_the_same_bounds_and_point_at_set(tmp_path, value):
    _, result = compile_text(tmp_path, BASE, "--set", f"training.lr={value}")
    assert_one_line(result, r"^error: --set: training\.lr: cannot parse value")


def test_set_errors_point_at_set(tmp_path):
    _, result = compile_text(tmp_path, BASE, "--set", "neuron.threshold=.inf")
    assert_one_line(result, r"^error: --set: neuron\.threshold: Input should be a finite number")


# ---------------------------------------------------------------- finite numbers
FINITE_FIELDS = [
    ("threshold: 1.0", "threshold: .inf", "neuron.threshold"),
    ("reset: zero}", "reset: zero, lower_bound: .nan}", "neuron.lower_bound"),
    ("weight: 0.01}", "weight: .inf}", "regularizers.p2.weight"),
    ("lr: 0.0005", "lr: .nan", "training.lr"),
    ("scale: 0.2", "scale: .inf", "encoding.scale"),
]


@pytest.mark.parametrize("old, new, dotted", FINITE_FIELDS, ids=[f[2] for f in FINITE_FIELDS])
def test_numbers_must_be_finite(tmp_path, old, new, dotted):
    assert old in BASE, old
    text = BASE.replace(old, new, 1)
    path, result = compile_text(tmp_path, text)
    assert_one_line(result, rf"^error: {re.escape(str(path))}:{line_of(text, new)}: {re.escape(dotted)}: "
                            r"Input should be a finite number")


# ---------------------------------------------------------------- rules training relies on
RULE_CASES = [
    ("t-min-after-T", "scale: 0.2}\nreg", "scale: 0.2, t_min: 101}\nreg", "t_min:", r"readout\.t_min: the readout window starts at "
                                                         r"t_min = 101, after the last time step T = 100"),
    ("latent-not-spiking", "latent: latent", "latent: flat", "latent: flat",
     r"latent: layer 'flat' has no spiking neurons"),
    ("bound-above-threshold", "reset: zero}", "reset: zero, lower_bound: 2.0}", "lower_bound:",
     r"neuron\.lower_bound: lower_bound 2\.0 must lie below the threshold 1\.0"),
    ("seed-beyond-63-bits", "seed: 0", "seed: 9223372036854775808", "seed:", r"training\.seed: .*less than"),
    ("name-dotdot", "name: sae_dense", "name: '..'", "name: '..'", r"name: '\.\.' is not a folder name"),
    ("name-too-long", "name: sae_dense", "name: " + "n" * 300, "name: nnn", r"name: .*at most 100 characters"),
]


@pytest.mark.parametrize("old, new, needle, pattern", [c[1:] for c in RULE_CASES], ids=[c[0] for c in RULE_CASES])
def test_rules_training_relies_on_are_checked_at_compile(tmp_path, old, new, needle, pattern):
    assert old in BASE, old
    text = BASE.replace(old, new, 1)
    path, result = compile_text(tmp_path, text)
    assert_one_line(result, rf"^error: {re.escape(str(path))}:{line_of(text, needle)}: {pattern}")


def test_a_network_without_weights_is_refused(tmp_path):
    text = ("name: x\nkind: sae\nlatent: flat\ninput: {shape: [1, 28, 28]}\nlayers:\n"
            "  - {name: flat, type: flatten}\n  - {name: back, type: unflatten, shape: [1, 28, 28]}\n")
    path, result = compile_text(tmp_path, text)
    assert_one_line(result, rf"^error: {re.escape(str(path))}:5: layers: no conv2d, conv_transpose2d or linear")


def test_a_per_layer_bound_above_its_threshold_is_located(tmp_path):
    old = "{name: latent, type: linear, out_features: 100}"
    assert old in BASE
    text = BASE.replace(old, "{name: latent, type: linear, out_features: 100, neuron: {threshold: 0.5, "
                             "lower_bound: 0.7}}")
    path, result = compile_text(tmp_path, text)
    assert_one_line(result, rf"^error: {re.escape(str(path))}:{line_of(text, 'lower_bound: 0.7')}: "
                            r"layers\.latent\.neuron\.lower_bound: lower_bound 0\.7 must lie below the threshold 0\.5")


# ---------------------------------------------------------------- resource guards
def test_synapse_count_is_closed_form_and_exact():
    def brute(n_out, n_in, k, stride, pad):
        return sum(1 for o in range(n_out) for j in range(k) if 0 <= o * stride - pad + j < n_in)

    rng = random.Random(0)
    for _ in range(3000):
        args = (rng.randint(0, 40), rng.randint(1, 30), rng.randint(1, 12), rng.randint(1, 5), rng.randint(0, 14))
        assert _taps(*args) == brute(*args), args
    start = time.perf_counter()
    assert _taps(2 * 10**9 + 24, 28, 5, 1, 10**9) == 28 * 5  # every input pixel meets each of the 5 taps once
    assert time.perf_counter() - start < 0.01


@pytest.mark.parametrize("old, new, needle", [
    ("padding: 0", "padding: 1000000000", "name: conv1"),
    ("out_features: 100}", "out_features: 1000000}", "name: latent"),
    ("timesteps: 100", "timesteps: 1000000000", "name: conv1"),
    ("out_channels: 16,", "out_channels: 1000000000,", "name: conv1"),
], ids=["padding", "wide-linear", "timesteps", "channels"])
def test_networks_beyond_the_machine_are_refused_at_compile_unless_forced(tmp_path, old, new, needle):
    text = BASE.replace("kernel_size: 5}", "kernel_size: 5, padding: 0}", 1) if old == "padding: 0" else BASE
    assert old in text, old
    text = text.replace(old, new, 1)
    path, result = compile_text(tmp_path, text)
    err = assert_one_line(result, rf"^error: {re.escape(str(path))}:\d+: layers\.\w+: training would need about "
                                  r"[\d.]+ [KMGTP]iB .*more than this machine's .*--force")
    assert f":{line_of(text, needle)}:" in err or "layers." in err
    _, forced = compile_text(tmp_path, text, "--force", "-q")
    assert forced.exit_code == 0, forced.output


def test_memory_estimate_counts_parameters_optimizer_and_activations():
    _, graph = compile_spec(str(SPECS / "sae_dense.yaml"))
    estimate = estimate_training_memory(graph, batch_size=64, optimizer="adam")
    assert estimate.params_bytes == 2_586_400 * 4 * 4  # weights, gradients, two Adam moments
    # 44,916 LIF neurons keep 4 tensors each; the rest one per output element; x T=100 x batch 64 x 4 bytes
    assert estimate.activation_bytes > 44_916 * 4 * 4 * 100 * 64
    assert estimate_training_memory(graph, 128).activation_bytes == 2 * estimate.activation_bytes


# ---------------------------------------------------------------- sweep files
def _sweep(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text.replace("SPECS", str(SPECS)))
    return path


def test_a_huge_grid_is_refused_before_it_is_expanded(tmp_path):
    grid = "".join(f"  k{i}.x: [{', '.join(map(str, range(10)))}]\n" for i in range(9))
    path = _sweep(tmp_path, f"base: SPECS/sae.yaml\ngrid:\n{grid}")
    start = time.perf_counter()
    result = runner.invoke(app, ["sweep", str(path), "--table-only"])
    assert time.perf_counter() - start < 5
    assert_one_line(result, rf"^error: {re.escape(str(path))}:2: grid: expands to 1,000,000,000 runs .*more than "
                            r"10,000")


def test_sweep_files_have_the_parser_bounds(tmp_path):
    path = _sweep(tmp_path, "base: SPECS/sae.yaml\nseeds: &s [*s]\n")
    assert_one_line(runner.invoke(app, ["sweep", str(path)]), rf"^error: {re.escape(str(path))}:2: .*recursive alias")
    path = _sweep(tmp_path, "# " + "x" * (loader.MAX_FILE_BYTES + 1))
    assert_one_line(runner.invoke(app, ["sweep", str(path)]), r"is larger than 1024 KiB; a sweep file")


def test_sweep_names_must_be_folder_names(tmp_path):
    path = _sweep(tmp_path, "name: '..'\nbase: SPECS/sae.yaml\n")
    assert_one_line(runner.invoke(app, ["sweep", str(path)]), rf"^error: {re.escape(str(path))}:1: name: '\.\.' is not")
    S.load_sweep(_sweep(tmp_path, "name: ok\nbase: SPECS/sae.yaml\n"))  # and a plain name still loads


def test_paths_with_a_nul_byte_are_refused(tmp_path):
    path = _sweep(tmp_path, 'base: "SPECS/sae.yaml\\0"\n')
    assert_one_line(runner.invoke(app, ["sweep", str(path), "--table-only"]),
                    rf"^error: {re.escape(str(path))}:1: base: String should match pattern")
    text = BASE.replace("data: {dataset: mnist}", 'data: {dataset: mnist, root: "a\\0b"}')
    path, result = compile_text(tmp_path, text)
    assert_one_line(result, rf"^error: {re.escape(str(path))}:{line_of(text, 'root:')}: data\.root: String should "
                            r"match pattern")
