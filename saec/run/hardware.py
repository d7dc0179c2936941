"""``saec export RUN --target CHIP``: the hardware targets, one exporter each.

Each entry quantises a trained run for its chip, writes the chip's native artifact under
``RUN/export/`` and measures L_rec float vs quantised; ``summary`` turns its result into the lines
the command prints. The NIR consumers (``--target snntorch|norse``) are not here: they are
variants of the NIR export.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from saec.run.speck import SpeckExport, export_speck


@dataclass(frozen=True)
class HardwareExporter:
    """One chip's export: ``export(run, *, examples, limit, seed, data_dir) -> result``, and its summary."""

    export: Callable[..., Any]
    summary: Callable[[Any], list[str]]


def speck_summary(result: SpeckExport) -> list[str]:
    """What ``saec export RUN --target speck`` prints."""
    c = result.comparison
    lines = [f"sinabs layer list written to {result.files.layers} (weights {result.files.weights.name}: "
             f"8-bit weights, 16-bit thresholds)",
             f"golden data written to {result.golden} (first {c.golden['input'].shape[1]} images: input spikes "
             "and saec's integer simulation per layer)",
             f"cores (saec's fit check): " + ", ".join(f"{k} {v}" for k, v in result.cores.items()),
             f"L_rec on {c.images} images of {result.validation} (T={c.timesteps}, same input spikes): "
             f"float {c.rec_loss_float:.3f}, quantised {c.rec_loss_quantized:.3f}",
             "spikes per layer, float / quantised / positions that differ:"]
    for layer, a in c.layers.items():
        lines.append(f"  {layer}: {a.spikes_float:,} / {a.spikes_quantized:,} / {a.differ:,} of {a.positions:,}")
    lines.append(f"spikes per inference (quantised, all layers): {c.spikes_per_inference:,.1f}")
    lines.append(f"comparison written to {result.comparison_file}")
    return lines


#: --target -> exporter
HARDWARE_EXPORTERS: dict[str, HardwareExporter] = {
    "speck": HardwareExporter(export_speck, speck_summary),
}
