"""End-to-end training with membrane-potential backpropagation; one run folder per run.

The loop is deterministic for a given seed and device: the data order of
epoch ``e`` comes from its own generator, and the encoding noise from one
generator whose state is checkpointed, so ``--resume`` after an interruption
ends with the same weights as an uninterrupted run.

Under ``torchrun`` (WORLD_SIZE > 1) each global batch is split across ranks,
gradients are averaged by DistributedDataParallel (gloo on CPU, nccl on
CUDA) and rank 0 alone writes the run folder.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from saec.compiler.graph import IRGraph
from saec.runtime import artifacts as A
from saec.runtime.data import ImageSet, batch_indices, make_splits
from saec.runtime.evaluate import evaluate
from saec.runtime.model import SpikingAutoencoder
from saec.runtime.objective import mean_spike_rate, objective
from saec.spec.errors import SpecError
from saec.spec.loader import load_spec, resolved_yaml
from saec.spec.schema import Spec

STATE_FORMAT = 1


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C: a resumable checkpoint was written."""


@dataclass
class Dist:
    """Process-group facts (a single process when not under torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SpecError("CUDA was asked for (--device cuda) but torch sees no GPU; use --device cpu or auto",
                        path="--device")
    if device not in ("cpu", "cuda"):
        raise SpecError(f"unknown device {device!r} (cpu, cuda or auto)", path="--device")
    return torch.device(device)


def _init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as tdist

    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Dist(tdist.get_rank(), tdist.get_world_size())


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
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
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
    """The resolved spec and IR of a run folder (SpecError when it is not one)."""
    run = Path(run)
    for name in (A.SPEC, A.IR):
        if not (run / name).is_file():
            raise SpecError(f"not a saec run folder (no {name})", file=str(run))
    spec = load_spec(run / A.SPEC).spec
    try:
        graph = IRGraph.read_json(run / A.IR)
    except (ValueError, KeyError, TypeError) as exc:
        raise SpecError(f"corrupt IR: {exc}", file=str(run / A.IR)) from None
    return spec, graph


def load_model(run: Path, device: str | torch.device = "cpu") -> tuple[Spec, SpikingAutoencoder]:
    """A trained model from a run folder (weights from model.safetensors)."""
    spec, graph = load_run(run)
    weights = Path(run) / A.WEIGHTS
    if not weights.is_file():
        raise SpecError(f"no trained weights ({A.WEIGHTS}); train or resume this run first", file=str(run))
    model = SpikingAutoencoder(graph)
    model.load_ir_state_dict(A.load_weights(weights))
    return spec, model.to(device)


def train(spec: Spec, graph: IRGraph, out: Path, *, data_dir: str | None = None, device: str = "auto",
          resume: bool = False, force: bool = False, progress: bool = True,
          log: Callable[[str], None] = print, stop_after_steps: int | None = None) -> dict[str, Any]:
    """Train ``graph`` as ``spec.training`` says; write the run folder ``out``.

    Args:
        spec: the resolved spec (training and data settings).
        graph: the compiled IR (the network).
        out: run folder.
        data_dir: overrides ``data.root`` (and the validation root).
        device: ``cpu``, ``cuda`` or ``auto``.
        resume: continue from ``out/train_state.pt``.
        force: overwrite an existing run in ``out``.
        stop_after_steps: simulate an interruption after this many steps (tests).
    Returns:
        The final evaluation metrics (also in ``out/eval.json``).
    Raises:
        SpecError: bad input (existing run folder, data missing, bad device).
        TrainingDiverged: NaN/inf loss.
        TrainingInterrupted: Ctrl-C (or ``stop_after_steps``); a checkpoint was written.
    """
    out = Path(out)
    dev = resolve_device(device)
    dist = _init_distributed(dev)
    t = spec.training
    state = None
    if resume:
        if not (out / A.TRAIN_STATE).is_file():
            raise SpecError(f"nothing to resume (no {A.TRAIN_STATE})", file=str(out))
        state = A.load_torch(out / A.TRAIN_STATE)
        if state.get("complete"):
            log(f"run {out} is already complete; nothing to do")
            return A.load_json(out / A.EVAL) if (out / A.EVAL).is_file() else {}
    elif (out / A.WEIGHTS).exists() or (out / A.TRAIN_STATE).exists():
        if not force:
            raise SpecError("already holds a trained run; use --resume to continue it, --force to overwrite, "
                            "or --out for a new folder", file=str(out))

    from saec.runtime.data import DataError

    try:
        train_set, val_set = make_splits(spec.data, data_dir, seed=t.seed)
    except DataError as exc:
        raise SpecError(str(exc), path="data") from None

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
    noise.manual_seed(t.seed + 1 + 7 * dist.rank)
    epoch, step_in_epoch, global_step, history = 0, 0, 0, []
    if state is not None:
        weights_meta = A.weights_metadata(out / A.WEIGHTS)
        if int(weights_meta.get("global_step", -1)) != state["global_step"]:
            raise SpecError("model.safetensors and train_state.pt disagree (different steps); cannot resume",
                            file=str(out))
        model.load_ir_state_dict({k: v.to(dev) for k, v in A.load_weights(out / A.WEIGHTS).items()})
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        noise.set_state(state["noise_rng"])
        epoch, step_in_epoch = state["epoch"], state["step_in_epoch"]
        global_step, history = state["global_step"], list(state["history"])
        log(f"resuming {out} at epoch {epoch + 1}, step {step_in_epoch} (global step {global_step})")
    elif dist.main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in (A.TRAIN_STATE, A.WEIGHTS, A.METRICS, A.EVAL):
            (out / stale).unlink(missing_ok=True)
        _write_run_header(out, spec, graph)

    def checkpoint(next_epoch: int, next_step: int, rng_state: torch.Tensor, complete: bool = False) -> None:
        if not dist.main:
            return
        A.save_weights(out / A.WEIGHTS, model.ir_state_dict(),
                       {"global_step": str(global_step), "spec_sha256": str(graph.attrs.get("spec_sha256", ""))})
        A.save_torch(out / A.TRAIN_STATE, {
            "format": STATE_FORMAT, "epoch": next_epoch, "step_in_epoch": next_step,
            "global_step": global_step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "noise_rng": rng_state, "history": history, "complete": complete,
        })

    bar = _Progress(progress and dist.main, log)
    if dist.main:
        log(f"training {spec.name} on {dev} ({len(train_set)} train / {len(val_set)} validation images, "
            f"T={model.timesteps}, batch {t.batch_size}, {t.epochs} epochs) -> {out}")
    rng_at_step = noise.get_state()
    try:
        while epoch < t.epochs:
            batches = epoch_batches(len(train_set), t.batch_size, t.seed, epoch)
            n_steps = min(len(batches), t.max_steps or len(batches))
            bar.start_epoch(epoch, t.epochs, n_steps, step_in_epoch)
            t0, sums, count = time.perf_counter(), {}, 0
            net.train()
            while step_in_epoch < n_steps:
                if stop_after_steps is not None and global_step >= stop_after_steps:
                    raise KeyboardInterrupt
                rng_at_step = noise.get_state()
                idx = batches[step_in_epoch][dist.rank::dist.world]
                x = train_set.images[idx].to(dev, non_blocking=True)
                result = net(x, generator=noise)
                loss, parts = objective(model, result, x)
                if not math.isfinite(parts["rec"]) or not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"loss became {float(loss)} at epoch {epoch + 1}, step {step_in_epoch + 1} (global step "
                        f"{global_step + 1}); terms {parts}. The last good checkpoint in {out} was kept; lower "
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
                rate = mean_spike_rate(model, result)
                parts = {**parts, "loss": float(loss.detach()), "spike_rate": rate}
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                bar.step(f"loss {parts['loss']:.2f}  rec {parts['rec']:.2f}  rate {rate:.3f}")
            sched.step()
            elapsed = time.perf_counter() - t0
            epoch += 1
            step_in_epoch = 0
            row: dict[str, Any] = {"epoch": epoch, "global_step": global_step}
            row.update({f"train_{k}": v / max(count, 1) for k, v in sums.items()})
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
                log(f"epoch {epoch}/{t.epochs}: train loss {row.get('train_loss', float('nan')):.3f}, "
                    f"val L_rec {row['val_rec_loss']:.3f}"
                    + (f", latent ANR {row['val_latent_anr']:.2f}, rate {row['val_spike_rate']:.3f}"
                       if "val_latent_anr" in row else "") + f" ({elapsed:.1f} s)")
            checkpoint(epoch, 0, noise.get_state())
    except KeyboardInterrupt:
        bar.close()
        checkpoint(epoch, step_in_epoch, rng_at_step)
        raise TrainingInterrupted(f"interrupted at epoch {epoch + 1}, step {step_in_epoch}; a checkpoint was "
                                  f"written: resume with `saec train --resume {out}`") from None
    finally:
        bar.close()

    final: dict[str, Any] = {}
    if dist.main:
        from saec.runtime.report import finish_run

        final = finish_run(out, spec, model, val_set, device=dev)
        checkpoint(epoch, 0, noise.get_state(), complete=True)
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
    return final
