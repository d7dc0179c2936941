"""Where a training step goes, by op: ``torch.profiler`` over a few steps of one framework.

Runs :class:`train_step.Trainer` (the same step ``train_step.py`` times: saec's real training
step, or a peer's) in this process: ``--warmup`` untimed steps, then ``--steps`` profiled ones,
and prints the ops by self CPU time per step, with the machine. For the per-op split behind the
ratios in benchmarks/README.md; the wall times under the profiler are a little longer than
``train_step.py``'s.

    python benchmarks/profile_step.py                          # saec, T = 16, B = 64
    python benchmarks/profile_step.py --framework saec:dense-wgrad --rows 12
    python benchmarks/profile_step.py --framework snntorch
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--framework", default="saec", help="as train_step.py's --frameworks (one name)")
    parser.add_argument("--timesteps", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=2, help="profiled steps")
    parser.add_argument("--rows", type=int, default=15, help="ops shown")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--data", default=None, help="MNIST folder or a .pt image tensor [N,1,28,28]")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.rows < 1:
        parser.error("--steps and --rows must be at least 1, --warmup at least 0")
    switches = args.framework.split(":", 1)[1].split("+") if ":" in args.framework else []
    if args.framework.split(":")[0] == "saec" and "omp-active" not in switches:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as train_step.py's saec worker, before torch loads
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from torch.profiler import ProfilerActivity, profile

    import train_step

    torch.set_num_threads(args.threads)
    trainer = train_step.Trainer(args.framework, args.timesteps, args.batch, "cpu", args.data, 1024)
    for _ in range(args.warmup):
        trainer.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        walls = [trainer.step()[0] for _ in range(args.steps)]
    events = prof.key_averages()
    total_ms = sum(e.self_cpu_time_total for e in events) / 1e3 / args.steps
    print(f"{args.framework}: {train_step.machine()}; {torch.get_num_threads()} threads, T={args.timesteps} "
          f"B={args.batch}; {args.steps} profiled steps after {args.warmup}: wall "
          f"{sum(walls) / len(walls):.3f} s per step, self CPU of all ops {total_ms:.0f} ms per step")
    print("| op | calls per step | self CPU ms per step | share |")
    print("|---|---|---|---|")
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:args.rows]:
        ms = e.self_cpu_time_total / 1e3 / args.steps
        print(f"| `{e.key}` | {e.count / args.steps:g} | {ms:.1f} | {ms / total_ms:.0%} |")


if __name__ == "__main__":
    main()
