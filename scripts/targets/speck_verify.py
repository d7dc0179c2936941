"""Check saec's Speck export with SynSense's own sinabs (run in the sinabs environment, not saec's).

    $SAEC_SINABS_PYTHON scripts/targets/speck_verify.py RUN/export/speck [--out result.json]

(environment: ``scripts/envs/sinabs.sh``.) Reads what ``saec export RUN --target speck`` wrote
(``speck.json``, ``speck.npz``, ``golden.npz``) and, with sinabs 3.1.3 alone:

1. builds the layer list as sinabs layers (``nn.Conv2d``, ``sinabs.layers.IAFSqueeze``,
   ``sinabs.layers.SumPool2d``) in an ``nn.Sequential``;
2. turns it into a ``DynapcnnNetwork`` with ``discretize=True`` (sinabs' own quantisation to the
   chip's 8-bit weights and 16-bit thresholds) and counts the parameters sinabs' discretisation
   changed (0 when saec's integers are already the chip's);
3. maps the layers onto the 9 cores with sinabs' ``get_valid_mapping`` (the chip's per-core
   kernel / neuron / bias memories, ``chips/dynapcnn.py: get_constraints``), printing each
   layer's ``memory_summary``;
4. runs the quantised network's forward on the golden input spikes and compares every spiking
   layer's spike train with saec's integer simulation (``golden.npz``), position by position.

Prints one line per layer and a closing ``speck_verify: N mismatches``; exits 0 when sinabs and
saec agree everywhere, 1 when any spike differs or sinabs changed a parameter, 2 on bad input.
samna (SynSense's chip library) does not install offline: ``samna_standin`` (beside this file)
stands in for it; nothing used here calls into it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import samna_standin  # noqa: E402

samna_standin.install()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import sinabs.layers as sl  # noqa: E402
from sinabs.activation import MembraneReset, MembraneSubtract, MultiSpike, SingleSpike  # noqa: E402
from sinabs.backend.dynapcnn import DynapcnnNetwork  # noqa: E402
from sinabs.backend.dynapcnn.chips.dynapcnn import DynapcnnConfigBuilder  # noqa: E402

RESETS = {"MembraneReset": MembraneReset, "MembraneSubtract": MembraneSubtract}
SPIKE_FNS = {"SingleSpike": SingleSpike, "MultiSpike": MultiSpike}


def build_sequential(document: dict, arrays: dict[str, np.ndarray], batch: int,
                     spike_fn: str | None = None) -> tuple[nn.Sequential, list[str]]:
    """The layer list as an nn.Sequential of torch / sinabs layers, and the spiking layers' names in order."""
    layers: list[nn.Module] = []
    spiking: list[str] = []
    for entry in document["layers"]:
        kind = entry["type"]
        if kind == "Conv2d":
            conv = nn.Conv2d(entry["in_channels"], entry["out_channels"], tuple(entry["kernel_size"]),
                             stride=tuple(entry["stride"]), padding=tuple(entry["padding"]), bias=entry["bias"])
            conv.weight.data = torch.from_numpy(arrays[entry["weight"]].astype(np.float32))
            if entry["bias"]:
                conv.bias.data = torch.from_numpy(arrays[entry["bias_array"]].astype(np.float32))
            layers.append(conv)
        elif kind == "IAFSqueeze":
            layers.append(sl.IAFSqueeze(batch_size=batch, spike_threshold=torch.tensor(float(entry["spike_threshold"])),
                                        min_v_mem=float(entry["min_v_mem"]),
                                        reset_fn=RESETS[entry["reset_fn"]](),
                                        spike_fn=SPIKE_FNS[spike_fn or entry["spike_fn"]]))
            spiking.append(entry["name"])
        elif kind == "SumPool2d":
            layers.append(sl.SumPool2d(kernel_size=tuple(entry["kernel_size"]), stride=tuple(entry["stride"])))
        else:
            raise ValueError(f"speck.json: layer {entry.get('name')}: unknown type {kind!r}")
    return nn.Sequential(*layers), spiking


def discretisation_changes(document: dict, arrays: dict[str, np.ndarray], net: DynapcnnNetwork,
                           spiking: list[str]) -> dict[str, int]:
    """Per spiking layer: weights, biases and thresholds sinabs' discretisation changed (0: none)."""
    convs = [e for e in document["layers"] if e["type"] == "Conv2d"]
    iafs = [e for e in document["layers"] if e["type"] == "IAFSqueeze"]
    changed = {}
    for (index, layer), conv, iaf, name in zip(net.dynapcnn_layers.items(), convs, iafs, spiking):
        w = layer.conv.weight.detach().numpy()
        n = int((w != arrays[conv["weight"]]).sum())
        if conv["bias"]:
            n += int((layer.conv.bias.detach().numpy() != arrays[conv["bias_array"]]).sum())
        n += int(float(layer.spk.spike_threshold) != iaf["spike_threshold"])
        n += int(float(layer.spk.min_v_mem) != iaf["min_v_mem"])
        changed[name] = n
    return changed


def run_forward(net: DynapcnnNetwork, spiking: list[str], spikes: np.ndarray) -> dict[str, np.ndarray]:
    """Each spiking layer's spike train [T, B, ...] for input spikes [T, B, C, H, W]."""
    t_steps, batch = spikes.shape[:2]
    recorded: dict[str, torch.Tensor] = {}
    hooks = []
    for (index, layer), name in zip(net.dynapcnn_layers.items(), spiking):
        hooks.append(layer.spk.register_forward_hook(
            lambda module, inputs, output, name=name: recorded.__setitem__(name, output.detach().clone())))
    # sinabs' squeezed layout: [batch * T, C, H, W], batch-major
    x = torch.from_numpy(spikes.astype(np.float32)).transpose(0, 1).reshape(batch * t_steps, *spikes.shape[2:])
    for layer in net.dynapcnn_layers.values():  # DynapcnnNetwork.reset_states reads a `sequence` 3.1.3 lacks
        layer.spk.reset_states()
    with torch.no_grad():
        net(x)
    for hook in hooks:
        hook.remove()
    return {name: out.reshape(batch, t_steps, *out.shape[1:]).transpose(0, 1).numpy()
            for name, out in recorded.items()}


def verify(export_dir: Path, spike_fn: str | None = None) -> dict:
    """Build, discretise, map and run the export in sinabs; compare with saec's golden spikes."""
    document = json.loads((export_dir / "speck.json").read_text())
    with np.load(export_dir / document["weights"]) as data:
        arrays = {k: data[k] for k in data.files}
    with np.load(export_dir / "golden.npz") as data:
        golden = {k: data[k] for k in data.files}
    spikes = golden["input"]
    batch = spikes.shape[1]
    seq, spiking = build_sequential(document, arrays, batch, spike_fn)
    net = DynapcnnNetwork(seq, input_shape=tuple(document["input_shape"]), batch_size=batch, discretize=True,
                          dvs_input=False)
    if len(net.dynapcnn_layers) != len(spiking):
        raise ValueError(f"sinabs built {len(net.dynapcnn_layers)} DynapcnnLayers for {len(spiking)} spiking layers")
    changed = discretisation_changes(document, arrays, net, spiking)
    mapping = DynapcnnConfigBuilder.map_layers_to_cores(net.dynapcnn_layers)
    memory = {name: {k: int(v) for k, v in layer.memory_summary().items()}
              for (index, layer), name in zip(net.dynapcnn_layers.items(), spiking)}
    cores = {name: int(mapping[index]) for index, name in zip(net.dynapcnn_layers, spiking)}
    trains = run_forward(net, spiking, spikes)
    layers = {}
    for name in spiking:
        ours, theirs = golden[name].astype(np.uint8), (trains[name] > 0).astype(np.uint8)
        layers[name] = {"saec_spikes": int(ours.sum()), "sinabs_spikes": int(trains[name].sum()),
                        "positions": int(ours.size), "differ": int((ours != theirs).sum()),
                        "sinabs_multiple_spikes": int((trains[name] > 1).sum()),
                        "core": cores[name], "memory": memory[name], "discretisation_changed": changed[name]}
    mismatches = sum(r["differ"] + r["sinabs_multiple_spikes"] for r in layers.values())
    return {"export": str(export_dir), "spike_fn": spike_fn or "as exported", "examples": int(batch),
            "timesteps": int(spikes.shape[0]), "layers": layers, "mismatches": mismatches,
            "discretisation_changed": sum(changed.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path, help="RUN/export/speck (from saec export RUN --target speck)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    parser.add_argument("--spike-fn", choices=sorted(SPIKE_FNS), help="override the exported spike function "
                        "(MultiSpike: sinabs' default, several spikes per step)")
    args = parser.parse_args(argv)
    for name in ("speck.json", "golden.npz"):
        if not (args.export_dir / name).is_file():
            print(f"{args.export_dir / name}: missing; run saec export RUN --target speck first", file=sys.stderr)
            return 2
    result = verify(args.export_dir, args.spike_fn)
    for name, r in result["layers"].items():
        print(f"{name}: core {r['core']} (memory {r['memory']}), spikes saec {r['saec_spikes']:,} "
              f"sinabs {r['sinabs_spikes']:,}, positions differing {r['differ']:,} of {r['positions']:,}")
    print(f"speck_verify: {result['examples']} examples, T={result['timesteps']}, "
          f"{result['discretisation_changed']} parameters changed by sinabs' discretisation, "
          f"{result['mismatches']} mismatches")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["mismatches"] == 0 and result["discretisation_changed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
