"""End-to-end training with membrane-potential backpropagation; one run folder per run.

The loop is deterministic for a given seed and device: the data order of
epoch ``e`` comes from its own generator, and the encoding noise from one
generator whose state is checkpointed, so ``--resume`` after an interruption
ends with the same weights as an uninterrupted run.

Under ``torchrun`` (WORLD_SIZE > 1) each global batch is split across ranks
(rank r takes examples r, r + world, ...), gradients are averaged by
DistributedDataParallel (gloo on CPU, nccl on CUDA) and rank 0 alone writes
the run folder. Every rank draws the Poisson encoding of the whole global
batch from the same generator and keeps its own examples' spike trains, so
an SAE run trains on the same spikes whatever the number of processes (and
matches a single process up to float summation order; tests/test_distributed.py).
The logged training terms are global-batch means, and stopping (Ctrl-C, a
NaN loss) is agreed on by all ranks at a step boundary.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from saec.compiler import ops
from saec.compiler.graph import IRGraph
from saec.run import artifacts as A
from saec.run.checkpoint import CHECKPOINTS, MANIFEST, RunLock, load_checkpoint, read_manifest, \
    write_checkpoint
from saec.training.data import ImageSet, batch_indices, make_splits
from saec.runtime.encoding import poisson_encode
from saec.analysis.evaluate import evaluate
from saec.runtime.model import SpikingAutoencoder
from saec.training.objective import mean_spike_rate, objective
from saec.run.steplog import StepLog, check_logger
from saec.errors import UserError
from saec.spec.loader import load_spec, resolved_yaml
from saec.spec.schema import Spec

STATE_FORMAT = 2


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C: a resumable checkpoint was written (or, on a second Ctrl-C, the last one was kept)."""


class RunWriteFailed(RuntimeError):
    """Writing the run folder failed mid-run (full disk, permissions); the last complete checkpoint is kept."""


class _StopRequested(Exception):
    """Internal: stop at this step boundary and write a checkpoint."""


class _CtrlC:
    """SIGINT handling for the training loop.

    The first Ctrl-C only sets :attr:`requested`; the loop stops at the next
    step boundary, where weights, optimizer and RNG state agree, and writes a
    checkpoint there (a KeyboardInterrupt raised in the middle of
    ``optimizer.step()`` could leave half-updated weights). A second Ctrl-C
    raises KeyboardInterrupt at once and no checkpoint is written. Outside the
    main thread signals cannot be caught and Ctrl-C behaves as usual.
    """

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.requested = False
        self.immediate = False  # set where there is no step to finish (the final evaluation)
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> "_CtrlC":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested or self.immediate:
            self.requested = True
            raise KeyboardInterrupt
        self.requested = True
        self.log("Ctrl-C: finishing this step, then writing a checkpoint (Ctrl-C again to stop without one)")

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class Dist:
    """Process-group facts (a single process when not under torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("CUDA was asked for (--device cuda) but torch sees no GPU; use --device cpu or auto",
                        path="--device")
    if device not in ("cpu", "cuda"):
        raise UserError(f"unknown device {device!r} (cpu, cuda or auto)", path="--device")
    return torch.device(device)


def _init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    from datetime import timedelta

    import torch.distributed as tdist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)  # before nccl starts, so each rank owns its own GPU
    if not tdist.is_initialized():
        # Rank 0 evaluates alone at the end of every epoch (T = 100 on 10k images takes a while on a
        # CPU) while the other ranks wait in the next collective: allow far more than the 30-min default.
        tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                 timeout=timedelta(hours=3))
    return Dist(tdist.get_rank(), tdist.get_world_size(), local_rank)


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (so all ranks stop at the same step)."""
    import torch.distributed as tdist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _global_batch_means(parts: dict[str, float], n_local: int, device: torch.device) -> dict[str, float]:
    """Per-rank batch means of the logged terms -> means over the global batch (identical on every rank).

    A NaN on any rank makes the global value NaN, so every rank sees the divergence.
    """
    import torch.distributed as tdist

    keys = sorted(parts)
    t = torch.tensor([parts[k] * n_local for k in keys] + [float(n_local)], dtype=torch.float64, device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return {k: float(t[i] / t[-1]) for i, k in enumerate(keys)}


def _rank_inputs(model: SpikingAutoencoder, images: torch.Tensor, batch: torch.Tensor, dist: Dist,
                 noise: torch.Generator, sample_noise: torch.Generator | None,
                 device: torch.device, spikes: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """This rank's examples of a global ``batch`` and the keyword arguments of its forward pass.

    A single process draws the encoding from ``noise`` inside the model. Under DDP every rank encodes
    the whole global batch with the shared ``noise`` generator and keeps its own rows, so each example
    gets the spike train a single process would give it. Models without an encoding (VAE sampling)
    draw from the rank's own ``sample_noise`` instead: the same stream on every rank would give
    the examples of different ranks identical samples.
    """
    if spikes is not None:  # pre-encoded input (data.dataset: events): no encoder, images are the target
        mine = slice(None) if dist.world == 1 else slice(dist.rank, None, dist.world)
        own = batch[mine]
        encoded = spikes[own].to(device, non_blocking=True).transpose(0, 1).to(torch.float32)
        return images[own].to(device, non_blocking=True), {"encoded": encoded}
    if dist.world == 1:
        return images[batch].to(device, non_blocking=True), {"generator": noise}
    mine = slice(dist.rank, None, dist.world)
    encoders = list(model.graph.nodes(ops.PoissonEncode))
    if not encoders:
        return images[batch[mine]].to(device, non_blocking=True), {"generator": sample_noise}
    x_global = images[batch].to(device, non_blocking=True)
    encoded = poisson_encode(x_global, model.graph.op(encoders[0]), generator=noise)
    return x_global[mine], {"encoded": encoded[:, mine]}


def _make_optimizer(spec: Spec, params) -> torch.optim.Optimizer:
    t = spec.training
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay, momentum=0.9)


def _make_schedule(spec: Spec, opt: torch.optim.Optimizer):
    s = spec.training.schedule
    if s.type == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.training.epochs)
    if s.type == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=s.step_size, gamma=s.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """The shuffled global batches of one epoch (a generator of its own per epoch)."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**64)  # any seed < 2**63 (the spec's range)
    return list(batch_indices(n, batch_size, shuffle=True, generator=gen))


class _Progress:
    """A rich progress bar on a terminal, one line per epoch otherwise."""

    def __init__(self, enabled: bool, log: Callable[[str], None]) -> None:
        self.log = log
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=True)
            self.bar.start()
        self.task = None

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int) -> None:
        if self.bar is not None:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task(f"epoch {epoch + 1}/{epochs}", total=total, completed=done, info="")

    def step(self, info: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _write_run_header(out: Path, spec: Spec, graph: IRGraph) -> None:
    A.write_text(out / A.SPEC, resolved_yaml(spec))
    from saec.compiler.pipeline import summarize

    A.write_text(out / A.IR, graph.to_json(summarize(graph)) + "\n")


def load_run(run: Path) -> tuple[Spec, IRGraph]:
    """The resolved spec and IR of a run folder, checked against each other.

    Raises:
        UserError: not a run folder, a damaged ``ir.json``, or a ``spec.yaml`` edited after the run was
            compiled (its sha256 differs from the one ``ir.json`` records); each names the file.
    """
    import hashlib

    run = Path(run)
    if not run.is_dir():
        raise UserError("not a saec run folder (no such folder)", file=str(run))
    for name in (A.SPEC, A.IR):
        if not (run / name).is_file():
            raise UserError(f"not a saec run folder (no {name})", file=str(run))
    spec = load_spec(run / A.SPEC).spec
    ir_path = run / A.IR
    doc = A.load_json(ir_path)
    try:
        graph = IRGraph.from_dict(doc) if isinstance(doc, dict) else None
    except Exception as exc:  # noqa: BLE001 - any malformed node is "a damaged ir.json", named as such
        raise A.ArtifactError(ir_path, f"not a saec IR ({A._short(exc)})") from None
    if graph is None:
        raise A.ArtifactError(ir_path, f"not a saec IR (a JSON {type(doc).__name__}, not an object)")
    recorded = graph.attrs.get("spec_sha256")
    actual = hashlib.sha256(resolved_yaml(spec).encode()).hexdigest()
    if recorded != actual:
        raise A.ArtifactError(run / A.SPEC, f"does not match the run's IR (sha256 {actual[:12]}..., {A.IR} records "
                                            f"{str(recorded)[:12]}...): spec.yaml or ir.json was edited after "
                                            "the run was compiled, so the folder no longer describes its model")
    from saec.compiler.pipeline import compile_loaded
    from saec.spec.loader import LoadedSpec

    rebuilt = compile_loaded(LoadedSpec(spec, str(run / A.SPEC)))
    structure = [(n["name"], n["op"], n["inputs"]) for n in rebuilt.to_dict()["nodes"]]
    if structure != [(n["name"], n["op"], n["inputs"]) for n in graph.to_dict()["nodes"]]:
        raise A.ArtifactError(ir_path, f"its graph differs from the one {A.SPEC} compiles to (edited or damaged)")
    return spec, graph


def check_weights(path: Path, weights: dict[str, torch.Tensor], model: SpikingAutoencoder, *,
                  finite: bool = True) -> None:
    """Refuse weights that do not fit ``model`` (keys, shapes, dtype) or, with ``finite``, hold NaN/inf.

    Raises:
        ArtifactError: naming ``path`` and the first offending tensor.
    """
    expected = {k: v for k, v in model.ir_state_dict().items()}
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or extra:
        raise A.ArtifactError(path, "tensors do not match the run's IR"
                                    + (f"; missing {', '.join(missing)}" if missing else "")
                                    + (f"; unexpected {', '.join(extra[:5])}" if extra else ""))
    for key, want in expected.items():
        got = weights[key]
        if tuple(got.shape) != tuple(want.shape):
            raise A.ArtifactError(path, f"tensor {key} has shape {list(got.shape)}, the IR needs {list(want.shape)}")
        if not got.is_floating_point():
            raise A.ArtifactError(path, f"tensor {key} has dtype {got.dtype}, not a floating-point type")
        if finite and not torch.isfinite(got).all():
            raise A.ArtifactError(path, f"tensor {key} holds NaN or infinite values; the run diverged or the "
                                        "file was damaged")


def load_model(run: Path, device: str | torch.device = "cpu") -> tuple[Spec, SpikingAutoencoder]:
    """A trained model from a run folder (weights from model.safetensors, checked: keys, shapes, finite)."""
    spec, graph = load_run(run)
    weights = Path(run) / A.WEIGHTS
    if not weights.is_file():
        raise UserError(f"no trained weights ({A.WEIGHTS}); train or resume this run first", file=str(run))
    manifest = read_manifest(run)
    if manifest is not None and A.sha256_file(weights) != manifest["files"][A.WEIGHTS]:
        raise A.ArtifactError(weights, f"differs from the weights {MANIFEST} records (sha256): the file was changed "
                                       f"or damaged after training; `saec train --resume {run}` restores it from "
                                       "the checkpoint if that is intact")
    model = SpikingAutoencoder(graph)
    state = A.load_weights(weights)
    check_weights(weights, state, model)
    model.load_ir_state_dict(state)
    return spec, model.to(device)


def _refuse_existing_run(out: Path, force: bool) -> None:
    """A fresh run may not overwrite another run's files unless ``force``."""
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a folder; give --out a folder for the run", file=str(out))
    # Only trained state is worth protecting: a folder a crash left with just spec.yaml and ir.json restarts.
    held = [name for name in (A.WEIGHTS, A.TRAIN_STATE, MANIFEST) if (out / name).exists()]
    if held and not force:
        raise UserError(f"already holds a run ({', '.join(held)}); use --resume to continue it, --force to "
                        "overwrite it, or --out for a new folder", file=str(out))


def _clear_run(out: Path) -> None:
    """Remove the artifacts of an earlier run in ``out`` (``--force``), so none outlives the new run."""
    for stale in (MANIFEST, A.TRAIN_STATE, A.WEIGHTS, A.METRICS, A.EVAL, A.STATS, A.STEPS, A.REPORT):
        (out / stale).unlink(missing_ok=True)
    for folder in (A.FIGURES, A.EXPORT, CHECKPOINTS, A.TENSORBOARD):  # drawn from or exported from the old weights
        shutil.rmtree(out / folder, ignore_errors=True)
    for leftover in out.glob(".*.tmp-*"):  # temporaries of a process that was killed
        leftover.unlink(missing_ok=True)


def train(spec: Spec, graph: IRGraph, out: Path, *, data_dir: str | None = None, device: str = "auto",
          resume: bool = False, force: bool = False, progress: bool = True, logger: str = "csv",
          log: Callable[[str], None] = print, stop_after_steps: int | None = None) -> dict[str, Any]:
    """Train ``graph`` as ``spec.training`` says; write the run folder ``out``.

    Checkpoints (``model.safetensors`` + ``train_state.pt``) are written at the
    end of every epoch and when the run is interrupted, always at a step
    boundary, each file atomically (temporary name, then rename).

    Args:
        spec: the resolved spec (training and data settings).
        graph: the compiled IR (the network).
        out: run folder.
        data_dir: overrides ``data.root`` (and the validation root).
        device: ``cpu``, ``cuda`` or ``auto``.
        resume: continue from ``out/train_state.pt``.
        force: overwrite an existing run in ``out``.
        progress: show a progress bar (on a terminal; one line per epoch goes to ``log`` either way).
        logger: ``csv`` (``steps.csv`` only, always written) or ``tensorboard`` (also
            ``out/tensorboard/``); see :mod:`saec.run.steplog`.
        log: where progress lines go.
        stop_after_steps: behave as if Ctrl-C was pressed once this many optimizer
            steps (counted over the whole run) are done (tests).
    Returns:
        The final evaluation metrics (also in ``out/eval.json``).
    Raises:
        UserError: bad input (existing run folder, data missing, bad device, a folder in use by another
            process, a folder that cannot be written, a damaged checkpoint).
        TrainingDiverged: NaN/inf loss or weights; the last checkpoint is left as it was.
        TrainingInterrupted: Ctrl-C (or ``stop_after_steps``); a checkpoint was written.
        RunWriteFailed: writing failed mid-run (full disk); the last complete checkpoint is kept.
    """
    out = Path(out)
    dev = resolve_device(device)
    check_logger(logger)
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a folder; give --out a folder for the run", file=str(out))
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 alone writes, and holds the lock
        return _train(spec, graph, out, data_dir=data_dir, device=dev, resume=resume, force=force,
                      progress=progress, logger=logger, log=log, stop_after_steps=stop_after_steps)
    try:
        lock = RunLock(out, "train")
        lock.acquire()
    except OSError as exc:
        raise UserError(f"cannot write the run folder: {exc.strerror or exc}", file=str(out)) from None
    try:
        if lock.took_over:
            log(f"took over the lock of a process that is gone (pid {lock.took_over.get('pid')})")
        return _train(spec, graph, out, data_dir=data_dir, device=dev, resume=resume, force=force,
                      progress=progress, logger=logger, log=log, stop_after_steps=stop_after_steps)
    finally:
        lock.release()


def _train(spec: Spec, graph: IRGraph, out: Path, *, data_dir: str | None, device: torch.device,
           resume: bool, force: bool, progress: bool, logger: str, log: Callable[[str], None],
           stop_after_steps: int | None) -> dict[str, Any]:
    """:func:`train` once the run folder is locked."""
    dev = device
    t = spec.training
    state = None
    checkpoint_on_disk = None
    if resume:
        checkpoint_on_disk = load_checkpoint(out, repair=int(os.environ.get("RANK", "0")) == 0)
        if checkpoint_on_disk is None:
            raise UserError(f"nothing to resume (no {A.TRAIN_STATE})", file=str(out))
        state = checkpoint_on_disk[2]
        if state.get("format") != STATE_FORMAT:
            raise UserError(f"{A.TRAIN_STATE} has format {state.get('format')!r}, this saec writes {STATE_FORMAT}; "
                            "cannot resume it", file=str(out))
        if state.get("complete"):
            check_weights(out / A.WEIGHTS, checkpoint_on_disk[0], SpikingAutoencoder(graph))
            log(f"run {out} is already complete; nothing to do")
            return A.load_json(out / A.EVAL) if (out / A.EVAL).is_file() else {}
    else:
        _refuse_existing_run(out, force)
    dist = _init_distributed(dev)
    if dist.world > 1 and dev.type == "cuda":
        dev = torch.device("cuda", dist.local_rank)

    from saec.training.data import DataError, check_input_shape

    try:
        train_set, val_set = make_splits(spec.data, data_dir, seed=t.seed, log=log if dist.main else None)
        for part in (train_set, val_set):
            check_input_shape(part, spec.input.shape, spec.encoding.timesteps)
    except DataError as exc:
        raise UserError(str(exc), path="data") from None
    last = len(train_set) % t.batch_size
    reaches_last = t.max_steps is None or t.max_steps * t.batch_size >= len(train_set)
    if dist.world > 1 and 0 < last < dist.world and reaches_last:
        raise UserError(f"the last batch of every epoch holds {last} example(s), fewer than the {dist.world} "
                        f"processes, so a process would get none; change training.batch_size or data.train_limit",
                        path="training.batch_size")

    torch.manual_seed(t.seed)
    model = SpikingAutoencoder(graph)
    model.reset_parameters(torch.Generator().manual_seed(t.seed))
    model.to(dev)
    net: torch.nn.Module = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = _make_optimizer(spec, model.parameters())
    sched = _make_schedule(spec, opt)
    noise = torch.Generator(device=dev)
    noise.manual_seed(t.seed + 1)  # the same on every rank: see _rank_inputs
    sample_noise = None
    if dist.world > 1:
        sample_noise = torch.Generator(device=dev)
        sample_noise.manual_seed((t.seed + 1 + 7 * dist.rank) % 2**64)
    epoch, step_in_epoch, global_step, history = 0, 0, 0, []
    sums: dict[str, float] = {}  # running sums of the logged terms over the current epoch
    count = 0
    if state is not None:
        saved_weights, weights_meta, _ = checkpoint_on_disk
        if str(weights_meta.get("global_step")) != str(state["global_step"]):
            raise UserError("model.safetensors and train_state.pt disagree (different steps); cannot resume",
                            file=str(out))
        if weights_meta.get("spec_sha256", "") != str(graph.attrs.get("spec_sha256", "")):
            raise A.ArtifactError(out / A.WEIGHTS, "was trained from another spec than the run's spec.yaml "
                                                   "(spec_sha256 differs); cannot resume")
        check_weights(out / A.WEIGHTS, saved_weights, model)
        model.load_ir_state_dict({k: v.to(dev) for k, v in saved_weights.items()})
        try:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            noise.set_state(state["noise_rng"])
            torch.set_rng_state(state["torch_rng"])
        except (ValueError, RuntimeError, KeyError, TypeError, IndexError) as exc:
            raise A.ArtifactError(out / A.TRAIN_STATE, f"its optimizer or random state does not fit this run "
                                                       f"({A._short(exc)})") from None
        epoch, step_in_epoch = state["epoch"], state["step_in_epoch"]
        global_step, history = state["global_step"], list(state["history"])
        sums, count = dict(state["epoch_sums"]), state["epoch_count"]
        if sample_noise is not None:  # not checkpointed (per rank): a fresh, distinct stream per rank
            sample_noise.manual_seed((t.seed + 1 + 7 * dist.rank + 1_000_003 * global_step) % 2**64)
        log(f"resuming {out} at epoch {epoch + 1}, step {step_in_epoch} (global step {global_step})")
    elif dist.main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            _clear_run(out)
            _write_run_header(out, spec, graph)
        except OSError as exc:
            raise UserError(f"cannot write the run folder: {exc.strerror or exc}", file=str(out)) from None

    def kept_checkpoint() -> str:
        """What a stopped run leaves to resume from, for messages."""
        try:
            manifest = read_manifest(out)
        except UserError:
            manifest = None
        if manifest is not None:
            return f"the last good checkpoint (global step {manifest.get('global_step')}) in {out} was kept"
        return f"no checkpoint had been written to {out} yet"

    def checkpoint(complete: bool = False) -> None:
        """Weights, then the state that points at them (same global step), each written atomically."""
        if not dist.main:
            return
        bad = [k for k, v in model.ir_state_dict().items() if not torch.isfinite(v).all()]
        if bad:
            raise TrainingDiverged(f"weights {', '.join(bad)} became NaN or infinite by global step {global_step} "
                                   f"(epoch {epoch + 1}); {kept_checkpoint()}; lower training.lr or add "
                                   f"training.grad_clip")
        try:
            write_checkpoint(out, model.ir_state_dict(),
                             {"global_step": str(global_step), "spec_sha256": str(graph.attrs.get("spec_sha256", ""))},
                             {"format": STATE_FORMAT, "epoch": epoch, "step_in_epoch": step_in_epoch,
                              "global_step": global_step, "optimizer": opt.state_dict(),
                              "scheduler": sched.state_dict(), "noise_rng": noise.get_state(),
                              "torch_rng": torch.get_rng_state(), "history": history, "epoch_sums": sums,
                              "epoch_count": count, "complete": complete})
        except OSError as exc:
            raise RunWriteFailed(f"writing the checkpoint at global step {global_step} failed: "
                                 f"{exc.strerror or exc}; {kept_checkpoint()}") from None

    bar = _Progress(progress and dist.main, log)
    steplog: StepLog | None = None
    if dist.main:
        log(f"training {spec.name} on {dev} ({len(train_set)} train / {len(val_set)} validation images, "
            f"T={model.timesteps}, batch {t.batch_size}, {t.epochs} epochs) -> {out}")
    with _CtrlC(log) as ctrl_c:
        try:
            if dist.main:  # inside the try: a folder that cannot be written is a RunWriteFailed like the rest
                steplog = StepLog(out, resume_from=global_step if state is not None else None, logger=logger)
            while epoch < t.epochs:
                batches = epoch_batches(len(train_set), t.batch_size, t.seed, epoch)
                n_steps = min(len(batches), t.max_steps or len(batches))
                bar.start_epoch(epoch, t.epochs, n_steps, step_in_epoch)
                t0 = time.perf_counter()
                net.train()
                while step_in_epoch < n_steps:
                    stop = ctrl_c.requested or (stop_after_steps is not None and global_step >= stop_after_steps)
                    if dist.world > 1:
                        stop = _any_rank(stop, dev)
                    if stop:
                        raise _StopRequested
                    t_step = time.perf_counter()
                    x, forward_args = _rank_inputs(model, train_set.images, batches[step_in_epoch], dist, noise,
                                                   sample_noise, dev, train_set.spikes)
                    result = net(x, **forward_args)
                    loss, parts = objective(model, result, x)
                    parts = {**parts, "loss": float(loss.detach()), "spike_rate": mean_spike_rate(model, result)}
                    if dist.world > 1:
                        parts = _global_batch_means(parts, x.shape[0], dev)
                    if not math.isfinite(parts["rec"]) or not math.isfinite(parts["loss"]):
                        raise TrainingDiverged(
                            f"loss became {parts['loss']} at epoch {epoch + 1}, step {step_in_epoch + 1} "
                            f"(global step {global_step + 1}); terms {parts}; {kept_checkpoint()}; lower "
                            f"training.lr or add training.grad_clip")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if t.grad_clip is not None:
                        if t.grad_clip.mode == "value":
                            torch.nn.utils.clip_grad_value_(model.parameters(), t.grad_clip.max)
                        else:
                            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip.max)
                    opt.step()
                    global_step += 1
                    step_in_epoch += 1
                    rate = parts["spike_rate"]
                    for k, v in parts.items():
                        sums[k] = sums.get(k, 0.0) + v
                    count += 1
                    if steplog is not None:
                        steplog.step(epoch=epoch + 1, step=step_in_epoch, global_step=global_step,
                                     lr=opt.param_groups[0]["lr"], seconds=time.perf_counter() - t_step, parts=parts)
                    bar.step(f"loss {parts['loss']:.2f}  rec {parts['rec']:.2f}  rate {rate:.3f}")
                sched.step()
                elapsed = time.perf_counter() - t0
                epoch += 1
                step_in_epoch = 0
                row: dict[str, Any] = {"epoch": epoch, "global_step": global_step}
                row.update({f"train_{k}": v / max(count, 1) for k, v in sums.items()})
                sums, count = {}, 0
                row["seconds"] = elapsed
                row["lr"] = opt.param_groups[0]["lr"]
                if dist.main:
                    val = evaluate(model, val_set, batch_size=t.batch_size, seed=t.seed, device=dev).metrics
                    row["val_rec_loss"] = val["rec_loss"]
                    if "layers" in val:
                        row["val_spike_rate"] = val["mean_firing_rate"]
                        row["val_latent_anr"] = val["layers"][spec.latent]["anr"]
                    history.append(row)
                    A.write_jsonl(out / A.METRICS, history)
                    steplog.epoch(row)
                    log(f"epoch {epoch}/{t.epochs}: train loss {row.get('train_loss', float('nan')):.3f}, "
                        f"val L_rec {row['val_rec_loss']:.3f}"
                        + (f", latent ANR {row['val_latent_anr']:.2f}, rate {row['val_spike_rate']:.3f}"
                           if "val_latent_anr" in row else "") + f" ({elapsed:.1f} s)")
                checkpoint()
            final: dict[str, Any] = {}
            model.release_buffers()  # the training step's pooled buffers; evaluation has its own sizes
            if dist.main:
                from saec.run.report import finish_run

                ctrl_c.immediate = True  # no step to finish: Ctrl-C stops the final evaluation at once
                if ctrl_c.requested:
                    raise KeyboardInterrupt
                final = finish_run(out, spec, model, val_set, device=dev)
                ctrl_c.immediate = False
                checkpoint(complete=True)
                from saec.analysis.reportpage import write_run_report

                log(f"report: {write_run_report(out)}")
        except _StopRequested:
            bar.close()
            checkpoint()
            raise TrainingInterrupted(f"interrupted at epoch {epoch + 1}, step {step_in_epoch} (global step "
                                      f"{global_step}); a checkpoint was written: resume with "
                                      f"`saec train --resume {out}`") from None
        except KeyboardInterrupt:
            bar.close()
            how = (f"`saec train --resume {out}` continues from it" if (out / MANIFEST).is_file()
                   else "start the run again")
            where = ("during the final evaluation" if ctrl_c.immediate
                     else f"at once (second Ctrl-C) in epoch {epoch + 1}")
            raise TrainingInterrupted(f"stopped {where}; {kept_checkpoint()}; {how}") from None
        except OSError as exc:
            bar.close()
            raise RunWriteFailed(f"writing {getattr(exc, 'filename', None) or 'the run folder'} failed: "
                                 f"{exc.strerror or exc}; {kept_checkpoint()}") from None
        finally:
            bar.close()
            if steplog is not None:
                steplog.close()
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
    return final
