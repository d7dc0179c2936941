"""``saec export RUN --target xylo``: a dense run as the NIR graph rockpool maps onto Xylo Audio 2.

Reads the run folder, checks the network fits Xylo (located errors otherwise), quantises it as
rockpool will (:func:`saec.targets.quantize.quantize_xylo`), writes ``RUN/export/xylo/`` and
measures what the integers (and the chip's synapse, delay and multi-spike neurons) cost:

- ``model.xylo.nir``: the network for rockpool's ``from_nir`` and Xylo mapper
  (:mod:`saec.exporters.xylo`);
- ``golden.npz``: the first ``examples`` validation images' input spikes (flattened to Xylo's
  input channels, [T, B, channels]), saec's integer simulation of every layer, and the integer
  weights and thresholds saec expects rockpool to make; ``scripts/targets/xylo_verify.py`` checks
  XyloSim against it;
- ``quantization.json``: L_rec float vs quantised and per-layer spikes (same input spikes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saec.analysis.quantized import QuantizedComparison
from saec.exporters.xylo import MODEL_FILE, XYLO_DT, write_xylo
from saec.run import artifacts as A
from saec.run.speck import COMPARISON_FILE, GOLDEN_FILE, quantized_comparison
from saec.errors import UserError

XYLO_DIR = "xylo"  # under RUN/export/


@dataclass
class XyloExport:
    """What :func:`export_xylo` wrote and measured."""

    directory: Path
    model: Path
    golden: Path
    comparison_file: Path
    comparison: QuantizedComparison
    validation: str


def export_xylo(run: str | Path, *, examples: int = 4, limit: int | None = None, seed: int = 0,
                data_dir: str | Path | None = None) -> XyloExport:
    """Export a trained run for Xylo and measure L_rec float vs quantised.

    Args: as :func:`saec.run.speck.export_speck`.
    Returns:
        :class:`XyloExport`.
    Raises:
        UserError: not a run, no weights, the network does not fit Xylo, a bad ``examples``, data
            missing. Nothing is written then.
    """
    run = Path(run)
    spec, model, qnet, val, comparison = quantized_comparison(run, "xylo", examples=examples, limit=limit, seed=seed,
                                                              data_dir=data_dir)
    weights = {k: v.detach().cpu().numpy() for k, v in model.ir_state_dict().items()}
    directory = run / A.EXPORT / XYLO_DIR
    model_path = write_xylo(directory / MODEL_FILE, qnet, weights, dt=XYLO_DT,
                            metadata={"run": run.name, "spec": spec.name})
    golden = dict(comparison.golden)
    t_steps, batch = golden["input"].shape[:2]
    golden["input"] = golden["input"].reshape(t_steps, batch, -1)
    for node, q in qnet.layers.items():
        layer = model.graph.meta(node)["layer"]
        golden[layer] = golden[layer].reshape(t_steps, batch, -1)
        golden[f"{layer}.weight"] = q.weight  # [out, in] integers as rockpool should make them
        golden[f"{layer}.threshold"] = np.asarray(q.threshold)
    golden_path = directory / GOLDEN_FILE
    tmp = directory / f".{GOLDEN_FILE}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **golden)
    tmp.replace(golden_path)
    comparison_file = directory / COMPARISON_FILE
    A.write_json(comparison_file, {"validation": val.name, "dt": XYLO_DT, "notes": qnet.notes,
                                   **comparison.as_dict()})
    return XyloExport(directory=directory, model=model_path, golden=golden_path, comparison_file=comparison_file,
                      comparison=comparison, validation=val.name)
