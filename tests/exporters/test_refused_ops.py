"""An op type a stage refuses reaches a command as one clear line (exit 2), with the stage's reason."""

from __future__ import annotations

import nir
import numpy as np
from typer.testing import CliRunner

from saec.cli import app
from tests.exporters.test_nir import NO_CLAMP, TINY, assert_one_line, make_run, mixed_graph

runner = CliRunner()

POOLED = TINY.replace(
    "  - {name: flat, type: flatten}\n",
    "  - {name: pool, type: sum_pool2d, kernel_size: 2}\n  - {name: flat, type: flatten}\n")


def test_onnx_export_of_a_sum_pool_is_refused_in_one_line(tmp_path):
    run = make_run(tmp_path / "run", POOLED, NO_CLAMP)
    result = runner.invoke(app, ["export", str(run), "--format", "onnx"])
    assert_one_line(result, r"node `pool`: ONNX export has no lowering for IR op 'sum_pool2d': ONNX has no sum "
                            r"pooling")
    assert not (run / "export" / "model.onnx").exists()


def test_simulate_of_a_nir_node_saec_refuses_is_one_line(tmp_path):
    graph = mixed_graph()
    graph.nodes["li"] = nir.Delay(delay=np.ones(3))
    path = tmp_path / "delay.nir"
    nir.write(path, graph)
    spikes = tmp_path / "in.npy"
    np.save(spikes, np.zeros((2, 1, 2, 4, 4), dtype=np.float32))
    result = runner.invoke(app, ["simulate", str(path), "--input", str(spikes)])
    assert_one_line(result, r"delay\.nir: cannot simulate: node `li`: NIR node type Delay is not supported by saec's "
                            r"simulator: saec's graphs have no synaptic delays \(supported: Input, Output, LIF, IF, "
                            r"LI, Conv2d, Affine, Linear, Flatten, SumPool2d\)$")
