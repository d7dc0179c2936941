#!/usr/bin/env python
"""Training-step benchmark: saec against a plain PyTorch loop, snnTorch and SpikingJelly, and the dense floor.

Every framework trains the paper's SAE (specs/sae_dense.yaml: 28x28, conv16 /
conv32 / latent 100 / fc 12800 / deconv, fp32) for a few steps on the same
MNIST images, from the same initial weights, with the same objective (see
peers.py for each peer's semantics). Each framework runs in its own worker
process (so peak memory is its own); the coordinator hands out steps
round-robin, rotating the order every round, so machine noise hits all
frameworks alike; the reported time is the median per framework.

Columns: seconds per step (median) and saec's speed-up against it (its
s/step / saec's), image-timesteps per second (B*T / s), achieved GFLOP/s of
the nominal conv/linear work (3 x forward MACs x 2 FLOPs; peers.nominal_flops),
and peak memory: CPU, growth of the worker's peak RSS (VmHWM) over its RSS
just before the first step; CUDA, torch.cuda.max_memory_allocated over the
memory allocated before the first step. MB per time step is the slope of peak
memory between the smallest and largest T.

    python benchmarks/train_step.py --quick      # T=16,32, B=64, a few rounds (< 5 min on 2 cores)
    python benchmarks/train_step.py              # the full table of benchmarks/README.md
    python benchmarks/train_step.py --smoke      # tiny shapes, seconds (the test suite runs this)

The dense floor (``dense_floor``, peers.dense_floor; no peer) runs the same
conv/linear work as saec's step, with the same layer shapes, T, B and
weights, each synapse on [T*B, ...] as saec runs it, forward + backward +
Adam, in plain torch, with one ReLU in place of each LIF and a plain squared
error in place of the readout and objective: what the dense kernels alone
take on this machine. It runs interleaved with the others like a framework.

saec runs with the built-in execution plan (saec/runtime/plan.py: chunk sizes, layouts, the
output layer's algorithm, the pool's threshold) unless ``SAEC_PLAN=auto`` (the cached plan,
measured first when none is cached) or ``--replan`` (measured again); the report prints it,
one line per knob.

The last line is ``saec_vs_best_peer=<x> mem_vs_snntorch=<y>``: x is the
smallest, over the T values run, of (best peer's s/step) / (saec's s/step),
so x > 1 means saec is faster than every peer at every T; y is saec's peak
memory over snnTorch's at the largest T.

The line before the last is ``saec_vs_dense_floor=<z>``: z is the smallest,
over the T values run, of (dense floor's s/step) / (saec's s/step), so z < 1
means saec takes longer than the dense work alone (z = 0.75: saec runs at 75 %
of the dense floor's speed); nan when the dense floor was not run. The last
line is ``saec_vs_best_peer=<x> mem_vs_snntorch=<y>``: x is the
smallest, over the T values run, of (best peer's s/step) / (saec's s/step),
so x > 1 means saec is faster than every peer at every T (the dense floor is
not a peer and never counts here); y is saec's peak memory over snnTorch's at
the largest T.

Framework names: ``saec``, ``torch_loop``, ``snntorch``, ``spikingjelly``, ``dense_floor``, and
saec variants for measuring one lever at a time, ``saec:`` followed by
``+``-joined switches: ``torch-scan`` (no fused kernel), ``keep-memory``
(SAEC_KEEP_FREED_MEMORY=1), ``thp`` (THP_MEM_ALLOC_ENABLE=1), ``float-saves``
(synapses keep their float input, as plain autograd does), ``no-channels-last``
(contiguous convolutions), ``reference`` (the autograd-oracle scan and plain
synapses), ``bf16`` (CPU autocast to bfloat16), ``heap-no-trim-change`` (glibc's mmap
threshold raised to 1 GiB, its trimming left as it is), ``no-pool`` (no buffer pool:
every large tensor freshly allocated), ``omp-active`` (the saec worker does not set
OMP_WAIT_POLICY=PASSIVE), ``ftz`` (flush denormals to zero), ``dense-wgrad`` (every weight
gradient dense, none spike-driven), ``dense-igrad`` (every input gradient dense, none at the active
inputs only), ``dense-forward`` (every synapse's forward dense: oneDNN / MKL instead of the
spike-driven kernel, which rounds differently).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "specs" / "sae_dense.yaml"
PEER_NAMES = ("torch_loop", "snntorch", "spikingjelly")
DENSE_FLOOR = "dense_floor"  # the conv/linear work alone (peers.dense_floor): a reference, never a peer
DEFAULT_FRAMEWORKS = ("saec", *PEER_NAMES, DENSE_FLOOR)
LR = 5e-4


# ---------------------------------------------------------------- one framework (in a worker)
def _load_images(data: str | None, count: int):
    """The first ``count`` real MNIST images: a .pt tensor file, an MNIST folder, or mnist5k."""
    import torch

    from saec.training.data import default_mnist_root, load_images

    if data and data.endswith(".pt"):
        images = torch.load(data)
    else:
        root = data or default_mnist_root()  # $SAEC_MNIST_ROOT or ./data/mnist, as saec looks
        try:
            images = load_images("mnist", "test", root=root).images
        except Exception:  # noqa: BLE001 - no MNIST folder: the embedded subset
            images = load_images("mnist5k", "train").images
    if images.shape[0] < count:
        images = images.repeat((count + images.shape[0] - 1) // images.shape[0], 1, 1, 1)
    return images[:count].contiguous()


def _saec_trainer(name: str, graph, weights, device, plan_doc: dict | None = None):
    """saec's real training step: model + objective + backward + Adam step, under the execution
    plan ``plan_doc`` (:meth:`saec.runtime.plan.ExecutionPlan.to_dict`; None: the built-in plan)."""
    import dataclasses

    import torch

    from saec.runtime import fastpath
    from saec.runtime.execution import Execution
    from saec.runtime.model import SpikingAutoencoder
    from saec.runtime.plan import DEFAULT_LAYER, DEFAULT_PLAN, ExecutionPlan
    from saec.training.objective import objective

    plan = DEFAULT_PLAN if plan_doc is None else ExecutionPlan.from_dict(plan_doc)

    switches = set(name.split(":", 1)[1].split("+")) if ":" in name else set()
    unknown = switches - {"torch-scan", "keep-memory", "float-saves", "no-channels-last", "reference", "bf16",
                          "thp", "heap-no-trim-change", "ftz", "no-pool", "omp-active", "dense-wgrad",
                          "dense-igrad", "dense-forward"}
    if unknown:
        raise SystemExit(f"unknown saec switches {sorted(unknown)}")
    if "no-pool" in switches:  # no buffer pool: every large tensor freshly allocated
        from saec.runtime import pool

        pool.MIN_POOLED_BYTES = 1 << 62
        plan = dataclasses.replace(plan, min_pooled_bytes=None)  # the module's threshold, set just above
    if "dense-wgrad" in switches:  # every weight gradient dense (oneDNN / MKL), none spike-driven
        from saec.runtime import spikedriven

        spikedriven.WEIGHT_GRAD_MAX_ACTIVITY = -1.0  # no activity is at most -1
        plan = dataclasses.replace(plan, layers=tuple((k, dataclasses.replace(v, weight_grad="dense"))
                                                      for k, v in plan.layers))
    if "dense-igrad" in switches:  # every input gradient dense (oneDNN / MKL), none at the active inputs only
        from saec.runtime import spikedriven

        spikedriven.INPUT_GRAD_MAX_ACTIVITY = -1.0
        plan = dataclasses.replace(plan, layers=tuple((k, dataclasses.replace(v, input_grad="dense"))
                                                      for k, v in plan.layers))
    if "ftz" in switches:  # flush denormals to zero (this thread, and threads created after)
        torch.set_flush_denormal(True)
    if "no-channels-last" in switches:
        fastpath._prefers_channels_last = lambda op, x, choice=None: False
    if "heap-no-trim-change" in switches:  # large blocks from the heap, glibc's own trimming kept
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt(-3, 1 << 30)
    if "float-saves" in switches:  # what plain autograd keeps: the float input
        def plain_synapse(op, w, b, x, x_bool, lead_dims=1, sample=None, contiguous_out=False, out_sample=None,
                          spike_driven=True, choice=fastpath.DEFAULT_CHOICE,
                          gated_input=False):  # spike_driven, gated_input: plain autograd uses neither
            lead = x.shape[:lead_dims]
            rows = x.reshape(-1, *(sample or x.shape[lead_dims:]))
            y = fastpath.synapse_forward(op, w, b, rows, choice)
            if out_sample is not None:
                y = y.view(y.shape[0], *out_sample)
            return y.reshape(*lead, *y.shape[1:])

        fastpath.spike_synapse = plain_synapse
    model = SpikingAutoencoder(graph).to(device)
    model.load_ir_state_dict({k: v.to(device) for k, v in weights.items()})
    if "dense-forward" in switches:  # every synapse's forward dense (oneDNN / MKL): another rounding
        planned = dict(plan.layers)
        plan = dataclasses.replace(plan, layers=tuple(sorted(
            (key, dataclasses.replace(planned.get(key, DEFAULT_LAYER), forward="dense"))
            for key in set(model._layer_keys.values()))))
    model.execution = Execution(path="reference" if "reference" in switches else "fast",
                                scan_backend="torch" if "torch-scan" in switches else "auto", plan=plan)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled="bf16" in switches)

    def step(x, gen) -> float:
        with autocast:
            out = model(x, generator=gen)
        loss, _ = objective(model, out, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def _peak_rss_mb() -> float:
    """This process's peak RSS: /proc/self/status VmHWM, the high-water mark of its own address space.

    Not ``ru_maxrss``: Linux carries that over from the parent through fork and exec, so a worker
    started after the coordinator planned (hundreds of MB) would report the coordinator's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Trainer:
    """One framework's training state; ``step()`` runs one step and returns (wall, CPU) seconds."""

    def __init__(self, name: str, timesteps: int, batch: int, device: str, data: str | None,
                 images_count: int, plan_doc: dict | None = None) -> None:
        switches = name.split(":", 1)[1].split("+") if ":" in name else []
        if "keep-memory" in switches:
            os.environ["SAEC_KEEP_FREED_MEMORY"] = "1"
        if "thp" in switches:  # torch's own transparent-huge-page allocation (read at the first allocation)
            os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
        import torch

        import peers
        from saec.compiler.pipeline import compile_spec
        from saec.runtime.model import SpikingAutoencoder

        self.torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda":  # fp32 means fp32: no TF32 in cuDNN convolutions or cuBLAS
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        _, self.graph = compile_spec(str(SPEC), [f"encoding.timesteps={timesteps}"])
        init = SpikingAutoencoder(self.graph)
        init.reset_parameters(torch.Generator().manual_seed(0))
        weights = init.ir_state_dict()
        if name.split(":")[0] == "saec":
            self._step = _saec_trainer(name, self.graph, weights, self.device, plan_doc)
        else:
            self._step = peers.PEERS[name](self.graph, weights, LR, self.device)
        self.images = _load_images(data, images_count).to(self.device)
        self.batch = batch
        self.gen = torch.Generator(device=self.device).manual_seed(1)
        self.count = 0
        self.loss = float("nan")
        self.base_mb = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def step(self) -> float:
        if self.base_mb is None:  # memory before the first step
            self._sync()
            if self.device.type == "cuda":
                self.torch.cuda.reset_peak_memory_stats()
                self.base_mb = self.torch.cuda.memory_allocated() / 2**20
            else:
                self.base_mb = _rss_mb()
        n = self.images.shape[0]
        start = (self.count * self.batch) % n
        x = self.images[start:start + self.batch]
        self._sync()
        t0, c0 = time.perf_counter(), time.process_time()
        self.loss = self._step(x, self.gen)
        self._sync()
        self.count += 1
        return time.perf_counter() - t0, time.process_time() - c0

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return self.torch.cuda.max_memory_allocated() / 2**20 - self.base_mb
        return _peak_rss_mb() - self.base_mb


def _worker_main(args: argparse.Namespace) -> None:
    """Serve ``step`` / ``done`` commands on stdin; answer one JSON line each on stdout."""
    out = sys.stdout
    sys.stdout = sys.stderr  # anything a framework prints must not break the protocol
    switches = args.worker.split(":", 1)[1].split("+") if ":" in args.worker else []
    if args.worker.split(":")[0] == "saec" and "omp-active" not in switches:
        # as the saec command line does (saec/cli.py), before torch loads its OpenMP runtime
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(args.threads)
    trainer = Trainer(args.worker, args.timesteps[0], args.batch, args.device, args.data, args.images,
                      json.loads(args.plan_json) if getattr(args, "plan_json", None) else None)
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        command = line.strip()
        if command == "step":
            wall, cpu = trainer.step()
            reply = {"seconds": wall, "cpu_seconds": cpu}
        elif command == "done":
            reply = {"peak_mb": trainer.peak_mb(), "loss": trainer.loss}
        else:
            reply = {"error": f"unknown command {command!r}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
        if command == "done":
            return


# ---------------------------------------------------------------- the coordinator
class SubprocessWorker:
    """A framework in a worker process of its own."""

    def __init__(self, name: str, T: int, args: argparse.Namespace) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--timesteps", str(T),
               "--batch", str(args.batch), "--device", args.device, "--threads", str(args.threads),
               "--images", str(args.images)] + (["--data", args.data] if args.data else [])
        if name.split(":")[0] == "saec":
            cmd += ["--plan-json", json.dumps(args.plans[T].plan.to_dict())]
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=str(REPO))

    def _ask(self, command: str | None) -> dict:
        return ask_worker(self.proc, self.name, command)

    def ready(self) -> None:
        self._ask(None)

    def step(self) -> tuple[float, float]:
        reply = self._ask("step")
        return reply["seconds"], reply["cpu_seconds"]

    def done(self) -> dict:
        reply = self._ask("done")
        self.proc.wait(timeout=60)
        return reply


class InProcessWorker:
    """A framework in this process (``--in-process``: fast start; memory figures are shared)."""

    def __init__(self, name: str, T: int, args: argparse.Namespace) -> None:
        self.trainer = Trainer(name, T, args.batch, args.device, args.data, args.images,
                               args.plans[T].plan.to_dict() if name.split(":")[0] == "saec" else None)

    def ready(self) -> None:
        pass

    def step(self) -> tuple[float, float]:
        return self.trainer.step()

    def done(self) -> dict:
        return {"peak_mb": float("nan"), "loss": self.trainer.loss}


@dataclass
class Result:
    name: str
    T: int
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    peak_mb: float = float("nan")
    loss: float = float("nan")

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_seconds)


def resolve_plans(args: argparse.Namespace) -> dict:
    """The execution plan saec runs with at each T (saec.runtime.plan.ResolvedPlan), in this process,
    before any worker starts (measuring must not share the CPU with them)."""
    import torch

    from saec.compiler.pipeline import compile_spec
    from saec.runtime.plan import plan_policy, resolve_plan

    torch.set_num_threads(args.threads)  # the workers' count: the plan is measured (and cached) for it
    policy = "replan" if args.replan else plan_policy("default")  # SAEC_PLAN=auto: the cached (or a measured) plan
    plans = {}
    for T in args.timesteps:
        _, graph = compile_spec(str(SPEC), [f"encoding.timesteps={T}"])
        plans[T] = resolve_plan(graph, args.batch, device=args.device, policy=policy)
    return plans


def plan_report(args: argparse.Namespace) -> list[str]:
    """One line per knob of the plan saec ran with, per T."""
    from saec.compiler.pipeline import compile_spec

    lines = []
    for T, resolved in args.plans.items():
        _, graph = compile_spec(str(SPEC), [f"encoding.timesteps={T}"])
        lines.append(f"saec T={T} {resolved.line(graph)}")
        lines += [f"  {line}" for line in resolved.plan.knob_lines(graph, args.batch)]
    return lines


def run_timesteps(T: int, names: list[str], args: argparse.Namespace) -> dict[str, Result]:
    """All frameworks at one T: round-robin steps, rotating the order every round."""
    make = InProcessWorker if args.in_process else SubprocessWorker
    workers = {}
    for name in names:
        workers[name] = make(name, T, args)
    for w in workers.values():
        w.ready()
    results = {name: Result(name, T) for name in names}
    for r in range(args.warmup + args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            seconds, cpu_seconds = workers[name].step()
            if r >= args.warmup:
                results[name].seconds.append(seconds)
                results[name].cpu_seconds.append(cpu_seconds)
        if args.verbose:
            print(f"  T={T} round {r + 1}/{args.warmup + args.rounds}: "
                  + ", ".join(f"{n} {results[n].seconds[-1]:.3f}s (cpu {results[n].cpu_seconds[-1]:.2f})"
                              for n in names if results[n].seconds),
                  file=sys.stderr)
    for name, w in workers.items():
        reply = w.done()
        results[name].peak_mb, results[name].loss = reply["peak_mb"], reply["loss"]
    return results


def ask_worker(proc: subprocess.Popen, name: str, command: str | None) -> dict:
    """Send ``command`` (None: nothing, just read) to a worker process and return its one-line JSON reply.

    Raises:
        SystemExit: the worker ended before answering (its own output, above, says why).
    """
    if command is not None:
        proc.stdin.write(command + "\n")
        proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"worker {name} ended (exit code {proc.wait()}); see its output above")
    return json.loads(line)


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def report(all_results: dict[int, dict[str, Result]], args: argparse.Namespace) -> tuple[float, float, float]:
    """Print the markdown table; return (saec_vs_best_peer, mem_vs_snntorch, saec_vs_dense_floor)."""
    import peers
    from saec.compiler.pipeline import compile_spec

    Ts = sorted(all_results)
    print(f"\nmachine: {machine()}; device {args.device}, {args.threads} threads, B={args.batch}, fp32, "
          f"{args.rounds} timed rounds (+{args.warmup} warm-up), median s/step")
    for line in plan_report(args):  # the execution plan saec ran with
        print(line)
    print("| T | framework | s/step | saec speed-up | img·T/s | GFLOP/s | CPU s/step | saec CPU speed-up "
          "| peak MB | mem / saec | MB per step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    speedups, floor_ratios = [], []
    for T in Ts:
        res = all_results[T]
        _, graph = compile_spec(str(SPEC), [f"encoding.timesteps={T}"])
        flops = peers.nominal_flops(graph, T, args.batch)
        saec = res.get("saec")
        for name, r in res.items():
            slope = float("nan")
            if len(Ts) > 1 and name in all_results[Ts[0]] and name in all_results[Ts[-1]]:
                slope = (all_results[Ts[-1]][name].peak_mb - all_results[Ts[0]][name].peak_mb) / (Ts[-1] - Ts[0])
            up = r.median / saec.median if saec else float("nan")
            cpu_up = r.cpu_median / saec.cpu_median if saec else float("nan")
            mem = r.peak_mb / saec.peak_mb if saec else float("nan")
            print(f"| {T} | {name} | {r.median:.3f} | {up:.2f}x | {args.batch * T / r.median:,.0f} | "
                  f"{flops / r.median / 1e9:.1f} | {r.cpu_median:.2f} | {cpu_up:.2f}x | {r.peak_mb:,.0f} | "
                  f"{mem:.2f} | {slope:.1f} |")
        peer_times = [r.median for n, r in res.items() if n in PEER_NAMES]
        if saec and peer_times:
            speedups.append(min(peer_times) / saec.median)
        if saec and DENSE_FLOOR in res:
            floor_ratios.append(res[DENSE_FLOOR].median / saec.median)
    speedup = min(speedups) if speedups else float("nan")
    floor_ratio = min(floor_ratios) if floor_ratios else float("nan")
    last = all_results[Ts[-1]]
    mem_ratio = last["saec"].peak_mb / last["snntorch"].peak_mb if "saec" in last and "snntorch" in last \
        else float("nan")
    print("\nsaec speed-up = framework's s/step / saec's (>1: saec faster); GFLOP/s counts the nominal "
          "conv/linear FLOPs (3 x forward MACs x 2) per step; CPU s/step = the worker's process CPU time "
          "(all threads), less sensitive to other load on the machine than wall time; dense_floor = the same "
          "conv/linear work with ReLU for the LIF, no peer (saec_vs_dense_floor = its s/step / saec's)")
    return speedup, mem_ratio, floor_ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="T=16,32, 1 warm-up + 4 timed rounds")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, in-process, seconds (tests)")
    parser.add_argument("--timesteps", type=int, nargs="+", default=None, help="T values (default 16 32)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 10; --quick 4)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 2; --quick 1)")
    parser.add_argument("--frameworks", nargs="+", default=list(DEFAULT_FRAMEWORKS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--data", default=None, help="MNIST folder or a .pt image tensor [N,1,28,28]")
    parser.add_argument("--images", type=int, default=None, help="distinct images cycled through")
    parser.add_argument("--in-process", action="store_true", help="no worker processes (memory not separated)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--verbose", action="store_true", help="print every round's times to stderr")
    parser.add_argument("--replan", action="store_true",
                        help="measure saec's execution plan again (replacing the cached one) before the run")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--plan-json", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.timesteps = args.timesteps or [2, 3]
        args.batch = 2 if args.batch == 64 else args.batch
        args.rounds = 2 if args.rounds is None else args.rounds
        args.warmup = 0 if args.warmup is None else args.warmup
        args.in_process = args.in_process or not os.environ.get("SAEC_BENCH_SUBPROCESS")
    args.timesteps = args.timesteps or [16, 32]
    args.rounds = args.rounds if args.rounds is not None else (4 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.images = args.images or max(4 * args.batch, 256)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.worker:
        _worker_main(args)
        return 0

    import peers

    names = peers.available(args.frameworks)
    args.plans = resolve_plans(args) if any(n.split(":")[0] == "saec" for n in names) else {}
    all_results = {}
    t0 = time.perf_counter()
    for T in args.timesteps:
        all_results[T] = run_timesteps(T, names, args)
    speedup, mem_ratio, floor_ratio = report(all_results, args)
    print(f"(benchmark wall time {time.perf_counter() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine(), "device": args.device, "batch": args.batch, "threads": args.threads,
            "results": {str(T): {n: {"seconds": r.seconds, "cpu_seconds": r.cpu_seconds, "median": r.median,
                                     "peak_mb": r.peak_mb, "loss": r.loss} for n, r in res.items()}
                        for T, res in all_results.items()},
            "saec_vs_best_peer": speedup, "mem_vs_snntorch": mem_ratio, "saec_vs_dense_floor": floor_ratio,
            "plans": {str(T): {"source": p.source, "plan": p.plan.to_dict()} for T, p in args.plans.items()}},
            indent=1))
    print(f"saec_vs_dense_floor={floor_ratio:.2f}")
    print(f"saec_vs_best_peer={speedup:.2f} mem_vs_snntorch={mem_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
