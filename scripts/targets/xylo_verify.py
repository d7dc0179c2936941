"""Check saec's Xylo export with SynSense's rockpool and XyloSim (run in the rockpool environment).

    $SAEC_ROCKPOOL_PYTHON scripts/targets/xylo_verify.py RUN/export/xylo [--out result.json]

(environment: ``scripts/envs/rockpool.sh``.) Reads what ``saec export RUN --target xylo`` wrote
(``model.xylo.nir``, ``golden.npz``) and, with rockpool 3.1.0 and xylosim 0.1.3 alone, runs the
path a Xylo Audio 2 user takes:

    from_nir -> mapper(as_graph()) -> channel_quantize -> XyloSim.from_specification

then compares (1) the integer weights and thresholds rockpool made with those saec's quantiser
expects (``golden.npz``: ``<layer>.weight``, ``<layer>.threshold``), and (2) XyloSim's spikes on
the golden input, hidden neurons and output neurons, step by step and example by example, with
saec's integer simulation.

Prints one line per layer and a closing ``xylo_verify: N mismatches``; exits 0 when everything
agrees, 1 otherwise, 2 on bad input. samna does not install offline: ``samna_standin`` (beside
this file) stands in for it; XyloSim does not use it.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import samna_standin  # noqa: E402

samna_standin.install()

import nir  # noqa: E402
import numpy as np  # noqa: E402
from rockpool.devices.xylo.syns61201 import XyloSim, mapper  # noqa: E402
from rockpool.nn.modules import from_nir  # noqa: E402
from rockpool.transform.quantize_methods import channel_quantize  # noqa: E402


def xylo_specification(model_path: Path) -> dict:
    """rockpool's Xylo specification (integers) for the NIR file: from_nir, mapper, channel_quantize."""
    net = from_nir(nir.read(str(model_path)))
    spec = mapper(net.as_graph(), weight_dtype="float", threshold_dtype="float", dash_dtype="float")
    spec.update(channel_quantize(**spec))
    return spec


def verify(export_dir: Path) -> dict:
    """Map, quantise and simulate the export with rockpool / XyloSim; compare with saec's golden data."""
    with np.load(export_dir / "golden.npz") as data:
        golden = {k: data[k] for k in data.files}
    layers = [k[: -len(".weight")] for k in golden if k.endswith(".weight")]  # graph order
    hidden, output = layers[:-1], layers[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = xylo_specification(export_dir / "model.xylo.nir")
    # saec's [out, in] integer matrices against rockpool's [in, out(, synapse)] ones
    w_in = np.asarray(spec["weights_in"])[..., 0] if np.ndim(spec["weights_in"]) == 3 else spec["weights_in"]
    w_rec = np.asarray(spec["weights_rec"])[..., 0] if np.ndim(spec["weights_rec"]) == 3 else spec["weights_rec"]
    w_out = np.asarray(spec["weights_out"])
    parameters: dict[str, int] = {}
    offset = 0
    for index, layer in enumerate(hidden):
        ours = golden[f"{layer}.weight"]
        n = ours.shape[0]
        if index == 0:
            theirs = w_in[:, offset:offset + n].T
        else:
            prev_n = golden[f"{hidden[index - 1]}.weight"].shape[0]
            theirs = w_rec[offset - prev_n:offset, offset:offset + n].T
        parameters[layer] = int((theirs != ours).sum()) + int(
            (np.asarray(spec["threshold"])[offset:offset + n] != golden[f"{layer}.threshold"]).sum())
        offset += n
    last_n = golden[f"{hidden[-1]}.weight"].shape[0]
    theirs = w_out[offset - last_n:offset].T
    parameters[output] = int((theirs != golden[f"{output}.weight"]).sum()) + int(
        (np.asarray(spec["threshold_out"]) != golden[f"{output}.threshold"]).sum())

    accepted = ("weights_in", "weights_out", "weights_rec", "dash_mem", "dash_mem_out", "dash_syn", "dash_syn_2",
                "dash_syn_out", "threshold", "threshold_out", "bias", "bias_out", "weight_shift_in",
                "weight_shift_rec", "weight_shift_out", "aliases", "dt")
    sim = XyloSim.from_specification(**{k: v for k, v in spec.items() if k in accepted})
    x = golden["input"]  # [T, B, channels]
    t_steps, batch = x.shape[:2]
    spikes_hidden, spikes_out = [], []
    for b in range(batch):
        sim.reset_state()
        out, _, record = sim(x[:, b].astype(int), record=True)
        spikes_out.append(np.asarray(out).reshape(t_steps, -1))
        spikes_hidden.append(np.asarray(record["Spikes"]).reshape(t_steps, -1))
    theirs_hidden = np.stack(spikes_hidden, axis=1)  # [T, B, hidden neurons]
    theirs_out = np.stack(spikes_out, axis=1)
    result_layers = {}
    offset = 0
    for layer in hidden:
        n = golden[layer].shape[2]
        theirs = theirs_hidden[:, :, offset:offset + n]
        result_layers[layer] = {"saec_spikes": int(golden[layer].sum()), "xylosim_spikes": int(theirs.sum()),
                                "positions": int(theirs.size), "differ": int((theirs != golden[layer]).sum()),
                                "parameters_differ": parameters[layer]}
        offset += n
    result_layers[output] = {"saec_spikes": int(golden[output].sum()), "xylosim_spikes": int(theirs_out.sum()),
                             "positions": int(theirs_out.size), "differ": int((theirs_out != golden[output]).sum()),
                             "parameters_differ": parameters[output]}
    mismatches = sum(r["differ"] for r in result_layers.values())
    return {"export": str(export_dir), "examples": int(batch), "timesteps": int(t_steps), "dt": float(spec["dt"]),
            "dash_mem": np.asarray(spec["dash_mem"]).tolist(), "dash_syn": np.asarray(spec["dash_syn"]).tolist(),
            "layers": result_layers, "mismatches": mismatches,
            "parameters_differ": sum(r["parameters_differ"] for r in result_layers.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path, help="RUN/export/xylo (from saec export RUN --target xylo)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    for name in ("model.xylo.nir", "golden.npz"):
        if not (args.export_dir / name).is_file():
            print(f"{args.export_dir / name}: missing; run saec export RUN --target xylo first", file=sys.stderr)
            return 2
    result = verify(args.export_dir)
    for name, r in result["layers"].items():
        print(f"{name}: spikes saec {r['saec_spikes']:,} XyloSim {r['xylosim_spikes']:,}, positions differing "
              f"{r['differ']:,} of {r['positions']:,}; integer weights/thresholds differing {r['parameters_differ']}")
    print(f"xylo_verify: {result['examples']} examples, T={result['timesteps']}, dt={result['dt']:g} s, "
          f"{result['parameters_differ']} parameters differ, {result['mismatches']} mismatches")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["mismatches"] == 0 and result["parameters_differ"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
