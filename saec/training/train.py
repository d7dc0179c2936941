"""The training loop with membrane-potential backpropagation: checkpoint state, distributed set-up, one step,
the epoch loop. It knows no files: the run layer (:mod:`saec.run.train`) passes callbacks (:class:`Hooks`)
that write checkpoints, log steps and evaluate.

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
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import torch

from saec.compiler import ops
from saec.compiler.graph import IRGraph
from saec.compiler.runconfig import Training
from saec.runtime.encoding import poisson_encode
from saec.runtime.model import NetOutput, SpikingAutoencoder
from saec.training.data import ImageSet, batch_indices
from saec.training.objective import mean_spike_rate, objective

#: Version of the training state a checkpoint holds (``train_state.pt``).
STATE_FORMAT = 2


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C: a resumable checkpoint was written (or, on a second Ctrl-C, the last one was kept)."""


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




def init_distributed(device: torch.device) -> Dist:
    """The process group under torchrun (WORLD_SIZE > 1), started once; a single process otherwise."""
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


def make_optimizer(t: Training, params) -> torch.optim.Optimizer:
    """The optimizer the run config names (SGD with momentum 0.9)."""
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay, momentum=0.9)


def make_schedule(t: Training, opt: torch.optim.Optimizer):
    """The learning-rate schedule over epochs (stepped once per epoch)."""
    s = t.schedule
    if s.type == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs)
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



# ---------------------------------------------------------------- checkpoint state
@dataclass
class Position:
    """Where the loop stands: what a checkpoint must restore besides weights, optimizer and RNG states.

    Attributes:
        epoch: finished epochs.
        step_in_epoch: optimizer steps done in the current epoch.
        global_step: optimizer steps done over the whole run.
        history: one row per finished epoch (``metrics.jsonl``).
        sums: running sums of the logged terms over the current epoch.
        count: steps summed in ``sums``.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0


@dataclass
class Trainer:
    """The objects one training process works with (:func:`setup_trainer` makes them)."""

    model: SpikingAutoencoder
    net: torch.nn.Module  # ``model``, or its DistributedDataParallel wrapper
    opt: torch.optim.Optimizer
    sched: Any
    noise: torch.Generator  # the encoding noise, the same stream on every rank
    sample_noise: torch.Generator | None  # under DDP: this rank's own stream (VAE sampling)
    dist: Dist
    device: torch.device
    config: Training
    position: Position = field(default_factory=Position)


def setup_trainer(graph: IRGraph, config: Training, device: torch.device, dist: Dist) -> Trainer:
    """Seed torch, build and initialise the network, wrap it for DDP, make optimizer, schedule and noise.

    The draws happen in this order for every run (the resume and DDP tests rely on it).
    """
    torch.manual_seed(config.seed)
    model = SpikingAutoencoder(graph)
    model.reset_parameters(torch.Generator().manual_seed(config.seed))
    model.to(device)
    net: torch.nn.Module = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = make_optimizer(config, model.parameters())
    sched = make_schedule(config, opt)
    noise = torch.Generator(device=device)
    noise.manual_seed(config.seed + 1)  # the same on every rank: see _rank_inputs
    sample_noise = None
    if dist.world > 1:
        sample_noise = torch.Generator(device=device)
        sample_noise.manual_seed((config.seed + 1 + 7 * dist.rank) % 2**64)
    return Trainer(model, net, opt, sched, noise, sample_noise, dist, device, config)


def training_state(trainer: Trainer, complete: bool = False) -> dict[str, Any]:
    """What ``train_state.pt`` holds: the position, optimizer, schedule, both RNG states and the
    execution plan (:mod:`saec.runtime.plan`)."""
    p = trainer.position
    return {"format": STATE_FORMAT, "epoch": p.epoch, "step_in_epoch": p.step_in_epoch,
            "global_step": p.global_step, "optimizer": trainer.opt.state_dict(),
            "scheduler": trainer.sched.state_dict(), "noise_rng": trainer.noise.get_state(),
            "torch_rng": torch.get_rng_state(), "history": p.history, "epoch_sums": p.sums,
            "epoch_count": p.count, "complete": complete,
            # the output layer's algorithm sets its rounding: a resumed run keeps the run's plan
            "plan": trainer.model.execution.plan.to_dict()}


def restore_trainer(trainer: Trainer, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Continue from a checkpoint: weights, optimizer, schedule, RNG states and the position.

    Raises:
        ValueError, RuntimeError, KeyError, TypeError, IndexError: the state does not fit this network
            (the run layer names the file).
    """
    trainer.model.load_ir_state_dict({k: v.to(trainer.device) for k, v in weights.items()})
    trainer.opt.load_state_dict(state["optimizer"])
    trainer.sched.load_state_dict(state["scheduler"])
    trainer.noise.set_state(state["noise_rng"])
    torch.set_rng_state(state["torch_rng"])
    trainer.position = Position(state["epoch"], state["step_in_epoch"], state["global_step"],
                                list(state["history"]), dict(state["epoch_sums"]), state["epoch_count"])
    if trainer.sample_noise is not None:  # not checkpointed (per rank): a fresh, distinct stream per rank
        seed = trainer.config.seed + 1 + 7 * trainer.dist.rank + 1_000_003 * trainer.position.global_step
        trainer.sample_noise.manual_seed(seed % 2**64)


# ---------------------------------------------------------------- what the run layer plugs in
@dataclass
class Hooks:
    """The run layer's side of the loop; each is called on rank 0 only.

    Attributes:
        save: write a checkpoint: ``save(weights, state)`` (``state`` from :func:`training_state`).
        evaluate: the validation metrics of the model at the end of an epoch (``rec_loss``, ...).
        epoch_done: ``epoch_done(history, row)`` after each epoch (metrics file, step log).
        step_done: ``step_done(**row)`` after each optimizer step (the step log); None = nothing.
        finish: the final evaluation of the trained model; returns its metrics.
        completed: after the final checkpoint (the report page).
        kept_checkpoint: for messages, what a stopped run leaves to resume from.
        has_checkpoint: whether a checkpoint exists to resume from.
        folder: the run folder, named in messages.
        log: where progress lines go.
    """

    save: Callable[[dict[str, torch.Tensor], dict[str, Any]], None]
    evaluate: Callable[[SpikingAutoencoder], dict[str, Any]]
    epoch_done: Callable[[list[dict[str, Any]], dict[str, Any]], None]
    finish: Callable[[SpikingAutoencoder], dict[str, Any]]
    completed: Callable[[], None]
    kept_checkpoint: Callable[[], str]
    has_checkpoint: Callable[[], bool]
    folder: str
    step_done: Callable[..., None] | None = None
    log: Callable[[str], None] = print


def save_checkpoint(trainer: Trainer, hooks: Hooks, complete: bool = False) -> None:
    """Weights, then the state that points at them (rank 0); refuses weights that became NaN or infinite."""
    if not trainer.dist.main:
        return
    p = trainer.position
    bad = [k for k, v in trainer.model.ir_state_dict().items() if not torch.isfinite(v).all()]
    if bad:
        raise TrainingDiverged(f"weights {', '.join(bad)} became NaN or infinite by global step {p.global_step} "
                               f"(epoch {p.epoch + 1}); {hooks.kept_checkpoint()}; lower training.lr or add "
                               f"training.grad_clip")
    hooks.save(trainer.model.ir_state_dict(), training_state(trainer, complete))


# ---------------------------------------------------------------- one step
#: ``training.precision`` -> the dtype autocast runs the synapses in (None: no autocast).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


def forward_precision(config: Training, device: torch.device) -> torch.autocast:
    """The context the training forward runs in: ``torch.autocast(device.type, torch.bfloat16)`` for
    ``precision: bf16`` (the synapses' convolutions and matrix products in bf16; the network keeps its
    neurons' state in float32, :func:`saec.runtime.layerwise.state_precision`), autocast off for fp32.

    Raises:
        ValueError: a precision this saec does not know (an ``ir.json`` from another version).
    """
    if config.precision not in AUTOCAST_DTYPES:
        raise ValueError(f"training.precision must be one of {', '.join(AUTOCAST_DTYPES)}, got {config.precision!r}")
    dtype = AUTOCAST_DTYPES[config.precision]
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def in_float32(out: NetOutput) -> NetOutput:
    """``out`` with every bf16 / fp16 tensor cast to float32 (differentiably), so that the loss is float32.

    Under bf16 autocast an SAE's loss inputs are float32 already (LIF state, readout), and so is a
    VAE's posterior (sampled in float32); an AE's or VAE's ReLU activations and reconstruction come
    out of the synapses in bf16.
    """
    def cast(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dtype in (torch.bfloat16, torch.float16):
            return value.float()
        if isinstance(value, dict):
            return {k: cast(v) for k, v in value.items()}
        return value

    return NetOutput(**{f.name: cast(getattr(out, f.name)) for f in fields(out)})


def train_step(trainer: Trainer, train_set: ImageSet, batch: torch.Tensor, hooks: Hooks) -> dict[str, float]:
    """One optimizer step on the global ``batch``; the logged terms (global-batch means under DDP).

    Raises:
        TrainingDiverged: the loss is NaN or infinite (nothing was updated).
    """
    p, model, dist = trainer.position, trainer.model, trainer.dist
    x, forward_args = _rank_inputs(model, train_set.images, batch, dist, trainer.noise, trainer.sample_noise,
                                   trainer.device, train_set.spikes)
    with forward_precision(trainer.config, trainer.device):
        result = trainer.net(x, **forward_args)
    loss, parts = objective(model, in_float32(result), x)
    parts = {**parts, "loss": float(loss.detach()), "spike_rate": mean_spike_rate(model, result)}
    if dist.world > 1:
        parts = _global_batch_means(parts, x.shape[0], trainer.device)
    if not math.isfinite(parts["rec"]) or not math.isfinite(parts["loss"]):
        raise TrainingDiverged(
            f"loss became {parts['loss']} at epoch {p.epoch + 1}, step {p.step_in_epoch + 1} "
            f"(global step {p.global_step + 1}); terms {parts}; {hooks.kept_checkpoint()}; lower "
            f"training.lr or add training.grad_clip")
    trainer.opt.zero_grad(set_to_none=True)
    loss.backward()
    clip = trainer.config.grad_clip
    if clip is not None:
        if clip.mode == "value":
            torch.nn.utils.clip_grad_value_(model.parameters(), clip.max)
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip.max)
    trainer.opt.step()
    return parts


# ---------------------------------------------------------------- the epoch loop
def _run_epoch(trainer: Trainer, train_set: ImageSet, hooks: Hooks, bar: _Progress, ctrl_c: _CtrlC,
               stop_after_steps: int | None) -> float:
    """The remaining steps of the current epoch; its seconds."""
    p, t = trainer.position, trainer.config
    batches = epoch_batches(len(train_set), t.batch_size, t.seed, p.epoch)
    n_steps = min(len(batches), t.max_steps or len(batches))
    bar.start_epoch(p.epoch, t.epochs, n_steps, p.step_in_epoch)
    t0 = time.perf_counter()
    trainer.net.train()
    while p.step_in_epoch < n_steps:
        stop = ctrl_c.requested or (stop_after_steps is not None and p.global_step >= stop_after_steps)
        if trainer.dist.world > 1:
            stop = _any_rank(stop, trainer.device)
        if stop:
            raise _StopRequested
        t_step = time.perf_counter()
        parts = train_step(trainer, train_set, batches[p.step_in_epoch], hooks)
        p.global_step += 1
        p.step_in_epoch += 1
        for k, v in parts.items():
            p.sums[k] = p.sums.get(k, 0.0) + v
        p.count += 1
        if hooks.step_done is not None and trainer.dist.main:
            hooks.step_done(epoch=p.epoch + 1, step=p.step_in_epoch, global_step=p.global_step,
                            lr=trainer.opt.param_groups[0]["lr"], seconds=time.perf_counter() - t_step, parts=parts)
        bar.step(f"loss {parts['loss']:.2f}  rec {parts['rec']:.2f}  rate {parts['spike_rate']:.3f}")
    trainer.sched.step()
    return time.perf_counter() - t0


def _end_epoch(trainer: Trainer, hooks: Hooks, elapsed: float) -> None:
    """Close the epoch's row (training means, validation on rank 0), log it, write the checkpoint."""
    p, t = trainer.position, trainer.config
    p.epoch += 1
    p.step_in_epoch = 0
    row: dict[str, Any] = {"epoch": p.epoch, "global_step": p.global_step}
    row.update({f"train_{k}": v / max(p.count, 1) for k, v in p.sums.items()})
    p.sums, p.count = {}, 0
    row["seconds"] = elapsed
    row["lr"] = trainer.opt.param_groups[0]["lr"]
    row["precision"] = t.precision  # how the epoch was trained (validation always runs in fp32)
    if trainer.dist.main:
        val = hooks.evaluate(trainer.model)
        row["val_rec_loss"] = val["rec_loss"]
        if "layers" in val:
            row["val_spike_rate"] = val["mean_firing_rate"]
            row["val_latent_anr"] = val["layers"][trainer.model.graph.attrs["latent"]]["anr"]
        p.history.append(row)
        hooks.epoch_done(p.history, row)
        hooks.log(f"epoch {p.epoch}/{t.epochs}: train loss {row.get('train_loss', float('nan')):.3f}, "
                  f"val L_rec {row['val_rec_loss']:.3f}"
                  + (f", latent ANR {row['val_latent_anr']:.2f}, rate {row['val_spike_rate']:.3f}"
                     if "val_latent_anr" in row else "") + f" ({elapsed:.1f} s)")
    save_checkpoint(trainer, hooks)


def _finish(trainer: Trainer, hooks: Hooks, ctrl_c: _CtrlC) -> dict[str, Any]:
    """After the last epoch: the final evaluation (Ctrl-C stops it at once), the complete checkpoint."""
    trainer.model.release_buffers()  # the training step's pooled buffers; evaluation has its own sizes
    if not trainer.dist.main:
        return {}
    ctrl_c.immediate = True  # no step to finish: Ctrl-C stops the final evaluation at once
    if ctrl_c.requested:
        raise KeyboardInterrupt
    final = hooks.finish(trainer.model)
    ctrl_c.immediate = False
    save_checkpoint(trainer, hooks, complete=True)
    hooks.completed()
    return final


def run_training(trainer: Trainer, train_set: ImageSet, hooks: Hooks, *, progress: bool = True,
                 stop_after_steps: int | None = None) -> dict[str, Any]:
    """The epoch loop from ``trainer.position`` to the last epoch, then the final evaluation.

    A checkpoint is saved at the end of every epoch and when the run stops, always at a step boundary.

    Args:
        trainer: from :func:`setup_trainer` (and :func:`restore_trainer` to resume).
        train_set: the training images.
        hooks: the run layer's callbacks.
        progress: a progress bar on a terminal.
        stop_after_steps: behave as if Ctrl-C was pressed once this many optimizer steps are done (tests).
    Returns:
        The final metrics (rank 0; {} on the other ranks).
    Raises:
        TrainingDiverged: NaN/inf loss or weights; the last checkpoint is left as it was.
        TrainingInterrupted: Ctrl-C (or ``stop_after_steps``).
    """
    p = trainer.position
    bar = _Progress(progress and trainer.dist.main, hooks.log)
    with _CtrlC(hooks.log) as ctrl_c:
        try:
            while p.epoch < trainer.config.epochs:
                elapsed = _run_epoch(trainer, train_set, hooks, bar, ctrl_c, stop_after_steps)
                _end_epoch(trainer, hooks, elapsed)
            final = _finish(trainer, hooks, ctrl_c)
        except _StopRequested:
            bar.close()
            save_checkpoint(trainer, hooks)
            raise TrainingInterrupted(f"interrupted at epoch {p.epoch + 1}, step {p.step_in_epoch} (global step "
                                      f"{p.global_step}); a checkpoint was written: resume with "
                                      f"`saec train --resume {hooks.folder}`") from None
        except KeyboardInterrupt:
            bar.close()
            how = (f"`saec train --resume {hooks.folder}` continues from it" if hooks.has_checkpoint()
                   else "start the run again")
            where = ("during the final evaluation" if ctrl_c.immediate
                     else f"at once (second Ctrl-C) in epoch {p.epoch + 1}")
            raise TrainingInterrupted(f"stopped {where}; {hooks.kept_checkpoint()}; {how}") from None
        finally:
            bar.close()
    if trainer.dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
    return final
