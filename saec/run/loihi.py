"""``saec export RUN --target loihi``: a trained run quantised for Loihi, as a lava-dl netx file.

Quantises the trained network (:func:`saec.targets.quantize.quantize`), writes
``RUN/export/model.loihi.h5`` (:func:`saec.exporters.netx.write_netx`), measures
L_rec of the float network against the quantised one run in lava's integer
arithmetic on the run's validation images (both on the same input spikes), and
records it in ``RUN/export/loihi.json``, with the golden spikes lava is checked
against (``loihi_golden.npz``, ``scripts/lava/run_netx.py``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saec.atomicwrite import write_atomically
from saec.errors import UserError
from saec.run import artifacts as A

#: Where ``saec export --target loihi`` writes the lava-dl netx file, and its record.
LOIHI_NETX = "model.loihi.h5"
LOIHI_RECORD = "loihi.json"
#: The input spikes of the measurement and saec's integer-simulation spikes of every layer for them:
#: what lava must reproduce (scripts/lava/run_netx.py NET GOLDEN OUT checks it).
LOIHI_GOLDEN = "loihi_golden.npz"


@dataclass
class LoihiExport:
    """What ``saec export --target loihi`` wrote and measured (also ``RUN/export/loihi.json``).

    Attributes:
        target: the chip (a profile name).
        model: the native file written.
        record: the JSON record written beside it.
        golden: the input spikes and saec's integer-simulation spikes per layer (``.npz``).
        validation: the validation set's name; ``images`` the images measured, ``golden_examples`` the
            first ones in the golden file, ``timesteps`` T.
        rec_loss_float / rec_loss_quantized: L_rec (squared error summed over pixels, mean over
            images) of saec's float network and of the quantised network in the chip's arithmetic.
        spikes_float / spikes_quantized: spikes per inference (all spiking layers, mean over images).
        layers: per spiking layer its registers (scale, threshold, decay register, chip decay) and
            spike counts / positions differing between float and quantised.
    """

    target: str
    model: Path
    record: Path
    golden: Path
    validation: str
    images: int
    golden_examples: int
    timesteps: int
    seed: int
    rec_loss_float: float
    rec_loss_quantized: float
    spikes_float: float
    spikes_quantized: float
    layers: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["model"], out["record"], out["golden"] = self.model.name, self.record.name, self.golden.name
        return out


def export_loihi(run: str | Path, *, examples: int = 4, limit: int | None = None, seed: int = 0,
                 data_dir: str | Path | None = None, batch: int = 32) -> LoihiExport:
    """Quantise the run's network for Loihi, write ``RUN/export/model.loihi.h5`` (lava-dl netx), the
    golden spikes of the first ``examples`` images, and L_rec float vs quantised.

    Args:
        run: a trained run folder.
        examples: validation images whose input spikes and integer-simulation spikes go into
            ``loihi_golden.npz`` (what lava is checked against).
        limit: validation images for the L_rec measurement (None: the run's whole validation set;
            the integer simulation takes about a second per image for the paper SAE at T = 8).
        seed: seed of the Poisson encoder (both networks see the same input spikes).
        data_dir: overrides the run's data roots.
        batch: images simulated at once (memory).
    Raises:
        UserError: not a trained run, a network that does not fit Loihi or that netx cannot express,
            data missing, ``examples`` < 1 or more than the images measured.
    """
    import torch

    from saec.exporters.netx import write_netx
    from saec.run.report import validation_set
    from saec.runtime.encoding import poisson_encode
    from saec.runtime.spikedriven import training_forward
    from saec.targets.profile import load_profile
    from saec.targets.quantize import quantize
    from saec.run.folder import load_model

    run = Path(run)
    if examples < 1:
        raise UserError(f"golden data needs at least 1 example, got {examples}", path="--examples")
    spec, model = load_model(run)
    model.eval()
    graph = model.graph
    if graph.attrs.get("input_kind") == "spikes":
        raise UserError("hardware export of a network with spike-train input (input.kind: spikes) is not done yet",
                        file=str(run))
    try:
        qnet = quantize(graph, {k: v.numpy() for k, v in model.ir_state_dict().items()}, load_profile("loihi"))
    except UserError as exc:
        raise UserError(exc.message, file=str(run / A.SPEC), path=exc.path) from None
    val = validation_set(spec, data_dir, limit)
    images = len(val.images)
    if examples > images:
        raise UserError(f"asks for {examples} golden examples, the validation set has {images}", path="--examples")
    path = run / A.EXPORT / LOIHI_NETX
    written = {}
    write_atomically(path, lambda tmp: written.setdefault("file", write_netx(qnet, tmp)))

    (encoder,) = [n for n in graph.order() if graph.op(n).type == "poisson_encode"]
    encoded = poisson_encode(val.images, graph.op(encoder), generator=torch.Generator().manual_seed(seed))
    names = {q.node: graph.meta(q.neuron)["layer"] for q in qnet.layers.values()}
    counts = {node: {"spikes_float": 0, "spikes_quantized": 0, "positions": 0, "positions_differing": 0}
              for node in qnet.layers}
    loss_float = loss_quantized = 0.0
    golden: dict[str, list[np.ndarray]] = {"input": [], **{names[n]: [] for n in qnet.layers}}
    for start in range(0, images, batch):
        x, spikes = val.images[start:start + batch], encoded[:, start:start + batch]
        with torch.no_grad(), training_forward(model):  # the float network spike for spike, as trained
            out = model(x, encoded=spikes, record=frozenset(names.values()))
        sim, x_hat_q = qnet.reconstruct(spikes.numpy())
        target = x.numpy().astype(np.float64)
        loss_float += float(((out.x_hat.double().numpy() - target) ** 2).reshape(len(x), -1).sum(1).sum())
        loss_quantized += float(((x_hat_q - target) ** 2).reshape(len(x), -1).sum(1).sum())
        for node, row in counts.items():
            ref, chip = out.trains[names[node]].numpy().astype(np.uint8), sim[names[node]]
            row["spikes_float"] += int(ref.sum())
            row["spikes_quantized"] += int(chip.sum())
            row["positions"] += int(ref.size)
            row["positions_differing"] += int((ref != chip.reshape(ref.shape)).sum())
        keep = max(0, min(examples - start, len(x)))
        if keep:
            golden["input"].append(spikes[:, :keep].numpy().astype(np.uint8))
            for node in qnet.layers:
                golden[names[node]].append(sim[names[node]][:, :keep])
    rows = [{"layer": names[node], "node": node, "scale": q.scale, "vth_mantissa": q.threshold,
             "dv": q.decay_register, "decay": q.decay, "weight_min": int(q.weight.min()),
             "weight_max": int(q.weight.max()), **counts[node]} for node, q in qnet.layers.items()]
    result = LoihiExport(
        target="loihi", model=path, record=run / A.EXPORT / LOIHI_RECORD, golden=run / A.EXPORT / LOIHI_GOLDEN,
        validation=val.name, images=images, golden_examples=examples, timesteps=int(encoded.shape[0]), seed=seed,
        rec_loss_float=loss_float / images, rec_loss_quantized=loss_quantized / images,
        spikes_float=sum(r["spikes_float"] for r in rows) / images,
        spikes_quantized=sum(r["spikes_quantized"] for r in rows) / images,
        layers=rows, notes=[*qnet.notes, *written["file"].notes])
    arrays = {key: np.concatenate(parts, axis=1) for key, parts in golden.items()}
    write_atomically(result.golden, lambda tmp: _savez(tmp, arrays))
    A.write_text(result.record, json.dumps(result.to_json(), indent=2) + "\n")
    return result


def loihi_summary(result: LoihiExport) -> list[str]:
    """What ``saec export RUN --target loihi`` prints."""
    lines = [f"lava-dl netx network written to {result.model}",
             f"golden data written to {result.golden} (first {result.golden_examples} images: input spikes and "
             "saec's integer simulation per layer; scripts/lava/run_netx.py checks lava against it)",
             f"L_rec on {result.images} images of {result.validation} (T={result.timesteps}, same input spikes): "
             f"float {result.rec_loss_float:.3f}, quantised {result.rec_loss_quantized:.3f}",
             "per layer: scale, threshold register, dv, chip decay; spikes float / quantised / positions that differ:"]
    for r in result.layers:
        lines.append(f"  {r['layer']}: {r['scale']:g}, {r['vth_mantissa']}, {r['dv']}, {r['decay']:.6g}; "
                     f"{r['spikes_float']:,} / {r['spikes_quantized']:,} / {r['positions_differing']:,} of "
                     f"{r['positions']:,}")
    lines.append(f"spikes per inference (all layers): float {result.spikes_float:,.1f}, quantised "
                 f"{result.spikes_quantized:,.1f}")
    lines.append(f"recorded in {result.record}")
    return lines


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: numpy would append .npz to the temporary's name
        np.savez_compressed(f, **arrays)
