"""Run a netx HDF5 network in lava's fixed-point Loihi simulation; save, and check, every layer's spikes.

Runs inside the lava environment (scripts/envs/lava.sh), not saec's: it imports only lava, numpy
and h5py, so the spikes are computed by the vendor's code.

    $SAEC_LAVA_PYTHON scripts/lava/run_netx.py NET.h5 INPUT OUT.npz

INPUT: either a .npy of input spikes [T, B, C, H, W] (0/1, saec's layout) or the golden file
``saec export RUN --target loihi`` writes (RUN/export/loihi_golden.npz: ``input`` and saec's
integer-simulation spikes per layer). With a golden file the run is also a check: per layer it
prints the spike counts and the positions (step, example, neuron) where lava and saec differ,
and exits 1 when any differ.

The B examples run one after another in one lava run, T steps apart: netx's
``reset_interval=T`` resets layer i's neurons (u = v = 0) at the step its first input of each
example arrives (netx staggers the resets by one step per layer; ``reset_offset=1`` puts the
first at the step the first input reaches layer 1), so every example starts from rest, as in saec.
OUT.npz: per conv layer its spikes [T, B, C, H, W] (uint8), keyed by the saec layer name the file
records (``saec_layer``; else ``layer<i>``), aligned to saec's steps: lava's conv synapse delivers
a step's input one step later, so layer i (1-based) fires for saec step s of example b at lava
step b*T + s + i + 1 (steps counted from 1; the input is sent at step b*T + s + 1). Also
``raw:<name>``, the layer's whole record [steps, C, H, W], and ``steps``, the lava steps run.
"""

from __future__ import annotations

import sys

import numpy as np


def layer_names(net_path: str) -> list[str]:
    """The saec layer name of each conv layer of the file, in order (``layer<i>`` where none is recorded)."""
    import h5py

    names = []
    with h5py.File(net_path, "r") as f:
        for key in sorted(f["layer"], key=int):
            group = f["layer"][key]
            if "neuron" in group:
                names.append(str(group.attrs.get("saec_layer", f"layer{key}")))
    return names


def run(net_path: str, spikes: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's spikes for ``spikes`` [T, B, C, H, W], computed by lava (Loihi2SimCfg fixed_pt)."""
    from lava.lib.dl import netx
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    t_steps, batch = spikes.shape[:2]
    net = netx.hdf5.Network(net_config=net_path, reset_interval=t_steps, reset_offset=1)
    depth = len(net.layers)
    steps = batch * t_steps + depth + 1
    # lava's layout is (x, y, channel, time): [T, B, C, H, W] -> [W, H, C, B*T], then zeros
    data = np.zeros((*spikes.shape[2:][::-1], steps), dtype=np.int32)
    data[..., : batch * t_steps] = spikes.transpose(4, 3, 2, 1, 0).reshape(*data.shape[:-1], batch * t_steps)
    source = Source(data=data)
    source.s_out.connect(net.inp)
    sinks = []
    for block in net.layers:
        sink = Sink(shape=block.out.shape, buffer=steps)
        block.out.connect(sink.a_in)
        sinks.append(sink)
    print(net, flush=True)
    try:
        net.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        records = [np.asarray(sink.data.get()) for sink in sinks]
    finally:
        net.stop()
    out = {"steps": np.array(steps)}
    for i, (name, record) in enumerate(zip(layer_names(net_path), records), start=1):
        raw = record.transpose(3, 2, 1, 0).astype(np.uint8)  # (x, y, c, step) -> [step, C, H, W]
        out[f"raw:{name}"] = raw
        out[name] = np.stack([raw[b * t_steps + i: b * t_steps + i + t_steps] for b in range(batch)], axis=1)
    return out


def main(net_path: str, input_path: str, out_path: str) -> int:
    golden = None
    if input_path.endswith(".npz"):
        golden = dict(np.load(input_path))
        spikes = golden.pop("input")
    else:
        spikes = np.load(input_path)
    out = run(net_path, spikes)
    np.savez_compressed(out_path, **out)
    names = layer_names(net_path)
    print(f"lava ran {int(out['steps'])} steps (T = {spikes.shape[0]}, {spikes.shape[1]} examples); written to "
          f"{out_path}")
    if golden is None:
        for name in names:
            print(f"  {name}: {int(out[name].sum())} spikes")
        return 0
    differ = 0
    print("  layer: spikes lava / saec integer simulation, positions that differ")
    for name in names:
        lava, saec = out[name], golden[name].reshape(out[name].shape)
        mismatches = int((lava != saec).sum())
        differ += mismatches
        print(f"  {name}: {int(lava.sum())} / {int(saec.sum())}, {mismatches} of {lava.size}")
    print("check: " + ("identical spike trains in every layer" if differ == 0 else f"{differ} positions differ"))
    return 1 if differ else 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
