#!/usr/bin/env python
"""Step time of a sweep's configurations on this machine, and the sweep's projected training time.

For each measured configuration of a sweep file (its spec with the sweep's
overrides, seed 0), runs saec's training step (forward, objective, backward,
the spec's gradient clipping, the optimizer step) on batches of MNIST images
from the embedded 5,000-image subset: ``--warmup`` untimed steps, then
``--steps`` timed ones, for each ``--threads`` setting, and reports the median
wall seconds and process CPU seconds (all threads) per step. Then it projects
each configuration's training time as steps per run (``saec sweep --dry-run``'s
plan) x runs x seconds per step; a configuration that was not measured borrows
the step time of a measured one of the same kind, T and batch size (named in the output).

Step times are of the freshly initialised network: a spiking network's cost
follows its spike counts, which change during training, and validation is not
counted (10,000 test images forward after each epoch, a few percent of an
epoch of 938 steps).

    python benchmarks/sweep_step_time.py specs/sweeps/table1.yaml --configs SAE-dense AE VAE \\
        --threads 1 2 --steps 3 --data-dir DIR_WITH_MNIST

``--data-dir`` matters only for the plan: with the MNIST test set there, validation is the test set and
all 60,000 training images train (938 steps per epoch at batch 64).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# as the saec command line does (saec/cli.py), so the numbers are those of `saec train`: idle OpenMP workers
# sleep instead of spinning (spinning burns CPU time, badly so on a loaded machine); set before torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from saec.runtime.plan import cpu_model  # noqa: E402  (the plan cache's fingerprint names the CPU the same way)


def measure(run, threads: int, steps: int, warmup: int) -> tuple[float, float]:
    """Median (wall s, CPU s) per training step of ``run``'s spec with ``threads`` torch threads."""
    import torch

    from saec.compiler.pipeline import compile_spec
    from saec.runtime.model import SpikingAutoencoder
    from saec.training.data import load_images
    from saec.training.objective import objective
    from saec.compiler.runconfig import RunConfig
    from saec.training.train import make_optimizer

    torch.set_num_threads(threads)
    spec, graph = compile_spec(str(run.spec_file), run.set_args())
    spec = spec.spec
    t = spec.training
    torch.manual_seed(t.seed)
    model = SpikingAutoencoder(graph)
    model.reset_parameters(torch.Generator().manual_seed(t.seed))
    opt = make_optimizer(RunConfig.of(graph).training, model.parameters())
    images = load_images("mnist5k", "train").images
    gen = torch.Generator().manual_seed(t.seed + 1)
    walls, cpus = [], []
    for i in range(warmup + steps):
        x = images[(i * t.batch_size) % len(images):][: t.batch_size]
        wall0, cpu0 = time.perf_counter(), time.process_time()
        out = model(x, generator=gen)
        loss, _ = objective(model, out, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip is not None:
            clip = torch.nn.utils.clip_grad_value_ if t.grad_clip.mode == "value" else torch.nn.utils.clip_grad_norm_
            clip(model.parameters(), t.grad_clip.max)
        opt.step()
        if i >= warmup:
            walls.append(time.perf_counter() - wall0)
            cpus.append(time.process_time() - cpu0)
    return statistics.median(walls), statistics.median(cpus)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="sweep file (e.g. specs/sweeps/table1.yaml)")
    parser.add_argument("--configs", nargs="+", default=None, help="configurations to measure (default: all)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="torch thread counts to measure")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration and thread count")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--data-dir", default=None, help="MNIST folder, for the plan's steps per epoch")
    args = parser.parse_args(argv)

    from saec.run.sweep import load_sweep, plan_sweep

    sweep = load_sweep(args.sweep)
    measured_names = args.configs or list(sweep.configs)
    unknown = sorted(set(measured_names) - set(sweep.configs))
    if unknown:
        parser.error(f"not configurations of {args.sweep}: {unknown} (it has {list(sweep.configs)})")
    plans = {p.config: p for p in plan_sweep(sweep, args.data_dir)}
    load = os.getloadavg()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; load average at start "
          f"{load[0]:.1f}; {args.warmup} warm-up + {args.steps} timed steps each")
    times: dict[tuple[str, int], tuple[float, float]] = {}
    for name in measured_names:
        run = next(r for r in sweep.runs if r.config == name)
        p = plans[name]
        for threads in args.threads:
            wall, cpu = measure(run, threads, args.steps, args.warmup)
            times[(name, threads)] = (wall, cpu)
            print(f"{name} ({p.kind}, T={p.timesteps}, batch {p.batch_size}), {threads} thread(s): "
                  f"{wall:.3f} s/step wall, {cpu:.3f} s/step CPU", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    for threads in args.threads:
        totals = [0.0, 0.0]
        print(f"\nprojection with {threads} thread(s) per run, runs one after another: hours = steps/run x runs x "
              f"s/step; 'CPU / threads' is the wall time if the threads scaled perfectly on an otherwise idle "
              f"machine (with 1 thread: its wall time), 'wall' the wall time measured here (inflated by other load)")
        print("| configuration | steps/run | runs | step time from | s/step CPU / threads | s/step wall | "
              "hours (CPU / threads) | hours (wall) |")
        print("|---|---|---|---|---|---|---|---|")
        for name in sweep.configs:
            p = plans[name]
            source = name if (name, threads) in times else next(
                (m for m in measured_names if (plans[m].kind, plans[m].timesteps, plans[m].batch_size)
                 == (p.kind, p.timesteps, p.batch_size) and (m, threads) in times), None)
            if source is None or p.steps_per_run is None:
                print(f"| {name} | {p.steps_per_run or '?'} | {p.runs} | not measured | – | – | – | – |")
                continue
            wall, cpu = times[(source, threads)]
            hours = [p.steps_per_run * p.runs * s / 3600 for s in (cpu / threads, wall)]
            totals = [a + b for a, b in zip(totals, hours)]
            print(f"| {name} | {p.steps_per_run} | {p.runs} | {source} | {cpu / threads:.3f} | {wall:.3f} | "
                  f"{hours[0]:.1f} | {hours[1]:.1f} |")
        print(f"total with {threads} thread(s): {totals[0]:.1f} h ({totals[0] / 24:.1f} days) from CPU / threads, "
              f"{totals[1]:.1f} h from the wall time measured here")
    return 0




if __name__ == "__main__":
    sys.exit(main())
