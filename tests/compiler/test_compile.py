"""The compiler: IR build, passes, JSON round trip, Table 2 parameter counts, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from saec.cli import app
from saec.compiler import ops
from saec.compiler.errors import CompileError
from saec.compiler.graph import IRGraph
from saec.compiler.pipeline import FLOWS, PASSES, compile_spec, register_flow, register_pass, run_flow, summarize
from tests.conftest import REPO, SPECS

runner = CliRunner()

TABLE2 = {  # paper Table 2: trainable parameters by latent size
    "sae": {10: 282_400, 20: 538_400, 50: 1_306_400, 100: 2_586_400},
    "ae": {10: 295_210, 20: 551_220, 50: 1_319_250, 100: 2_599_300},
    "vae": {10: 423_220, 20: 807_240, 50: 1_959_300, 100: 3_879_400},
}


@pytest.mark.parametrize("kind", sorted(TABLE2))
@pytest.mark.parametrize("nz", [10, 20, 50, 100])
def test_parameter_counts_equal_table2(kind, nz, tmp_path):
    out = tmp_path / "ir.json"
    result = runner.invoke(app, ["compile", str(SPECS / f"{kind}.yaml"), "--set",
                                 f"layers.latent.out_features={nz}", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["summary"]["total_params"] == TABLE2[kind][nz]


def test_every_shipped_spec_compiles():
    paths = sorted(SPECS.glob("*.yaml")) + sorted(SPECS.glob("reference/*.yaml")) + sorted(SPECS.glob("paper/*.yaml"))
    names = {p.stem for p in SPECS.glob("*.yaml")}
    assert {"sae", "sae_sparse", "sae_dense", "ae", "ae_l2", "vae", "beta_vae"} <= names
    assert {p.stem for p in SPECS.glob("reference/*.yaml")} == {"sae", "sae_sparse", "sae_dense"}
    for path in paths:
        compile_spec(str(path))


def test_shapes_and_cost_of_the_paper_sae():
    _, graph = compile_spec(str(SPECS / "sae_dense.yaml"))
    shapes = {n: tuple(graph.meta(n)["shape"]) for n in graph.order()}
    assert shapes["conv1.lif"] == (16, 24, 24)
    assert shapes["conv2"] == (32, 20, 20)
    assert shapes["latent.lif"] == (100,)
    assert shapes["deconv1"] == (16, 24, 24)
    assert shapes["_output"] == (1, 28, 28)
    s = summarize(graph)
    # neurons: 16*24*24 + 32*20*20 + 100 + 12800 + 16*24*24 + 784
    assert s["neurons"] == 9216 + 12800 + 100 + 12800 + 9216 + 784
    # MACs per step: conv 24*24*16*25 + 20*20*32*16*25 + 2*12800*100 + 20*20*32*16*25 + 24*24*16*25
    assert s["macs_per_step"] == 230_400 + 5_120_000 + 2 * 1_280_000 + 5_120_000 + 230_400
    assert s["macs_per_example"] == s["macs_per_step"] * 100


def test_synapses_exclude_padding_taps():
    _, graph = compile_spec(str(SPECS / "sae.yaml"), ["layers.conv1.padding=2"])
    meta = graph.meta("conv1")
    assert meta["macs"] == 28 * 28 * 16 * 25
    # taps inside a 28-wide input along one axis, k=5, pad 2: 28*5 - (2+1) - (2+1) = 134
    assert meta["synapses"] == 16 * 134 * 134


def test_lif_ops_carry_overrides_and_surrogate():
    _, graph = compile_spec(str(SPECS / "sae.yaml"), ["layers.latent.neuron={threshold: 2.0}",
                                                      "surrogate.type=arctan", "surrogate.slope=3"])
    lat, conv = graph.op("latent.lif"), graph.op("conv1.lif")
    assert lat.threshold == 2.0 and conv.threshold == 1.0
    assert lat.surrogate == "arctan" and lat.slope == 3.0
    assert lat.decay == conv.decay == 0.99


def test_graph_attrs_for_losses():
    _, graph = compile_spec(str(SPECS / "sae_sparse.yaml"))
    losses = graph.attrs["losses"]
    all_layers = ["conv1", "conv2", "latent", "fc_dec", "deconv1", "output"]
    assert losses["p1"] == {"weight": 0.005, "layers": all_layers}
    assert losses["a1"] == {"weight": 0.01, "layers": all_layers}
    assert graph.attrs["latent_node"] == "latent.lif"


def test_vae_graph():
    _, graph = compile_spec(str(SPECS / "vae.yaml"))
    assert graph.op("latent").out_features == 200
    assert isinstance(graph.op("latent.sample"), ops.Reparameterize)
    assert graph.attrs["latent_node"] == "latent.sample"
    assert graph.attrs["losses"]["beta"] == 1.0


@pytest.mark.parametrize("spec", ["sae_dense", "vae", "ae"])
def test_ir_json_round_trip(spec, tmp_path):
    out = tmp_path / "ir.json"
    result = runner.invoke(app, ["compile", str(SPECS / f"{spec}.yaml"), "-o", str(out), "-q"])
    assert result.exit_code == 0
    doc = json.loads(out.read_text())
    assert {"total_params", "neurons", "macs_per_step"} <= set(doc["summary"])
    _, graph = compile_spec(str(SPECS / f"{spec}.yaml"))
    loaded = IRGraph.read_json(out)
    assert loaded == graph
    assert loaded.op("conv1") == graph.op("conv1")
    assert loaded.order() == graph.order()


def test_lint_names_both_ends_of_a_bad_edge():
    _, graph = compile_spec(str(SPECS / "sae.yaml"))
    graph.meta("conv2")["shape"] = (32, 19, 20)
    with pytest.raises(CompileError, match=r"edge `conv1.lif` -> `conv2`: `conv1.lif` gives 16x24x24"):
        run_flow(graph, "compile") if False else PASSES["lint"](graph)


def test_lint_rejects_cycles():
    _, graph = compile_spec(str(SPECS / "sae.yaml"))
    graph.nx.add_edge("output.lif", "conv1")
    with pytest.raises(CompileError, match="cycle"):
        PASSES["lint"](graph)


def test_flow_runs_passes_in_order_and_adds_context():
    ran: list[str] = []
    register_pass("dummy_a", lambda g: ran.append("a") or False)
    register_pass("dummy_b", lambda g: ran.append("b") or True)

    def fail(g):
        raise CompileError("boom", node="conv1")

    register_pass("dummy_fail", fail)
    register_flow("dummy", ["dummy_b", "dummy_a"])
    register_flow("dummy_bad", ["dummy_a", "dummy_fail"])
    try:
        _, graph = compile_spec(str(SPECS / "sae.yaml"))
        report = run_flow(graph, "dummy")
        assert ran == ["b", "a"] and report.ran == ["dummy_b", "dummy_a"] and report.changed == ["dummy_b"]
        with pytest.raises(CompileError, match=r"pass `dummy_fail` of flow `dummy_bad` failed after \[build, dummy_a\]"):
            run_flow(graph, "dummy_bad")
    finally:
        for name in ("dummy", "dummy_bad"):
            FLOWS.pop(name)
        for name in ("dummy_a", "dummy_b", "dummy_fail"):
            PASSES.pop(name)


def test_compile_prints_the_table():
    result = runner.invoke(app, ["compile", str(SPECS / "sae_dense.yaml")])
    assert result.exit_code == 0, result.output
    assert "2,586,400" in result.output and "13,260,800" in result.output
    assert "latent" in result.output and "spike u>threshold" in result.output


def test_schema_command_prints_json_schema():
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["title"] == "Spec" and "layers" in schema["properties"]
    assert schema["properties"]["kind"]["description"]


def test_every_schema_field_has_a_description():
    from pydantic import BaseModel

    from saec.spec import schema as S

    models = [m for m in vars(S).values() if isinstance(m, type) and issubclass(m, BaseModel) and m is not BaseModel
              and m is not S.Strict]
    for model in models:
        for name, field in model.model_fields.items():
            if name == "type" and model.__name__.endswith("Spec") and "Layer" not in model.__name__ and \
                    model in (S.Conv2dSpec, S.ConvTranspose2dSpec, S.LinearSpec, S.FlattenSpec, S.UnflattenSpec):
                continue  # layer tags are described by the union
            assert field.description, f"{model.__name__}.{name}"


def test_compile_does_not_import_torch_and_is_fast():
    code = (
        "import sys, time; t=time.perf_counter();"
        "from saec.cli import app;"
        "from typer.testing import CliRunner;"
        f"r=CliRunner().invoke(app, ['compile', {str(SPECS / 'sae_dense.yaml')!r}, '-q']);"
        "assert r.exit_code == 0, r.output;"
        "print(time.perf_counter()-t);"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    elapsed, torch_loaded = out.stdout.split()
    assert torch_loaded == "False"
    # Imports included; generous because CI machines are shared (the compile itself: next test).
    assert float(elapsed) < 3.0, elapsed


def test_compile_command_timing_after_startup():
    from saec.compiler.pipeline import compile_spec as cs

    t0 = time.perf_counter()
    cs(str(SPECS / "sae_dense.yaml"))
    assert time.perf_counter() - t0 < 0.5
