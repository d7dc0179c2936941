"""Fit reports: `saec compile SPEC --target NAME` on networks that fit and on the paper SAE, which does not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saec.cli import app
from saec.compiler import ops
from saec.compiler.pipeline import compile_spec
from saec.targets.fit import check_fit, chip_decay, entries, layer_dimensions
from saec.targets.profile import load_profile
from tests.conftest import REPO, SPECS

runner = CliRunner()
PAPER_SAE = str(SPECS / "sae_dense.yaml")

#: Small auto-encoders that fit each target (T small: the fit does not depend on it).
FITTING = {
    "speck": """\
name: speck_small
kind: sae
latent: conv1
input: {shape: [1, 16, 16]}
encoding: {timesteps: 4}
neuron: {decay: 1.0, reset: zero}
layers:
  - {name: conv1, type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}
  - {name: conv2, type: conv2d, out_channels: 1, kernel_size: 3, padding: 1}
""",
    "xylo": """\
name: xylo_small
kind: sae
latent: hidden
input: {shape: [1, 2, 4]}
encoding: {timesteps: 4}
neuron: {decay: 0.875, reset: subtract, spike_when: ge}
layers:
  - {name: flat, type: flatten}
  - {name: hidden, type: linear, out_features: 16}
  - {name: output, type: linear, out_features: 8}
  - {name: unflat, type: unflatten, shape: [1, 2, 4]}
""",
    "loihi": """\
name: loihi_small
kind: sae
latent: conv1
input: {shape: [1, 8, 8]}
encoding: {timesteps: 4}
neuron: {decay: 0.75}
layers:
  - {name: conv1, type: conv2d, out_channels: 4, kernel_size: 3}
  - {name: output, type: conv_transpose2d, out_channels: 1, kernel_size: 3}
""",
}


def _spec(tmp_path: Path, text: str, name: str = "net.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _line_of(path: str, needle: str) -> int:
    return next(i for i, line in enumerate(Path(path).read_text().splitlines(), 1) if needle in line)


def _compile(*args: str):
    return runner.invoke(app, ["compile", *args])


# ------------------------------------------------------------------ the paper SAE does not fit
def test_paper_sae_on_speck_names_the_leak_and_the_latent_kernel_memory():
    result = _compile(PAPER_SAE, "--target", "speck")
    assert result.exit_code == 2
    conv1, latent = _line_of(PAPER_SAE, "name: conv1"), _line_of(PAPER_SAE, "name: latent")
    err = result.stderr.strip()
    assert err.startswith(f"error: {PAPER_SAE}:{conv1}: layers.conv1: LIF leak (decay 0.99) is not supported: "
                          "speck has no leak, its neurons integrate and fire (decay must be 1; sinabs 3.1.3"), err
    assert err.endswith("(and 12 more problems)") and "\n" not in err
    # every problem is one located line in the report; the latent linear is the TARGETS.md example
    lines = result.stdout.splitlines()
    (kernel,) = [line for line in lines if f":{latent}: layers.latent: linear needs" in line]
    assert kernel.strip().startswith(f"{PAPER_SAE}:{latent}: layers.latent: linear needs 2 Mi kernel entries "
                                     "(c_in * 2**(ceil_log2(kh * kw) + ceil_log2(c_out)) = 2,097,152), more than "
                                     "any speck core holds (64 Ki;")
    assert sum(": LIF leak (decay 0.99) is not supported" in line for line in lines if PAPER_SAE in line) == 6
    assert any("layers.deconv1: conv_transpose2d is not among speck's layer kinds" in line for line in lines)
    assert any(line.startswith(f"  {PAPER_SAE}:{latent + 1}: layers.fc_dec: 12,800 channels, more than speck's 1,023")
               for line in lines)
    assert "speck: does not fit: 13 problems" in lines
    assert any(f":{latent}: layers.latent: kernel 20x20 (the linear layer as a convolution over the map it reads) "
               "is larger than speck's 15" in line for line in lines)
    assert not any("bias entries" in line for line in lines)  # no layer has a bias: no bias memory


def test_paper_sae_on_xylo_names_784_inputs():
    result = _compile(PAPER_SAE, "--target", "xylo", "-q")
    assert result.exit_code == 2
    assert result.stdout == ""  # -q: only the error
    line = _line_of(PAPER_SAE, "input:")
    assert result.stderr.startswith(f"error: {PAPER_SAE}:{line}: input: 784 inputs, more than xylo's 16 (rockpool")
    result = _compile(PAPER_SAE, "--target", "xylo")
    out = result.stdout
    assert f"{PAPER_SAE}:{_line_of(PAPER_SAE, 'name: conv1')}: layers.conv1: conv2d is not among xylo's layer kinds" in out
    assert f"{PAPER_SAE}:{_line_of(PAPER_SAE, 'name: output')}: layers.output: 784 output neurons, more than xylo's 8" in out
    assert "layers.conv1: hidden neurons reach 9,216 here (44,132 in all), more than xylo's 1,000" in out


def test_paper_sae_with_default_semantics_fits_loihi_neuron_for_neuron():
    result = _compile(PAPER_SAE, "--target", "loihi")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "loihi: fits" in out
    assert out.count("yes (decay 0.99 -> 0.98999 (d = 41/4096))") == 6  # the chip's decay, 1 - 41/4096
    assert "cores: not modelled" in out


def test_a_network_that_does_not_fit_writes_no_ir(tmp_path):
    out = tmp_path / "ir.json"
    result = _compile(PAPER_SAE, "--target", "speck", "-o", str(out), "-q")
    assert result.exit_code == 2 and not out.exists()


# ------------------------------------------------------------------ small networks fit
@pytest.mark.parametrize("target", sorted(FITTING))
def test_a_small_network_fits_each_target(target, tmp_path):
    path = _spec(tmp_path, FITTING[target])
    out = tmp_path / "ir.json"
    result = _compile(path, "--target", target, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert f"{target}: fits" in result.stdout and out.exists()
    assert _compile(path, "--target", target, "-q").stdout == ""


def test_speck_report_gives_memories_cores_and_the_spike_test(tmp_path):
    result = _compile(_spec(tmp_path, FITTING["speck"]), "--target", "speck")
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  conv")}
    # conv1: kernel 1 * 2**(4 + 2) = 64, neurons 4 * 2**(4 + 4) = 1 Ki; conv2: 4 * 2**(4 + 0), 1 * 2**8
    assert "kernel 64, neuron 1 Ki, bias 0" in rows["conv1"]  # no bias: none stored (sinabs' memory_summary)
    assert "kernel 64, neuron 256, bias 0" in rows["conv2"]
    assert all("core " in row for row in rows.values())
    assert "yes (u > th runs as u >= th + 1 LSB (integer state))" in rows["conv1"]


def test_xylo_report_places_hidden_and_output_neurons(tmp_path):
    result = _compile(_spec(tmp_path, FITTING["xylo"]), "--target", "xylo")
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith(("  hidden", "  output"))}
    assert "hidden 0-15 of 1,000" in rows["hidden"] and "outputs (8 of 8)" in rows["output"]


# ------------------------------------------------------------------ each rule, negative
def _violations(tmp_path, text: str, target: str) -> list[tuple[str, str]]:
    _, graph = compile_spec(_spec(tmp_path, text))
    return [(v.node, v.message) for v in check_fit(graph, load_profile(target)).violations]


def test_loihi_refuses_a_floor_a_ge_test_and_a_subtract_reset(tmp_path):
    text = FITTING["loihi"].replace("neuron: {decay: 0.75}",
                                    "neuron: {decay: 0.75, lower_bound: -1, spike_when: ge, reset: subtract}")
    found = _violations(tmp_path, text, "loihi")
    messages = [m for node, m in found if node == "conv1.lif"]
    assert messages[0].startswith("reset 'subtract' is not expressible: loihi resets by zero (lava-nc 0.10.0")
    assert messages[1].startswith("membrane floor (clamp below -1) is not expressible: loihi has no membrane floor")
    assert messages[2].startswith("spike test u >= th is not expressible: loihi spikes when v > th")
    result = _compile(_spec(tmp_path, text), "--target", "loihi")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {tmp_path / 'net.yaml'}:{_line_of(str(tmp_path / 'net.yaml'), 'name: conv1')}: "
                                    "layers.conv1: reset 'subtract'")


def test_loihi_refuses_a_strided_transposed_conv(tmp_path):
    text = FITTING["loihi"].replace("kernel_size: 3}\n  - {name: output", "kernel_size: 3, stride: 2}\n  - {name: output")
    text = text.replace("out_channels: 1, kernel_size: 3}", "out_channels: 1, kernel_size: 3, stride: 2, output_padding: 1}")
    found = _violations(tmp_path, text, "loihi")
    assert ("output", "stride 2x2: loihi runs conv_transpose2d as netx conv (flipped kernel) only up to stride 1") in found


def test_speck_refuses_a_non_square_kernel(tmp_path):
    text = FITTING["speck"].replace("kernel_size: 3, padding: 1}\n  - {name: conv2",
                                    "kernel_size: [3, 5], padding: [1, 2]}\n  - {name: conv2")
    (node, message), = _violations(tmp_path, text, "speck")
    assert node == "conv1" and message.startswith("kernel 3x5 is not square; speck takes square kernels only")


def test_speck_refuses_more_layers_than_cores(tmp_path):
    layers = "".join(f"  - {{name: c{i}, type: conv2d, out_channels: 1, kernel_size: 1}}\n" for i in range(10))
    text = FITTING["speck"].split("layers:\n")[0].replace("latent: conv1", "latent: c0") + "layers:\n" + layers
    found = _violations(tmp_path, text, "speck")
    assert ("c9", "spiking layer 10 of 10: speck runs at most 9 (sinabs 3.1.3 sinabs/backend/dynapcnn/chips/"
                  "dynapcnn.py (get_constraints; 9 cores, one layer each))") in found
    assert any(node == "c9" and m.startswith("no speck core left for it") for node, m in found)


def test_speck_matches_big_layers_to_the_only_cores_that_hold_them(tmp_path):
    # 64 -> 64 channels, 3x3: kernel 64 * 2**(4 + 6) = 64 Ki, which only cores 5 and 6 hold
    layers = "".join(f"  - {{name: c{i}, type: conv2d, out_channels: 64, kernel_size: 3, padding: 1}}\n"
                     for i in range(4))
    text = (FITTING["speck"].split("layers:\n")[0].replace("latent: conv1", "latent: c0")
            .replace("[1, 16, 16]", "[64, 4, 4]") + "layers:\n" + layers)
    _, graph = compile_spec(_spec(tmp_path, text))
    report = check_fit(graph, load_profile("speck"))
    placed = {row.layer: row.place for row in report.layers}
    assert sorted(placed[c][:6] for c in ("c0", "c1")) == ["core 5", "core 6"]
    assert [(v.node, v.message.split(":")[0]) for v in report.violations] == [
        ("c2", "no speck core left for it"), ("c3", "no speck core left for it")]
    assert "cores 5, 6 would hold it" in report.violations[0].message


def test_a_relu_network_is_not_spiking(tmp_path):
    found = _violations(tmp_path, FITTING["speck"].replace("kind: sae", "kind: ae"), "speck")
    assert ("conv1.relu", "relu is not a spiking neuron; speck runs spiking (LIF) networks only") in found


# ------------------------------------------------------------------ arithmetic
def test_chip_decays():
    assert chip_decay(0.99, load_profile("loihi")) == (1 - 41 / 4096, "d = 41/4096")
    assert chip_decay(0.0, load_profile("loihi"))[0] is None  # d = 4096 does not fit 12 bits
    assert chip_decay(0.99, load_profile("xylo")) == (1 - 2 ** -7, "dash = 7")
    assert chip_decay(0.99, load_profile("speck")) == (None, "no leak register")
    assert chip_decay(1.0, load_profile("speck")) == (1.0, "no leak")


def test_linear_layers_are_seen_as_full_kernel_convs():
    _, graph = compile_spec(PAPER_SAE)
    dims = layer_dimensions(graph, "latent")
    assert (dims["c_in"], dims["kh"], dims["kw"], dims["c_out"], dims["h_out"]) == (32, 20, 20, 100, 1)
    dims = layer_dimensions(graph, "fc_dec")
    assert (dims["c_in"], dims["kh"], dims["kw"], dims["c_out"]) == (100, 1, 1, 12800)
    assert isinstance(graph.op("latent"), ops.Linear)


def test_entries_print_like_the_vendor():
    assert [entries(n) for n in (2 * 1024 * 1024, 65536, 1000, 1536)] == ["2 Mi", "64 Ki", "1,000", "1,536"]


def test_compile_with_a_target_does_not_import_torch():
    code = ("import sys; from saec.cli import app; from typer.testing import CliRunner;"
            f"r = CliRunner().invoke(app, ['compile', {PAPER_SAE!r}, '--target', 'loihi', '-q']);"
            "assert r.exit_code == 0, r.output; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


def test_speck_pooling_and_kernel_rules(tmp_path):
    base = (SPECS / "targets" / "speck_ae.yaml").read_text()
    text = base.replace("{name: pool1, type: sum_pool2d, kernel_size: 2}", "{name: pool1, type: sum_pool2d, kernel_size: 3}")
    # 24x24 -> pool 3: 8x8 -> conv2 k3: 6x6 -> pool 2: 3x3 -> latent 3x3 -> four +6 decoders: 27x27; k8 makes 28
    text = text.replace("{name: conv2, type: conv2d, out_channels: 16, kernel_size: 5}",
                        "{name: conv2, type: conv2d, out_channels: 16, kernel_size: 3}")
    text = text.replace("out_channels: 1, kernel_size: 7, padding: 6}", "out_channels: 1, kernel_size: 8, padding: 7}")
    found = dict(_violations(tmp_path, text, "speck"))
    assert found["pool1"].startswith("kernel 3x3: speck runs sum_pool2d with kernels 1, 2, 4 only (sinabs 3.1.3")
    small = FITTING["speck"].replace(  # 16 -> pool k2 stride 1: 15 -> conv2 k2 p1: 16
        "  - {name: conv2, type: conv2d, out_channels: 1, kernel_size: 3, padding: 1}",
        "  - {name: pool1, type: sum_pool2d, kernel_size: 2, stride: 1}\n"
        "  - {name: conv2, type: conv2d, out_channels: 1, kernel_size: 2, padding: 1}")
    found = _violations(tmp_path, small.replace("kernel_size: 3, padding: 1}", "kernel_size: 17, padding: 8}"), "speck")
    assert ("pool1", "stride 1x1 differs from the kernel 2x2; speck pools with stride == kernel (sinabs 3.1.3 "
                     "sinabs/backend/dynapcnn/dynapcnn_layer.py (stride == kernel); sinabs docs/speck/faqs/"
                     "available_algorithmic_operation.md (pooling kernel 1, 2 or 4))") in found
    assert any(node == "conv1" and m.startswith("kernel 17x17 is larger than speck's 15 (sinabs") for node, m in found)


def test_speck_channel_limit(tmp_path):
    text = FITTING["speck"].replace("out_channels: 4,", "out_channels: 1024,")
    found = _violations(tmp_path, text, "speck")
    assert ("conv1", "1,024 channels, more than speck's 1,023 (sinabs 3.1.3 sinabs/backend/dynapcnn/dynapcnn_layer.py "
                     "(square kernels); sinabs docs/speck/faqs/available_algorithmic_operation.md (kernel < 16, "
                     "channels < 1024))") in found


def test_a_shifted_spike_test_with_subtraction_is_refused(tmp_path):
    # the chip would subtract its register th + 1, saec subtracts th: not the same network
    text = FITTING["speck"].replace("reset: zero}", "reset: subtract}")
    found = _violations(tmp_path, text, "speck")
    assert found[0][0] == "conv1.lif"
    assert found[0][1].startswith("spike test u > th with reset by subtraction is not expressible: speck spikes when "
                                  "v >= its threshold register and subtracts that register")
    assert found[0][1].split(" (sinabs")[0].endswith("use spike_when: ge")


def test_readme_fit_report_examples_are_real_output(monkeypatch):
    """Each `$ saec compile ... -q` example in the README's fit-report section prints its error line as shown."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Hardware targets: fit reports")[1].split("\n## ")[0]
    lines = section.splitlines()
    examples = [(lines[i][2:].split(), lines[i + 1]) for i in range(len(lines) - 1)
                if lines[i].startswith("$ saec compile") and lines[i].endswith(" -q")]
    assert len(examples) == 2
    monkeypatch.chdir(REPO)
    for argv, shown in examples:
        result = runner.invoke(app, argv[1:])
        assert result.exit_code == 2
        assert result.stderr.strip() == shown, argv


def test_speck_bias_memory_counts_only_layers_with_a_bias(tmp_path):
    text = FITTING["speck"].replace("kernel_size: 3, padding: 1}\n  - {name: conv2", "kernel_size: 3, padding: 1, bias: true}\n  - {name: conv2")
    _, graph = compile_spec(_spec(tmp_path, text))
    rows = {r.layer: r for r in check_fit(graph, load_profile("speck")).layers}
    assert rows["conv1"].memory["bias"] == 4 and rows["conv2"].memory["bias"] == 0
