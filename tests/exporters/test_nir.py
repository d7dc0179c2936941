"""NIR export, golden data, third-party simulators (snnTorch, Norse) and saec's own NIR simulator.

Spikes are compared exactly (0/1 per neuron and step). The run folders here
hold He-initialised weights times a gain (so every layer fires) on a 28x28
network with T = 8; the golden images come from the embedded mnist5k split,
so nothing needs the MNIST files except the slow paper-SAE check.
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
from saec.compiler import ops
from saec.compiler.graph import IRGraph
from saec.compiler.passes.shapes import infer_shapes
from saec.compiler.pipeline import compile_spec
from saec.exporters import nir as X
from saec.importers.nir import (agreement, check_input_spikes, nir_to_ir, read_input_spikes, read_nir,
                                       simulate_nir)
from saec.run import artifacts as A
from saec.runtime.encoding import poisson_encode
from saec.runtime.model import SpikingAutoencoder
from saec.run.folder import load_model
from saec.errors import UserError
from saec.spec.loader import resolved_yaml
from tests.conftest import SPECS

runner = CliRunner()

TINY = """\
name: tiny28
kind: sae
latent: latent
input: {shape: [1, 28, 28]}
encoding: {type: poisson, timesteps: 8, scale: 0.5}
neuron: {type: lif, decay: 0.9, threshold: 1.0, reset: zero}
layers:
  - {name: conv1, type: conv2d, out_channels: 2, kernel_size: 5}
  - {name: flat, type: flatten}
  - {name: latent, type: linear, out_features: 8}
  - {name: fc_dec, type: linear, out_features: 1152}
  - {name: unflat, type: unflatten, shape: [2, 24, 24]}
  - {name: output, type: conv_transpose2d, out_channels: 1, kernel_size: 5}
readout: {type: max_cumulative_potential, scale: 0.5}
data: {dataset: mnist5k, validation: {source: split, fraction: 0.02}}
"""
NO_CLAMP = ("neuron.lower_bound=null",)
#: The published code's floor (preset `reference`): u < -1 is set to +threshold. NIR cannot express it.
REVIVE = ("neuron.lower_bound=-1", "neuron.lower_bound_mode=revive")


def make_run(folder: Path, spec_text: str, overrides=(), *, gain: float = 3.0, seed: int = 0) -> Path:
    """A run folder as `saec train` leaves it (spec.yaml, ir.json, model.safetensors), untrained weights."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "source.yaml").write_text(spec_text)
    loaded, graph = compile_spec(str(folder / "source.yaml"), list(overrides))
    model = SpikingAutoencoder(graph)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    A.write_text(folder / A.SPEC, resolved_yaml(loaded.spec))
    A.write_text(folder / A.IR, graph.to_json())
    A.save_weights(folder / A.WEIGHTS, {k: v * gain for k, v in model.ir_state_dict().items()})
    return folder


def export(run: Path, *args: str):
    result = runner.invoke(app, ["export", str(run), "--format", "nir", *args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A no-clamp run exported with the snntorch and norse variants."""
    run = make_run(tmp_path_factory.mktemp("noclamp") / "run", TINY, NO_CLAMP)
    export(run, "--target", "snntorch")
    export(run, "--target", "norse")
    return run


@pytest.fixture(scope="module")
def exported_clamped(tmp_path_factory) -> tuple[Path, object]:
    """A run with the published code's floor (u < -1 is set to +threshold), exported with --approximate;
    and the command's result."""
    run = make_run(tmp_path_factory.mktemp("clamp") / "run", TINY, REVIVE)
    return run, export(run, "--target", "norse", "--approximate")


def golden_trains(run: Path) -> dict[str, np.ndarray]:
    return X.read_golden(run / "export" / X.GOLDEN_FILE)  # node -> bool [B, T, neurons]


# ---------------------------------------------------------------- third-party runners
def run_importer(net, spikes: np.ndarray) -> np.ndarray:
    """Step a nirtorch-built module over spikes [B, T, *shape]; output spikes bool [B, T, neurons]."""
    return run_importer_layers(net, spikes)[X.OUTPUT_NODE]


def run_importer_layers(net, spikes: np.ndarray) -> dict[str, np.ndarray]:
    """Step a nirtorch-built module over spikes [B, T, *shape]; the spike train of every LIF node and the
    output, bool [B, T, neurons], keyed by NIR node name (the importers name modules with `_` for `.`)."""
    x = torch.from_numpy(spikes.astype(np.float32))
    recorded: dict[str, list[np.ndarray]] = {}

    def recorder(node: str):
        def hook(module, inputs, output):
            z = output[0] if isinstance(output, tuple) else output
            recorded.setdefault(node, []).append(z.detach().reshape(x.shape[0], -1).numpy())
        return hook

    handles = [module.register_forward_hook(recorder(name.replace("_lif", ".lif")))
               for name, module in net.named_modules() if name.endswith("_lif")]
    state, outs = None, []
    try:
        with torch.no_grad():
            for t in range(x.shape[1]):
                out, state = net(x[:, t], state)
                outs.append(out.reshape(x.shape[0], -1).numpy())
    finally:
        for handle in handles:
            handle.remove()
    trains = {node: np.stack(v, 1) > 0 for node, v in recorded.items()}
    trains[X.OUTPUT_NODE] = np.stack(outs, 1) > 0
    return trains


def snntorch_net(path: Path):
    from snntorch.import_nir import import_from_nir

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per node
        return import_from_nir(nir.read(path))


def norse_net(path: Path):
    import norse.torch

    logging.disable(logging.WARNING)  # Norse warns that r != 1 even where the adapter made it so
    try:
        return norse.torch.from_nir(nir.read(path), dt=X.DT)
    finally:
        logging.disable(logging.NOTSET)


def golden_input(run: Path) -> tuple[np.ndarray, np.ndarray]:
    gold = golden_trains(run)
    shape = tuple(int(v) for v in read_nir(run / "export" / X.MODEL_FILE).nodes[X.INPUT_NODE].input_type["input"])
    B, T, _ = gold[X.INPUT_NODE].shape
    return gold[X.INPUT_NODE].reshape(B, T, *shape), gold[X.OUTPUT_NODE]


# ---------------------------------------------------------------- the export
def test_export_writes_a_type_checked_standard_graph(exported):
    path = exported / "export" / X.MODEL_FILE
    graph = nir.read(path, type_check=True)
    kinds = {name: type(node).__name__ for name, node in graph.nodes.items()}
    # The ends are `input` / `output` (snn-mlir requires these); the output layer's synapse, IR node
    # `output`, is renamed and the mapping recorded.
    assert kinds == {"input": "Input", "conv1": "Conv2d", "conv1.lif": "LIF", "latent": "Conv2d",
                     "latent.lif": "LIF", "fc_dec": "Conv2d", "fc_dec.lif": "LIF", "output.conv2d": "Conv2d",
                     "output.lif": "LIF", "output": "Output"}
    assert graph.edges[0] == ("input", "conv1") and graph.edges[-1] == ("output.lif", "output")
    assert ("output.conv2d", "output.lif") in graph.edges
    assert graph.metadata["renamed_nodes"] == {"output.conv2d": "output"}
    lif = graph.nodes["latent.lif"]
    assert lif.tau.shape == (8, 1, 1)  # full activation shape of the lowered latent layer
    np.testing.assert_allclose(lif.tau, X.DT / (1 - 0.9), rtol=1e-15)
    np.testing.assert_allclose(lif.r, 1 / (1 - 0.9), rtol=1e-15)
    assert np.all(lif.v_leak == 0) and np.all(lif.v_reset == 0) and np.all(lif.v_threshold == np.float32(1.0))
    meta = graph.metadata
    _, model = load_model(exported)
    assert meta["spec_sha256"] == model.graph.attrs["spec_sha256"] and meta["producer"] == "saec"
    assert meta["dt"] == X.DT and meta["timesteps"] == 8
    assert meta["readout"]["neurons"] == "output.lif" and meta["readout"]["divisor"] == pytest.approx(8 * 0.5)
    assert meta["neuron"]["lower_bound"] == "none" and meta["golden"]["examples"] == 4


def test_export_weights_are_the_lowered_trained_weights(exported):
    graph = nir.read(exported / "export" / X.MODEL_FILE)
    _, model = load_model(exported)
    w = model.ir_state_dict()
    np.testing.assert_array_equal(graph.nodes["output.conv2d"].weight,
                                  w["output.weight"].numpy().transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    np.testing.assert_array_equal(graph.nodes["latent"].weight, w["latent.weight"].numpy().reshape(8, 2, 24, 24))
    assert np.all(graph.nodes["conv1"].bias == 0) and list(graph.nodes["fc_dec"].padding) == [23, 23]


def test_export_warns_what_nir_does_not_carry(exported_clamped):
    run, result = exported_clamped
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "warning: --approximate: written WITHOUT semantics NIR cannot express:"
    assert lines[1] == ("  - lower_bound on layers conv1, latent, fc_dec, output: NIR's LIF has no membrane floor "
                        "(u < -1 is set to +threshold); written without it")
    assert lines[2] == "warning: NIR does not carry these (they are in the graph metadata):"
    text = " ".join(lines)
    for needle in ("the readout", "the Poisson encoder", "dt = 0.0001 s",
                   "the membrane floor (u < -1 is set to +threshold) on layers conv1, fc_dec, latent, output"):
        assert needle in text
    meta = nir.read(run / "export" / X.MODEL_FILE).metadata
    assert "membrane floor" in meta["not_carried"] and meta["neuron"]["lower_bound"] == -1.0
    assert "lower_bound on layers conv1, latent, fc_dec, output" in meta["approximated"]


def test_ge_threshold_is_written_one_float32_step_below():
    op = ops.LIF(threshold=1.0, spike_when="ge")
    thr = X.lif_threshold(op)
    assert thr < np.float32(1.0) and np.nextafter(thr, np.float32(2)) == np.float32(1.0)
    u = np.array([thr, 1.0], dtype=np.float32)
    assert list(u > thr) == [False, True]  # strict > on float32 is u >= 1


def test_a_threshold_that_float32_cannot_place_is_refused():
    """A scaled threshold that rounds to 0 has no float32 value below it that `>=` could use."""
    from saec.compiler.errors import CompileError

    assert X._strict_threshold(np.float32(0.0), "gt") == 0.0
    with pytest.raises(CompileError, match=r"no float32 threshold reproduces spike_when='ge' at v = 0.0"):
        X._strict_threshold(np.float32(0.0), "ge")


@pytest.mark.parametrize("decay", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("spike_when", ["gt", "ge"])
def test_norse_threshold_compares_like_the_spike_rule_in_norses_float32(decay, spike_when):
    """Norse (r ignored) sees v = gain * u with its own float32 gain dt * (1/tau); at u == threshold its v
    must exceed the written threshold for `ge` and not for `gt`. The step below is taken after scaling:
    before it, float32(nextafter(1, 0) * 0.01) == float32(0.01) and `>=` was lost."""
    import norse.torch

    lowered_tau = np.full((1,), X.DT / (1 - decay))
    graph = nir.NIRGraph(nodes={
        "input": nir.Input(input_type={"input": np.array([1])}),
        "lif": X._lif_node("lif", ops.LIF(decay=decay, threshold=1.0, spike_when=spike_when, lower_bound=None),
                           (1,), (1,), {}, "norse"),
        "output": nir.Output(output_type={"output": np.array([1])})},
        edges=[("input", "lif"), ("lif", "output")])
    np.testing.assert_array_equal(graph.nodes["lif"].tau, lowered_tau)
    assert np.all(graph.nodes["lif"].r == 1.0)
    v_at_threshold = np.float32(X.norse_gain(lowered_tau) * np.float32(1.0))
    thr = np.float32(graph.nodes["lif"].v_threshold.reshape(-1)[0])
    assert bool(v_at_threshold > thr) == (spike_when == "ge")
    if decay == 0.99:  # the old order: step below 1, then scale (in float64), then round to the float32 file
        old = np.float32(float(np.nextafter(np.float32(1.0), np.float32(0))) * (1 - decay))
        assert old == np.float32(1 - decay) and not v_at_threshold > old
    # And in Norse itself: one step from rest with a current of exactly the threshold (and just below it).
    logging.disable(logging.WARNING)
    try:
        net = norse.torch.from_nir(graph, dt=X.DT)
    finally:
        logging.disable(logging.NOTSET)
    with torch.no_grad():
        z, _ = net(torch.tensor([[1.0], [1.0 - 1 / 16]]), None)
    assert z.reshape(-1).tolist() == [1.0 if spike_when == "ge" else 0.0, 0.0]


def test_golden_data_is_saecs_encoder_and_trained_model(exported):
    gold = golden_trains(exported)
    spec, model = load_model(exported)
    from saec.training.data import make_splits

    _, val = make_splits(spec.data, seed=spec.training.seed)
    images = val.images[:4].float()
    (enc,) = model.graph.nodes(ops.PoissonEncode)
    train = poisson_encode(images, model.graph.op(enc), generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(gold[X.INPUT_NODE], train.numpy().transpose(1, 0, 2, 3, 4).reshape(4, 8, -1) > 0)
    with torch.no_grad():
        out = model(images, encoded=train, record={"conv1", "latent", "fc_dec", "output"})
    for layer in ("conv1", "latent", "fc_dec", "output"):
        ref = out.trains[layer].numpy().transpose(1, 0, *range(2, out.trains[layer].dim())).reshape(4, 8, -1) > 0
        np.testing.assert_array_equal(gold[f"{layer}.lif"], ref)
        assert ref.sum() > 0, layer
    np.testing.assert_array_equal(gold[X.OUTPUT_NODE], gold["output.lif"])


# ---------------------------------------------------------------- third-party simulators
def test_snntorch_reproduces_the_golden_spikes_exactly(exported):
    spikes, reference = golden_input(exported)
    got = run_importer(snntorch_net(exported / "export" / X.MODEL_FILE), spikes)
    assert reference.sum() > 100
    np.testing.assert_array_equal(got, reference)


def test_snntorch_target_file_gives_the_same_spikes(exported):
    spikes, reference = golden_input(exported)
    np.testing.assert_array_equal(run_importer(snntorch_net(exported / "export" / "model.snntorch.nir"), spikes),
                                  reference)


def test_norse_reproduces_the_golden_spikes_exactly_with_its_target(exported):
    spikes, reference = golden_input(exported)
    got = run_importer(norse_net(exported / "export" / "model.norse.nir"), spikes)
    np.testing.assert_array_equal(got, reference)


def test_norse_target_is_the_same_network_in_nir_terms(exported):
    """r = 1 with thresholds scaled by 1 - decay is an equivalent NIR parametrisation: saec simulates it identically."""
    spikes, _ = golden_input(exported)
    train = spikes.transpose(1, 0, *range(2, spikes.ndim))
    a = simulate_nir(exported / "export" / X.MODEL_FILE, train)
    b = simulate_nir(exported / "export" / "model.norse.nir", train)
    for node in a:
        np.testing.assert_array_equal(a[node], b[node])


def test_clamped_network_agreement_rate_is_measured(exported_clamped):
    run, _ = exported_clamped
    spikes, reference = golden_input(run)
    got = run_importer(snntorch_net(run / "export" / X.MODEL_FILE), spikes)
    report = agreement({"out": reference}, {"out": got})["out"]
    assert report["entries"] == reference.size and report["reference_spikes"] == reference.sum()
    assert report["matched"] == (reference & got).sum() and report["spikes"] == got.sum()
    rate = 1 - report["mismatches"] / report["entries"]
    # The floor acts on this network (gain 3 drives membranes below -1), so NIR cannot match it; most outputs agree.
    assert report["mismatches"] > 0 and 0.5 < rate < 1.0, report
    no_floor = simulate_nir(run / "export" / X.MODEL_FILE, spikes.transpose(1, 0, *range(2, spikes.ndim)))
    np.testing.assert_array_equal(got, no_floor[X.OUTPUT_NODE].reshape(got.shape[1], got.shape[0], -1)
                                  .transpose(1, 0, 2) > 0)  # snnTorch == NIR semantics without the floor


# ---------------------------------------------------------------- saec reads NIR
def test_saec_nir_saec_round_trip_gives_identical_spikes(exported):
    gold = golden_trains(exported)
    spikes = read_input_spikes(exported / "export" / X.GOLDEN_FILE, (1, 28, 28))
    result = simulate_nir(exported / "export" / X.MODEL_FILE, spikes)
    for node in ("conv1.lif", "latent.lif", "fc_dec.lif", "output.lif", X.OUTPUT_NODE):
        T, B = result[node].shape[:2]
        np.testing.assert_array_equal(result[node].reshape(T, B, -1).transpose(1, 0, 2) > 0, gold[node])
    ir, _ = nir_to_ir(read_nir(exported / "export" / X.MODEL_FILE))
    assert ir.op("latent.lif") == ops.LIF(decay=0.9, threshold=1.0, spike_when="gt", reset="zero", lower_bound=None)


def test_simulate_cli_writes_spikes_and_compares_with_golden(exported, tmp_path):
    out = tmp_path / "sim.npz"
    result = runner.invoke(app, ["simulate", str(exported / "export" / X.MODEL_FILE),
                                 "--input", str(exported / "export" / X.GOLDEN_FILE), "-o", str(out)])
    assert result.exit_code == 0, result.output
    gold = golden_trains(exported)
    for node in ("conv1.lif", "latent.lif", "fc_dec.lif", "output.lif", "output"):
        n = gold[node].size
        assert re.search(rf"^  {re.escape(node)} +{int(gold[node].sum()):,} +{int(gold[node].sum()):,} +0 of {n:,}"
                         r"  identical$", result.stdout, re.M), result.stdout
    assert result.stdout.strip().endswith("check passed: all 5 nodes reproduce the golden spikes exactly")
    saved = np.load(out)
    assert set(saved.files) == {"conv1.lif", "latent.lif", "fc_dec.lif", "output.lif", "output"}
    # and from a plain .npy [T, *shape] train (no batch axis): no golden, so no check
    npy = tmp_path / "one.npy"
    spikes = read_input_spikes(exported / "export" / X.GOLDEN_FILE, (1, 28, 28))
    np.save(npy, spikes[:, 0])
    result = runner.invoke(app, ["simulate", str(exported / "export" / X.MODEL_FILE), "--input", str(npy)])
    assert result.exit_code == 0, result.output
    assert "check" not in result.stdout
    single = np.load(tmp_path / "one.simulated.npz")
    np.testing.assert_array_equal(single["output"][:, 0], saved["output"][:, 0])


def _golden_with(run: Path, path: Path, change) -> Path:
    """A copy of the run's golden file with ``change(node -> [B, T, N] bool)`` applied."""
    trains = change(golden_trains(run))
    nir.write_data(path, nir.NIRGraphData(nodes={
        k: nir.NIRNodeData(observables={"spikes": nir.TimeGriddedData(data=v, dt=X.DT)}) for k, v in trains.items()}))
    return path


def test_simulate_is_a_check_that_fails_on_one_spike_moved_in_time(exported, tmp_path):
    """Same spike counts per (example, neuron), one spike one step later: exit 1, the layer named."""
    def move_one_spike(trains):
        latent = trains["latent.lif"].copy()
        b, t, n = next((b, t, n) for b, t, n in np.argwhere(latent)
                       if t + 1 < latent.shape[1] and not latent[b, t + 1, n])
        latent[b, t, n], latent[b, t + 1, n] = False, True
        return {**trains, "latent.lif": latent}

    moved = _golden_with(exported, tmp_path / "moved.nir", move_one_spike)
    assert np.array_equal(golden_trains(exported)["latent.lif"].sum(1), X.read_golden(moved)["latent.lif"].sum(1))
    result = runner.invoke(app, ["simulate", str(exported / "export" / X.MODEL_FILE), "--input", str(moved)])
    assert result.exit_code == 1, result.output
    assert re.search(r"^  latent.lif +\d+ +\d+ +2 of 256  DIFFERS$", result.stdout, re.M), result.stdout
    assert re.search(r"^  conv1.lif .* identical$", result.stdout, re.M)
    assert result.stdout.strip().endswith("check FAILED: 1 of 5 nodes differ from the golden spikes (latent.lif)")


def test_simulate_exit_status_in_a_shell_script(exported, exported_clamped):
    """What a CI script sees: the process's exit status, 0 for an exact export, 1 for an approximate one."""
    import subprocess
    import sys

    from tests.conftest import REPO

    def status(run: Path) -> int:
        return subprocess.run([sys.executable, "-m", "saec", "simulate", str(run / "export" / X.MODEL_FILE),
                               "--input", str(run / "export" / X.GOLDEN_FILE), "-o", str(run / "sim.npz")],
                              cwd=REPO, capture_output=True, timeout=300).returncode

    assert status(exported) == 0
    assert status(exported_clamped[0]) == 1


def test_simulate_of_an_approximate_export_exits_1(exported_clamped):
    run, _ = exported_clamped
    result = runner.invoke(app, ["simulate", str(run / "export" / X.MODEL_FILE),
                                 "--input", str(run / "export" / X.GOLDEN_FILE)])
    assert result.exit_code == 1, result.output
    assert "check FAILED" in result.stdout and "DIFFERS" in result.stdout


def test_simulate_reads_golden_files_with_the_old_end_names(exported, tmp_path):
    """Files written before the ends were renamed call them `_input` / `_output`: still read and checked."""
    legacy = _golden_with(exported, tmp_path / "legacy.nir",
                          lambda t: {{"input": "_input", "output": "_output"}.get(k, k): v for k, v in t.items()})
    assert set(nir.read_data(str(legacy)).nodes) >= {"_input", "_output"}
    np.testing.assert_array_equal(read_input_spikes(legacy, (1, 28, 28)),
                                  read_input_spikes(exported / "export" / X.GOLDEN_FILE, (1, 28, 28)))
    result = runner.invoke(app, ["simulate", str(exported / "export" / X.MODEL_FILE), "--input", str(legacy)])
    assert result.exit_code == 0, result.output
    assert re.search(r"^  output +\d[\d,]* +\d[\d,]* +0 of [\d,]+  identical$", result.stdout, re.M), result.stdout
    # and a model file with the old end names, checked against either golden file
    graph = nir.read(exported / "export" / X.MODEL_FILE)
    ends = {"input": "_input", "output": "_output"}
    old_graph = nir.NIRGraph(nodes={ends.get(k, k): v for k, v in graph.nodes.items()},
                             edges=[(ends.get(a, a), ends.get(b, b)) for a, b in graph.edges], metadata=graph.metadata)
    nir.write(tmp_path / "legacy_model.nir", old_graph)
    for golden in (legacy, exported / "export" / X.GOLDEN_FILE):
        result = runner.invoke(app, ["simulate", str(tmp_path / "legacy_model.nir"), "--input", str(golden)])
        assert result.exit_code == 0, result.output
        assert "check passed: all 5 nodes reproduce the golden spikes exactly" in result.stdout


def test_simulate_with_golden_data_of_another_graph_names_the_file(exported, tmp_path):
    other = _golden_with(exported, tmp_path / "other.nir",
                         lambda t: {("input" if k == "input" else f"x{k}"): v for k, v in t.items()})
    assert_one_line(runner.invoke(app, ["simulate", str(exported / "export" / X.MODEL_FILE), "--input", str(other)]),
                    r"other.nir: the golden data name none of the graph's neuron or output nodes")
    fewer = _golden_with(exported, tmp_path / "fewer.nir",
                         lambda t: {k: (v[:, :, :5] if k == "latent.lif" else v) for k, v in t.items()})
    assert_one_line(runner.invoke(app, ["simulate", str(exported / "export" / X.MODEL_FILE), "--input", str(fewer)]),
                    r"fewer.nir: golden node `latent.lif` holds \[T, B, neurons\] = \[8, 4, 5\], the graph gives "
                    r"\[8, 4, 8\]")


def nir_reference(x: np.ndarray, dt: float) -> dict[str, np.ndarray]:
    """Float64 forward-Euler simulation of the graph of :func:`mixed_graph`, written out by hand."""
    T, B = x.shape[:2]
    pooled = x.reshape(T, B, 2, 2, 2, 2, 2).sum(axis=(4, 6))  # [T, B, C, H/2, W/2]: 2x2 windows
    v_if = np.zeros((B, 2, 2, 2))
    v_lif = np.zeros((B, 3))
    v_li = np.zeros((B, 3))
    out = {k: [] for k in ("if", "lif", "li")}
    W = np.arange(24, dtype=np.float64).reshape(3, 8) / 40.0 - 0.2
    b = np.array([0.1, -0.05, 0.2])
    for t in range(T):
        v_if = v_if + dt * 2000.0 * pooled[t]  # IF: r = 2000
        z_if = v_if > 1.5
        v_if = np.where(z_if, 0.0, v_if)
        cur = z_if.reshape(B, -1) @ W.T + b
        v_lif = v_lif + dt / 5e-4 * (-v_lif + 4.0 * cur)  # LIF: tau 5e-4, r 4
        z_lif = v_lif > 0.9
        v_lif = np.where(z_lif, 0.0, v_lif)
        v_li = v_li + dt / 2e-3 * (-v_li + 10.0 * z_lif)  # LI: tau 2e-3, r 10
        out["if"].append(z_if), out["lif"].append(z_lif), out["li"].append(v_li.copy())
    return {k: np.stack(v) for k, v in out.items()}


def mixed_graph() -> nir.NIRGraph:
    """Input(2x4x4) -> SumPool2d(2) -> IF -> Flatten -> Affine(8->3) -> LIF -> LI -> Output."""
    shape = (2, 2, 2)
    nodes = {
        "in": nir.Input(input_type={"input": np.array([2, 4, 4])}),
        "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "if": nir.IF(r=np.full(shape, 2000.0), v_threshold=np.full(shape, 1.5), v_reset=np.zeros(shape)),
        "flat": nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1),
        "fc": nir.Affine(weight=np.arange(24, dtype=np.float64).reshape(3, 8) / 40.0 - 0.2,
                         bias=np.array([0.1, -0.05, 0.2])),
        "lif": nir.LIF(tau=np.full(3, 5e-4), r=np.full(3, 4.0), v_leak=np.zeros(3), v_threshold=np.full(3, 0.9),
                       v_reset=np.zeros(3)),
        "li": nir.LI(tau=np.full(3, 2e-3), r=np.full(3, 10.0), v_leak=np.zeros(3)),
        "out": nir.Output(output_type={"output": np.array([3])}),
    }
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names, names[1:])), metadata={"dt": 1e-4})


def test_simulate_nir_matches_a_float64_reference_of_nir_semantics(tmp_path):
    path = tmp_path / "mixed.nir"
    nir.write(path, mixed_graph())
    x = (np.random.default_rng(0).random((12, 3, 2, 4, 4)) < 0.5).astype(np.float64)
    got = simulate_nir(path, x, dtype="float64")
    ref = nir_reference(x, 1e-4)
    np.testing.assert_array_equal(got["if"] > 0, ref["if"])
    np.testing.assert_array_equal(got["lif"] > 0, ref["lif"])
    np.testing.assert_allclose(got["li"], ref["li"], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got["out"], got["li"])
    assert ref["if"].any() and ref["lif"].any() and not ref["lif"].all()


def test_nir_to_saec_to_nir_keeps_every_array(tmp_path):
    graph = mixed_graph()
    ir, weights = nir_to_ir(graph)
    back = X.ir_to_nir(ir, weights)
    assert [type(back.nodes[n]).__name__ for n in ("pool", "if", "flat", "fc", "lif", "li")] == \
        ["SumPool2d", "IF", "Flatten", "Affine", "LIF", "LI"]
    np.testing.assert_array_equal(back.nodes["fc"].weight, graph.nodes["fc"].weight.astype(np.float32))
    np.testing.assert_allclose(back.nodes["lif"].tau, graph.nodes["lif"].tau, rtol=1e-12)
    x = (np.random.default_rng(1).random((10, 2, 2, 4, 4)) < 0.5).astype(np.float64)
    a, b = simulate_nir(graph, x, dtype="float64"), simulate_nir(back, x, dtype="float64")
    np.testing.assert_array_equal(a["lif"], b["lif"])
    np.testing.assert_allclose(a["li"], b["li"], rtol=1e-9)


def test_flatten_and_affine_export_runs_in_snntorch_with_its_target():
    """A graph NIR expresses with Flatten + Affine (no reshape follows): snnTorch needs the dims shifted past batch."""
    ir = IRGraph({"kind": "sae", "timesteps": 5})
    ir.add("_input", ops.Input(shape=(2, 3, 3)))
    ir.add("flat", ops.Flatten(), ("_input",))
    ir.add("fc", ops.Linear(in_features=18, out_features=4, bias=True), ("flat",))
    ir.add("fc.lif", ops.LIF(decay=0.8, lower_bound=None), ("fc",), layer="fc")
    ir.add("_output", ops.Output(), ("fc.lif",))
    infer_shapes(ir)
    gen = np.random.default_rng(2)
    weights = {"fc.weight": gen.normal(0, 0.6, (4, 18)).astype(np.float32),
               "fc.bias": np.array([0.2, 0.0, -0.1, 0.3], dtype=np.float32)}
    x = (gen.random((5, 3, 2, 3, 3)) < 0.5).astype(np.float32)
    saec_out = simulate_nir(X.ir_to_nir(ir, weights), x)[X.OUTPUT_NODE]
    got = run_importer(snntorch_net_from(X.ir_to_nir(ir, weights, target="snntorch")), x.transpose(1, 0, 2, 3, 4))
    np.testing.assert_array_equal(got, saec_out.transpose(1, 0, 2) > 0)
    assert 0 < saec_out.sum() < saec_out.size


def snntorch_net_from(graph: nir.NIRGraph):
    from snntorch.import_nir import import_from_nir

    with contextlib.redirect_stdout(io.StringIO()):
        return import_from_nir(graph)


# ---------------------------------------------------------------- reading errors
@pytest.mark.parametrize("node, change, message", [
    ("lif", {"tau": np.array([5e-4, 5e-4, 6e-4])}, "node `lif`: parameter tau differs across neurons"),
    ("lif", {"v_leak": np.full(3, 0.5)}, "node `lif`: v_leak must be 0"),
    ("if", {"v_reset": np.full((2, 2, 2), -1.0)}, "node `if`: v_reset must be 0"),
])
def test_nir_parameters_saec_cannot_simulate_are_named(node, change, message):
    graph = mixed_graph()
    for field, value in change.items():
        setattr(graph.nodes[node], field, value)
    with pytest.raises(UserError, match=re.escape(message)):
        simulate_nir(graph, np.zeros((2, 1, 2, 4, 4)))


def test_unsupported_nir_node_is_named():
    graph = mixed_graph()
    graph.nodes["li"] = nir.CubaLI(tau_syn=np.full(3, 1e-3), tau_mem=np.full(3, 1e-3), r=np.ones(3),
                                   v_leak=np.zeros(3))
    with pytest.raises(UserError, match="node `li`: NIR node type CubaLI is not supported"):
        simulate_nir(graph, np.zeros((2, 1, 2, 4, 4)))


def test_input_spikes_of_the_wrong_shape_are_rejected():
    with pytest.raises(UserError, match=r"input spikes must be \[T, B, 2x4x4\] or \[T, 2x4x4\] for this graph, "
                                        r"got \[3, 1, 4, 4\]"):
        check_input_spikes(np.zeros((3, 1, 4, 4)), (2, 4, 4))


# ---------------------------------------------------------------- bad input at the command line
def assert_one_line(result, pattern: str) -> None:
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert "\n" not in err and "Traceback" not in result.output, result.output
    assert re.search(pattern, err), err


def test_export_of_a_missing_run_folder(tmp_path):
    result = runner.invoke(app, ["export", str(tmp_path / "nope"), "--format", "nir"])
    assert_one_line(result, r"nope: no such run folder$")


def test_export_of_a_folder_that_is_not_a_run(tmp_path):
    result = runner.invoke(app, ["export", str(tmp_path), "--format", "nir"])
    assert_one_line(result, r"not a saec run folder \(no spec.yaml\)")


def test_export_of_a_strided_conv_transpose_names_the_layer_and_line(tmp_path):
    text = TINY.replace("kernel_size: 5}\n  - {name: flat", "kernel_size: 4, stride: 2}\n  - {name: flat").replace(
        "out_features: 1152", "out_features: 338").replace("shape: [2, 24, 24]", "shape: [2, 13, 13]").replace(
        "out_channels: 1, kernel_size: 5}", "out_channels: 1, kernel_size: 4, stride: 2}")
    run = make_run(tmp_path / "run", text, NO_CLAMP)
    result = runner.invoke(app, ["export", str(run), "--format", "nir"])
    assert_one_line(result, r"spec.yaml:\d+: layers.output: cannot export to NIR: a transposed convolution with "
                            r"stride 2x2 has no NIR equivalent")
    assert not (run / "export").exists()  # nothing half-written


def test_export_of_a_non_spiking_run(tmp_path):
    text = TINY.replace("kind: sae", "kind: ae").replace("encoding: {type: poisson, timesteps: 8, scale: 0.5}\n", "")
    text = text.replace("neuron: {type: lif, decay: 0.9, threshold: 1.0, reset: zero}\n", "").replace(
        "readout: {type: max_cumulative_potential, scale: 0.5}\n", "")
    run = make_run(tmp_path / "ae", text)
    assert_one_line(runner.invoke(app, ["export", str(run)]),
                    r"spec.yaml: kind: cannot export to NIR: kind ae has no spiking neurons")


def test_export_with_an_unknown_format_or_target(exported):
    assert_one_line(runner.invoke(app, ["export", str(exported), "--format", "tflite"]),
                    r"--format: unknown format 'tflite'; use one of nir, onnx")
    # (loihi, the name this used, is a chip with its own exporter now: tests/exporters/test_netx.py)
    assert_one_line(runner.invoke(app, ["export", str(exported), "--target", "truenorth"]),
                    r"--target: unknown NIR target 'truenorth'; use one of standard, snntorch, norse")


def test_simulate_a_corrupted_nir_file(exported, tmp_path):
    bad = tmp_path / "bad.nir"
    bad.write_bytes((exported / "export" / X.MODEL_FILE).read_bytes()[:2000])
    result = runner.invoke(app, ["simulate", str(bad), "--input", str(exported / "export" / X.GOLDEN_FILE)])
    assert_one_line(result, r"bad.nir: not a readable NIR file")
    text = tmp_path / "text.nir"
    text.write_text("hello")
    assert_one_line(runner.invoke(app, ["simulate", str(text), "--input", "x.npy"]), r"text.nir: not a readable NIR")


def test_simulate_with_a_bad_input_file(exported, tmp_path):
    model = str(exported / "export" / X.MODEL_FILE)
    missing = runner.invoke(app, ["simulate", model, "--input", str(tmp_path / "none.npy")])
    assert_one_line(missing, r"none.npy: no such input file")
    junk = tmp_path / "junk.npy"
    junk.write_text("not numpy")
    assert_one_line(runner.invoke(app, ["simulate", model, "--input", str(junk)]), r"junk.npy: not a .npy array")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 2, 28, 27)))
    assert_one_line(runner.invoke(app, ["simulate", model, "--input", str(wrong)]),
                    r"wrong.npy: input spikes must be \[T, B, 1x28x28\] or \[T, 1x28x28\] for this graph, "
                    r"got \[4, 2, 28, 27\]")


# ---------------------------------------------------------------- semantics NIR cannot express
@pytest.mark.parametrize("overrides, pattern", [
    (REVIVE, r"spec.yaml:\d+: neuron.lower_bound: cannot export to NIR exactly: NIR's LIF has no membrane floor "
             r"\(u < -1 is set to \+threshold\) on layers conv1, latent, fc_dec, output; train with "
             r"neuron.lower_bound: null for deployment, or pass --approximate to export anyway"),
    (("neuron.lower_bound=-0.5", "neuron.lower_bound_mode=clamp"),
     r"spec.yaml:\d+: neuron.lower_bound: cannot export to NIR exactly: NIR's LIF has no membrane floor "
     r"\(u < -0.5 is clamped to -0.5\) on layers conv1, latent, fc_dec, output;"),
    (NO_CLAMP + ("neuron.reset=subtract",),
     r"spec.yaml:\d+: neuron.reset: cannot export to NIR exactly: NIR's LIF resets to v_reset after a spike; it "
     r"cannot subtract the threshold \(reset: subtract\) on layers conv1, latent, fc_dec, output; train with "
     r"neuron.reset: zero"),
    (NO_CLAMP + ("layers.latent.neuron={reset: none}",),
     r"spec.yaml:\d+: layers.latent.neuron.reset: cannot export to NIR exactly: NIR's LIF always resets to v_reset "
     r"after a spike \(reset: none keeps the potential\) on layers latent;"),
    (REVIVE + ("neuron.reset=subtract",),
     r"neuron.lower_bound: .* on layers conv1, latent, fc_dec, output; and reset on layers conv1, latent, fc_dec, "
     r"output; train with neuron.lower_bound: null"),
], ids=["revive", "clamp", "subtract", "layer_override_none", "two_fields"])
def test_export_refuses_semantics_nir_cannot_express(tmp_path, overrides, pattern):
    run = make_run(tmp_path / "run", TINY, overrides)
    for target in ("standard", "norse"):
        assert_one_line(runner.invoke(app, ["export", str(run), "--format", "nir", "--target", target]), pattern)
    assert not (run / "export").exists()  # nothing written


def test_approximate_export_prints_the_agreement_it_measured(exported_clamped):
    """The table's numbers are those of saec's NIR simulation of the written file against the golden trains."""
    run, result = exported_clamped
    gold = golden_trains(run)
    spikes = read_input_spikes(run / "export" / X.GOLDEN_FILE, (1, 28, 28))
    simulated = simulate_nir(run / "export" / X.MODEL_FILE, spikes)
    total = differ = 0
    for node in ("conv1.lif", "latent.lif", "fc_dec.lif", "output.lif", "output"):
        T, B = simulated[node].shape[:2]
        got = simulated[node].reshape(T, B, -1).transpose(1, 0, 2) > 0
        n_diff, n = int((got != gold[node]).sum()), got.size
        total, differ = total + n, differ + n_diff
        verdict = "DIFFERS" if n_diff else "identical"
        assert re.search(rf"^  {re.escape(node)} +{int(gold[node].sum()):,} +{int(got.sum()):,} +{n_diff:,} of "
                         rf"{n:,}  {verdict}$", result.stdout, re.M), (node, result.stdout)
    assert differ > 0  # the floor acts on this network
    assert f"check: saec's NIR simulation of model.nir on the golden input: {differ:,} of {total:,} spike " \
           "positions differ from saec" in result.stdout


def test_exact_export_says_its_check_passed(exported):
    result = export(exported)
    assert "check: saec's NIR simulation of model.nir on the golden input: identical spike trains in every layer" \
        in result.stdout
    assert "DIFFERS" not in result.stdout and "--approximate" not in result.stderr


def test_onnx_exports_the_floor_that_nir_refuses_exactly(exported_clamped):
    """The same floored run: ONNX expresses the revive floor, so its export needs no --approximate and
    reproduces saec's spike trains in every layer on the golden input."""
    from saec.exporters.onnx import compare_with_runtime

    run, _ = exported_clamped
    result = runner.invoke(app, ["export", str(run), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    spikes = read_input_spikes(run / "export" / X.GOLDEN_FILE, (1, 28, 28))
    _, model = load_model(run)
    agreement = compare_with_runtime(run / "export" / "model.onnx", model, torch.from_numpy(spikes))
    assert agreement.spikes_exact, agreement.train_mismatches
    assert all(v > 0 for v in agreement.spikes.values())
    # and the floor acts here: saec's NIR simulation (no floor) differs from these trains
    assert "DIFFERS" in exported_clamped[1].stdout


def test_approximate_is_for_nir_only(exported):
    assert_one_line(runner.invoke(app, ["export", str(exported), "--format", "onnx", "--approximate"]),
                    r"--approximate: --approximate applies to --format nir only \(onnx exports the network exactly\)")


# ---------------------------------------------------------------- gt / ge end to end, ties on the threshold
def dyadic_run(folder: Path, decay: float, spike_when: str) -> Path:
    """A no-floor run whose weights are multiples of 1/16: sums of them are exact in float32, so potentials
    land exactly on the threshold 1.0 (at step 0 for any decay; at every step when decay is dyadic)."""
    from safetensors.numpy import load_file, save_file

    run = make_run(folder, TINY, (f"neuron.decay={decay}", f"neuron.spike_when={spike_when}"))
    weights = load_file(run / A.WEIGHTS)
    save_file({k: (np.round(v * 16) / 16).astype(np.float32) for k, v in weights.items()}, run / A.WEIGHTS)
    export(run, "--target", "norse")
    return run


@pytest.fixture(scope="module", params=[0.5, 0.99], ids=["decay0.5", "decay0.99"])
def dyadic_runs(request, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp(f"dyadic{request.param}")
    return {rule: dyadic_run(folder / rule, request.param, rule) for rule in ("gt", "ge")}


LIF_NODES = ("conv1.lif", "latent.lif", "fc_dec.lif", "output.lif")


def test_dyadic_weights_put_potentials_on_the_threshold(dyadic_runs):
    """Same weights and input: `gt` and `ge` differ only where u == threshold, so their golden trains differ
    (in the first layer at step 0, and after it): the comparisons below are not vacuous."""
    gt, ge = golden_trains(dyadic_runs["gt"]), golden_trains(dyadic_runs["ge"])
    np.testing.assert_array_equal(gt[X.INPUT_NODE], ge[X.INPUT_NODE])
    assert (gt["conv1.lif"][:, 0] != ge["conv1.lif"][:, 0]).sum() > 0
    assert (gt["conv1.lif"][:, 1:] != ge["conv1.lif"][:, 1:]).sum() > 0


@pytest.mark.parametrize("rule", ["gt", "ge"])
def test_snntorch_and_norse_reproduce_every_spike_train_of_gt_and_ge(dyadic_runs, rule):
    """snnTorch on model.nir, Norse on model.norse.nir: every LIF layer's spike train and the output,
    position by position (t, example, neuron)."""
    run = dyadic_runs[rule]
    gold = golden_trains(run)
    spikes, _ = golden_input(run)
    for name, net in (("snntorch", snntorch_net(run / "export" / X.MODEL_FILE)),
                      ("norse", norse_net(run / "export" / "model.norse.nir"))):
        trains = run_importer_layers(net, spikes)
        assert set(trains) == {*LIF_NODES, X.OUTPUT_NODE}, name
        for node in (*LIF_NODES, X.OUTPUT_NODE):
            assert gold[node].any(), node
            np.testing.assert_array_equal(trains[node], gold[node], err_msg=f"{name}: {node} ({rule})")


# ---------------------------------------------------------------- the paper's SAE
@pytest.mark.slow
def test_paper_sae_export_is_reproduced_by_snntorch_and_norse(tmp_path):
    """specs/sae.yaml at T = 20 without the floor: every output spike of 16 validation images, exactly."""
    run = make_run(tmp_path / "sae", (SPECS / "sae.yaml").read_text(),
                   ("encoding.timesteps=20", "neuron.lower_bound=null", "data.dataset=mnist5k",
                    "data.validation.source=split"), gain=1.0)
    export(run, "--target", "norse", "--examples", "16")
    spikes, reference = golden_input(run)
    snn = run_importer(snntorch_net(run / "export" / X.MODEL_FILE), spikes)
    nor = run_importer(norse_net(run / "export" / "model.norse.nir"), spikes)
    print(f"\npaper SAE, T=20, 16 images: {int(reference.sum())} golden output spikes of {reference.size}; "
          f"snnTorch mismatches {int((snn != reference).sum())}, Norse mismatches {int((nor != reference).sum())}")
    assert reference.sum() > 0
    np.testing.assert_array_equal(snn, reference)
    np.testing.assert_array_equal(nor, reference)
