"""The execution-plan pass: what it writes into meta["exec"], from the IR alone, without torch."""

from __future__ import annotations

import json
import subprocess
import sys

from saec.compiler import ops
from saec.compiler.graph import IRGraph
from saec.compiler.passes.exec_plan import ATTR_KEY, META_KEY, plan_execution, plan_is_current, u_last_layers
from saec.compiler.pipeline import compile_spec
from tests.conftest import REPO, SPECS


def _planned_sae():
    _, graph = compile_spec(str(SPECS / "sae_dense.yaml"), ["encoding.timesteps=2"])
    assert plan_is_current(graph)  # the compile flow plans: ir.json carries what the runtime runs
    return plan_execution(graph)


def test_plan_of_the_dense_sae():
    graph = _planned_sae()
    plan = {name: graph.meta(name)[META_KEY] for name in graph.order()}
    # each value is freed by its only user
    assert plan["conv1"]["frees"] == ["_encode"] and plan["_output"]["frees"] == ["_readout"]
    assert plan["_input"]["frees"] == []
    # conv2's spikes reach the latent Linear through the flatten: its current stays contiguous
    assert plan["conv2"]["contiguous_out"] is True and plan["conv1"]["contiguous_out"] is False
    assert plan["latent"]["contiguous_out"] is True
    # fc_dec -> LIF -> unflatten(32, 20, 20) -> deconv1: the Linear hands out its current unflattened
    assert plan["fc_dec"]["out_sample"] == [32, 20, 20]
    assert all(plan[n]["out_sample"] is None for n in ("conv1", "conv2", "latent", "deconv1", "output"))
    # both reshapes feed synapses only
    assert plan["flat"]["defer_reshape"] is True and plan["unflat"]["defer_reshape"] is True
    # the readout needs U(1..T) of the output layer; P2 reads U(T) of every layer
    assert plan["output.lif"]["cumulative"] == "all"
    assert {plan[n]["cumulative"] for n in graph.nodes(ops.LIF) if n != "output.lif"} == {"last"}
    assert all(plan[n]["u_last"] for n in graph.nodes(ops.LIF))
    assert u_last_layers(graph) == {"conv1", "conv2", "latent", "fc_dec", "deconv1", "output"}
    assert plan_is_current(graph)


def _chain(*, second_user: bool = False, losses: dict | None = None) -> IRGraph:
    """input -> linear -> lif -> flatten -> linear2 -> lif2 -> readout -> output (no shapes needed)."""
    graph = IRGraph({"losses": losses or {}})
    graph.add("in", ops.Input(shape=(4,)))
    graph.add("fc", ops.Linear(in_features=4, out_features=6), ("in",), layer="fc")
    graph.add("fc.lif", ops.LIF(), ("fc",), layer="fc")
    graph.add("flat", ops.Flatten(), ("fc.lif",))
    graph.add("fc2", ops.Linear(in_features=6, out_features=4), ("flat",), layer="fc2")
    graph.add("fc2.lif", ops.LIF(), ("fc2",), layer="fc2")
    graph.add("readout", ops.MaxCumulativeReadout(), ("fc2.lif",))
    if second_user:  # a reshape read by something other than a synapse
        graph.add("relu", ops.ReLU(), ("flat",))
    graph.add("out", ops.Output(), ("readout",))
    return graph


def test_plan_follows_the_graph():
    graph = plan_execution(_chain(losses={"p1": {"layers": ["fc"]}}))
    meta = lambda n: graph.meta(n)[META_KEY]  # noqa: E731
    assert meta("fc")["contiguous_out"] is True  # its spikes reach fc2 through the flatten
    assert meta("fc2")["contiguous_out"] is False
    assert meta("fc.lif")["cumulative"] == "last" and meta("fc.lif")["u_last"] is True
    assert meta("fc2.lif")["cumulative"] == "all" and meta("fc2.lif")["u_last"] is False
    assert meta("flat")["defer_reshape"] is True
    # a value read by two nodes is freed by the later one only
    branched = plan_execution(_chain(second_user=True))
    assert branched.meta("flat")[META_KEY]["defer_reshape"] is False
    assert "flat" not in branched.meta("fc2")[META_KEY]["frees"]
    assert branched.meta("relu")[META_KEY]["frees"] == ["flat"]


def test_a_changed_graph_is_no_longer_current_and_the_plan_survives_json():
    graph = plan_execution(_chain())
    assert plan_is_current(graph)
    copy = IRGraph.from_dict(json.loads(json.dumps(graph.to_dict())))
    assert plan_is_current(copy) and copy.meta("fc")[META_KEY] == graph.meta("fc")[META_KEY]
    graph.replace_op("fc2.lif", ops.LIF(threshold=2.0))  # any op change: planned afresh
    assert not plan_is_current(graph)
    stale = plan_execution(_chain())
    stale.attrs["losses"] = {"p2": {"layers": ["fc2"]}}  # the loss terms decide "last"
    assert not plan_is_current(stale)
    missing = plan_execution(_chain())
    del missing.meta("flat")[META_KEY]
    assert not plan_is_current(missing)
    assert ATTR_KEY in missing.attrs


def test_the_pass_imports_no_torch():
    """`saec compile` must not import torch: the pass is a pure function of the IR."""
    code = ("import sys; import saec.compiler.passes.exec_plan; "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
