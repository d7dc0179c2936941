"""Flows of rewrites re-check the shapes after every pass; each NIR lowering is a pass of its own file."""

from __future__ import annotations

from pathlib import Path

import pytest

from saec.compiler import ops
from saec.compiler.errors import CompileError
from saec.compiler.pipeline import FLOWS, PASSES, RECHECKED_FLOWS, compile_spec, register_flow, register_pass, run_flow
from tests.conftest import SPECS

PASSES_DIR = Path(__file__).resolve().parents[2] / "saec" / "compiler" / "passes"


@pytest.fixture()
def graph():
    return compile_spec(str(SPECS / "sae.yaml"))[1]


def _with_flow(passes: dict, flow: list[str], recheck: bool):
    for name, fn in passes.items():
        register_pass(name, fn)
    register_flow("test_flow", flow, recheck_shapes=recheck)


def _cleanup(names):
    FLOWS.pop("test_flow", None)
    RECHECKED_FLOWS.discard("test_flow")
    for name in names:
        PASSES.pop(name, None)


def _widen_first_conv(g) -> bool:
    """A broken rewrite: more output channels, shapes not re-inferred."""
    conv = next(iter(g.nodes(ops.Conv2d)))
    g.replace_op(conv, g.with_op(conv, out_channels=g.op(conv).out_channels + 1))
    return True


def test_a_pass_that_records_a_wrong_shape_is_caught_naming_it(graph):
    def misrecord(g):
        g.meta("_readout")["shape"] = (9, 9, 9)
        return True

    _with_flow({"test_misrecord": misrecord}, ["test_misrecord", "lint"], recheck=True)
    try:
        with pytest.raises(CompileError, match=r"pass `test_misrecord` of flow `test_flow` broke the graph's "
                                               r"shapes: records shape 9x9x9, but its op gives 1x28x28") as info:
            run_flow(graph, "test_flow")
        assert info.value.node == "_readout"
    finally:
        _cleanup(["test_misrecord"])


def test_a_rewrite_whose_user_no_longer_fits_is_caught_naming_it(graph):
    _with_flow({"test_widen": _widen_first_conv}, ["test_widen"], recheck=True)
    try:
        with pytest.raises(CompileError, match=r"pass `test_widen` of flow `test_flow` broke the graph's shapes: "
                                               r"expects 16 input channels, got 17x24x24") as info:
            run_flow(graph, "test_flow")
        assert info.value.node == "conv2"
    finally:
        _cleanup(["test_widen"])


def test_without_the_recheck_the_same_pass_goes_unnoticed(graph):
    """The check is what catches it (the flow's own passes would not)."""
    _with_flow({"test_widen": _widen_first_conv}, ["test_widen"], recheck=False)
    try:
        assert run_flow(graph, "test_flow").changed == ["test_widen"]
    finally:
        _cleanup(["test_widen"])


def test_the_nir_flow_is_rechecked_and_each_lowering_has_its_own_file():
    assert "nir" in RECHECKED_FLOWS
    lowerings = [p for p in FLOWS["nir"] if p not in FLOWS["compile"]]
    assert lowerings == ["lower_conv_transpose", "lower_linear_unflatten", "lower_flatten_linear", "fold_reshapes"]
    for name in lowerings:
        fn = PASSES[name]
        assert fn.__module__ == f"saec.compiler.passes.{name}", fn.__module__
        assert (PASSES_DIR / f"{name}.py").is_file()


def test_the_lowered_graph_carries_a_current_execution_plan(graph):
    from saec.compiler.passes.exec_plan import plan_is_current

    lowered = graph.copy()
    report = run_flow(lowered, "nir", after="compile")
    assert "lower_conv_transpose" in report.changed and "exec_plan" in report.changed  # rewritten, so replanned
    assert plan_is_current(lowered)


def test_a_rewired_graph_copies_and_round_trips_through_json():
    """A rewrite that moves a node in front of an older one (as lower_linear_unflatten moves the unflatten in
    front of its linear) leaves insertion order no longer topological; copy() and ir.json still rebuild the
    graph, each node after its inputs."""
    from saec.compiler.graph import IRGraph

    g = IRGraph({"kind": "sae"})
    g.add("_input", ops.Input(shape=(4,)))
    g.add("fc", ops.Linear(in_features=4, out_features=4), ("_input",))
    g.add("fc.lif", ops.LIF(), ("fc",), layer="fc")
    g.add("_output", ops.Output(), ("fc.lif",))
    g.add("moved", ops.ReLU(), ("_input",))  # added last, wired in front of fc
    g.rewire("fc", ("moved",))
    assert list(g.nx.nodes) != g.order() == ["_input", "moved", "fc", "fc.lif", "_output"]
    for again in (g.copy(), IRGraph.from_dict(g.to_dict()), IRGraph.from_dict(__import__("json").loads(g.to_json()))):
        assert again.order() == g.order()
        assert [(again.op(n), again.inputs(n)) for n in again.order()] == [(g.op(n), g.inputs(n)) for n in g.order()]


def test_a_compiled_graph_keeps_its_json_node_order(graph):
    assert [node["name"] for node in graph.to_dict()["nodes"]] == list(graph.nx.nodes) == graph.order()
