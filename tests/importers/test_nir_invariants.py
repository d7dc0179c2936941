"""A NIR graph whose parameters break an op's invariants is refused with one located line."""

from __future__ import annotations

import re

import nir
import numpy as np
import pytest
from typer.testing import CliRunner

from saec.cli import app
from saec.importers.nir import simulate_nir
from saec.errors import UserError
from tests.exporters.test_nir import assert_one_line, mixed_graph

runner = CliRunner()


@pytest.mark.parametrize("node, field, value", [("lif", "tau", 5e-5), ("li", "tau", 2e-5)])
def test_a_neuron_with_tau_shorter_than_dt_is_refused_naming_it(node, field, value):
    graph = mixed_graph()  # dt = 1e-4 s in its metadata
    setattr(graph.nodes[node], field, np.full(3, value))
    kind = {"lif": "lif", "li": "leaky_integrator"}[node]
    with pytest.raises(UserError, match=re.escape(f"node `{node}`: {kind}: decay must lie in [0, 1], got -")) as info:
        simulate_nir(graph, np.zeros((2, 1, 2, 4, 4)))
    assert f"tau = {value:g} s is shorter than the time step dt = 0.0001 s" in str(info.value)


def test_simulate_command_refuses_tau_below_dt_in_one_line(tmp_path):
    graph = mixed_graph()
    graph.nodes["lif"].tau = np.full(3, 5e-5)
    path = tmp_path / "fast.nir"
    nir.write(path, graph)
    spikes = tmp_path / "in.npy"
    np.save(spikes, np.zeros((2, 1, 2, 4, 4), dtype=np.float32))
    result = runner.invoke(app, ["simulate", str(path), "--input", str(spikes)])
    assert_one_line(result, r"fast\.nir: cannot simulate: node `lif`: lif: decay must lie in \[0, 1\], got -1\.0; "
                            r"decay = 1 - dt/tau < 0 because tau = 5e-05 s")


def test_a_smaller_dt_makes_the_same_graph_valid():
    graph = mixed_graph()
    graph.nodes["lif"].tau = np.full(3, 5e-5)
    out = simulate_nir(graph, np.zeros((2, 1, 2, 4, 4)), dt=5e-5)
    assert out["lif"].shape == (2, 1, 3)


def test_any_op_invariant_a_node_breaks_is_located():
    graph = mixed_graph()
    graph.nodes["pool"] = nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([0, 2]),
                                        padding=np.array([0, 0]))
    with pytest.raises(UserError, match=re.escape("cannot simulate: node `pool`: sum_pool2d: stride must be "
                                                  "positive integers, got (0, 2)")):
        simulate_nir(graph, np.zeros((2, 1, 2, 4, 4)))


def test_the_import_table_covers_every_node_class_nir_defines():
    from saec.importers.nir import NIR_IMPORT

    classes = NIR_IMPORT.universe()
    assert {"LIF", "CubaLIF", "Delay", "Conv1d", "NIRGraph"} <= set(classes)  # nir's own classes, not a copy
    assert set(NIR_IMPORT.handlers) | set(NIR_IMPORT.refused) == set(classes.values())
    assert NIR_IMPORT.missing() == []
