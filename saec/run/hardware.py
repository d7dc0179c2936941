"""``saec export RUN --target CHIP``: the hardware targets, one exporter each.

Each entry quantises a trained run for its chip, writes the chip's native artifact under
``RUN/export/`` and measures L_rec float vs quantised; ``summary`` turns its result into the lines
the command prints. The NIR consumers (``--target snntorch|norse``) are not here: they are
variants of the NIR export.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from saec.run.speck import SpeckExport, export_speck
from saec.run.xylo import XyloExport, export_xylo


@dataclass(frozen=True)
class HardwareExporter:
    """One chip's export: ``export(run, *, examples, limit, seed, data_dir) -> result``, and its summary."""

    export: Callable[..., Any]
    summary: Callable[[Any], list[str]]


def _comparison_lines(c, validation: str, golden: Path, comparison_file: Path) -> list[str]:
    lines = [f"golden data written to {golden} (first {c.golden['input'].shape[1]} images: input spikes "
             "and saec's integer simulation per layer)",
             f"L_rec on {c.images} images of {validation} (T={c.timesteps}, same input spikes): "
             f"float {c.rec_loss_float:.3f}, quantised {c.rec_loss_quantized:.3f}",
             "spikes per layer, float / quantised / positions that differ:"]
    for layer, a in c.layers.items():
        lines.append(f"  {layer}: {a.spikes_float:,} / {a.spikes_quantized:,} / {a.differ:,} of {a.positions:,}")
    lines.append(f"spikes per inference (quantised, all layers): {c.spikes_per_inference:,.1f}")
    lines.append(f"comparison written to {comparison_file}")
    return lines


def speck_summary(result: SpeckExport) -> list[str]:
    """What ``saec export RUN --target speck`` prints."""
    return [f"sinabs layer list written to {result.files.layers} (weights {result.files.weights.name}: "
            f"8-bit weights, 16-bit thresholds)",
            "cores (saec's fit check): " + ", ".join(f"{k} {v}" for k, v in result.cores.items()),
            *_comparison_lines(result.comparison, result.validation, result.golden, result.comparison_file)]


def xylo_summary(result: XyloExport) -> list[str]:
    """What ``saec export RUN --target xylo`` prints."""
    return [f"NIR graph for rockpool's Xylo mapper written to {result.model} (CubaLIF, r for the chip's dt)",
            *_comparison_lines(result.comparison, result.validation, result.golden, result.comparison_file)]


#: --target -> exporter
HARDWARE_EXPORTERS: dict[str, HardwareExporter] = {
    "speck": HardwareExporter(export_speck, speck_summary),
    "xylo": HardwareExporter(export_xylo, xylo_summary),
}
