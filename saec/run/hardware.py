"""``saec export RUN --target CHIP``: the hardware targets, one exporter each.

Each entry quantises a trained run for its chip, writes the chip's native artifact under
``RUN/export/`` and measures L_rec float vs quantised; ``summary`` turns its result into the lines
the command prints. The NIR consumers (``--target snntorch|norse``) are not here: they are
variants of the NIR export. :func:`train_for_target` sets a graph up for quantisation-aware
training (``saec train --target``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from saec.errors import UserError
from saec.run.loihi import export_loihi, loihi_summary
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
    "loihi": HardwareExporter(export_loihi, loihi_summary),
}


def is_hardware_target(name: str) -> bool:
    """Whether ``name`` is a chip (a shipped profile), as opposed to a NIR consumer variant."""
    from saec.targets.profile import available_targets

    return name in available_targets()


def refuse_unexported(target: str) -> None:
    """A chip without an exporter yet: one line naming the chips that have one.

    Raises:
        UserError: always (path ``--target``).
    """
    raise UserError(f"no exporter for hardware target {target!r} yet (hardware exporters: "
                    f"{', '.join(sorted(HARDWARE_EXPORTERS))})", path="--target")


def train_for_target(graph, target: str, locate: Callable[[str, str], UserError] | None = None,
                     locate_field: Callable[[tuple, str], UserError] | None = None):
    """A copy of ``graph`` set to train quantisation-aware for ``target`` (``saec train --target``).

    The copy's ``attrs["target"]`` turns on the quantised forward (:mod:`saec.runtime.qat`); it is
    saved in the run's ``ir.json``, so evaluation, resume and export run the quantised network too.

    Args:
        graph: the compiled graph.
        target: a shipped profile name or a profile file.
        locate: ``locate(node, message)`` -> the error located in the spec (default: the layer's path).
        locate_field: ``locate_field(path, message)`` -> the error at the spec field ``path`` (a tuple
            such as ``("training", "precision")``; default: the dotted path alone).
    Raises:
        UserError: an unknown target, one without a quantiser training can use, ``training.precision``
            other than fp32, or a network that does not fit it (its first problem, located, with the
            count of the others).
    """
    from saec.compiler.runconfig import ATTR as RUN_CONFIG
    from saec.compiler.runconfig import RunConfig
    from saec.runtime.qat import FAKE_QUANTIZERS, TARGET_ATTR
    from saec.targets.fit import check_fit
    from saec.targets.profile import available_targets, load_profile

    profile = load_profile(target)
    if (profile.quantizer or "") not in FAKE_QUANTIZERS:
        raise UserError(f"quantisation-aware training has no quantiser for target {profile.name!r} yet "
                        f"(targets with one: {', '.join(sorted(_targets_with(FAKE_QUANTIZERS)))})", path="--target")
    precision = RunConfig.of(graph).training.precision if RUN_CONFIG in graph.attrs else "fp32"
    if precision != "fp32":
        # The quantised forward is the chip's integer network only while its currents are exact sums
        # of the quantised weights; bf16 synapses round them to 8 significant bits.
        message = (f"{precision} cannot be combined with quantisation-aware training (--target {profile.name}): "
                   f"the forward must equal the chip's integer arithmetic, which {precision} synapses round "
                   f"away; use training.precision: fp32, or train without --target")
        if locate_field is not None:
            raise locate_field(("training", "precision"), message)
        raise UserError(message, path="training.precision")
    violations = check_fit(graph, profile).violations
    if violations:
        first, more = violations[0], len(violations) - 1
        message = f"does not fit {profile.name}: {first.message}" + (
            f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")
        if locate is not None:
            raise locate(first.node, message)
        raise UserError(message, path=f"layers.{graph.meta(first.node).get('layer', first.node)}")
    copy = graph.copy()
    shipped = target in available_targets()
    copy.attrs[TARGET_ATTR] = profile.name if shipped else str(Path(target).resolve())
    return copy


def _targets_with(quantizers) -> list[str]:
    from saec.targets.profile import available_targets, load_profile

    return [name for name in available_targets() if (load_profile(name).quantizer or "") in quantizers]
