"""``saec train``: a run folder around the training loop.

The run layer locks the folder, refuses or resumes what is there, loads the
data its run config names, starts the loop of :mod:`saec.training.train`
with callbacks that write checkpoints (atomic, see
:mod:`saec.run.checkpoint`), the step log and ``metrics.jsonl``, evaluates
on the validation set after every epoch, and finishes the run (evaluation,
figures, report page).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Callable

import torch

from saec.compiler.graph import IRGraph
from saec.compiler.runconfig import RunConfig
from saec.errors import UserError
from saec.run import artifacts as A
from saec.run import report
from saec.run.checkpoint import MANIFEST, RunLock, load_checkpoint, read_manifest, write_checkpoint
from saec.run.folder import (check_weights, clear_run, refuse_existing_run, resolve_device, with_run_config,
                             write_run_header)
from saec.run.steplog import StepLog, check_logger
from saec.runtime.model import SpikingAutoencoder
from saec.spec.schema import Spec
from saec.training.data import DataError, ImageSet, check_input_shape, make_splits
from saec.training.train import (STATE_FORMAT, Dist, Hooks, Trainer, init_distributed, restore_trainer,
                                 run_training, setup_trainer)

#: A checkpoint read from disk: (weights, their metadata, the training state).
Checkpoint = tuple[dict[str, torch.Tensor], dict[str, str], dict[str, Any]]


class RunWriteFailed(RuntimeError):
    """Writing the run folder failed mid-run (full disk, permissions); the last complete checkpoint is kept."""


def train(spec: Spec, graph: IRGraph, out: Path, *, data_dir: str | None = None, device: str = "auto",
          resume: bool = False, force: bool = False, progress: bool = True, logger: str = "csv",
          log: Callable[[str], None] = print, stop_after_steps: int | None = None,
          plan: str = "default") -> dict[str, Any]:
    """Train ``graph`` as its run config says; write the run folder ``out``.

    Checkpoints (``model.safetensors`` + ``train_state.pt``) are written at the
    end of every epoch and when the run is interrupted, always at a step
    boundary, each file atomically (temporary name, then rename).

    Args:
        spec: the resolved spec (written to ``out/spec.yaml``).
        graph: the compiled IR (the network, and its run config: training and data settings).
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
        plan: the execution plan policy (:mod:`saec.runtime.plan`): ``default`` (the built-in
            plan), ``auto`` (this machine's cached plan; measured first when none is cached and the
            run has at least :data:`PLAN_MIN_STEPS` steps) or ``replan`` (measured again). A
            resumed run keeps the plan its checkpoint recorded.
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
    session = _Session(spec, graph, out, data_dir=data_dir, device=resolve_device(device), resume=resume,
                       force=force, logger=logger, log=log, plan=plan)
    check_logger(logger)
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a folder; give --out a folder for the run", file=str(out))
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 alone writes, and holds the lock
        return session.run(progress, stop_after_steps)
    try:
        lock = RunLock(out, "train")
        lock.acquire()
    except OSError as exc:
        raise UserError(f"cannot write the run folder: {exc.strerror or exc}", file=str(out)) from None
    try:
        if lock.took_over:
            log(f"took over the lock of a process that is gone (pid {lock.took_over.get('pid')})")
        return session.run(progress, stop_after_steps)
    finally:
        lock.release()


#: A run of fewer optimizer steps does not pay for measuring an execution plan (seconds to tens of
#: seconds): it takes a cached one, else the default one.
PLAN_MIN_STEPS = 200


class _Session:
    """One ``saec train`` once the folder is locked: what is on disk, the data, the loop's callbacks."""

    def __init__(self, spec: Spec, graph: IRGraph, out: Path, *, data_dir: str | None, device: torch.device,
                 resume: bool, force: bool, logger: str, log: Callable[[str], None], plan: str = "default") -> None:
        self.spec, self.graph, self.out = spec, graph, out
        self.plan = plan
        self.config: RunConfig = with_run_config(spec, graph)
        self.data_dir, self.device, self.resume, self.force = data_dir, device, resume, force
        self.logger, self.log = logger, log
        self.val_set: ImageSet | None = None
        self.steplog: StepLog | None = None

    def run(self, progress: bool, stop_after_steps: int | None) -> dict[str, Any]:
        """Resume or start, then train (see :func:`train`)."""
        checkpoint = self._checkpoint_on_disk() if self.resume else None
        if self.resume and checkpoint[2].get("complete"):
            check_weights(self.out / A.WEIGHTS, checkpoint[0], SpikingAutoencoder(self.graph))
            self.log(f"run {self.out} is already complete; nothing to do")
            return A.load_json(self.out / A.EVAL) if (self.out / A.EVAL).is_file() else {}
        if not self.resume:
            refuse_existing_run(self.out, self.force)
        dist = init_distributed(self.device)
        if dist.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", dist.local_rank)
        train_set, self.val_set = self._data(dist)
        trainer = setup_trainer(self.graph, self.config.training, self.device, dist)
        if checkpoint is not None:
            self._restore(trainer, checkpoint)
        elif dist.main:
            self._start_folder()
        self._use_plan(trainer, len(train_set), dist, checkpoint)
        t = self.config.training
        if dist.main:
            self.log(f"training {self.graph.attrs.get('name')} on {self.device} ({len(train_set)} train / "
                     f"{len(self.val_set)} validation images, T={trainer.model.timesteps}, batch {t.batch_size}, "
                     f"{t.epochs} epochs, precision {t.precision}) -> {self.out}")
        try:
            if dist.main:
                self.steplog = StepLog(self.out, resume_from=trainer.position.global_step if checkpoint else None,
                                       logger=self.logger)
            return run_training(trainer, train_set, self._hooks(), progress=progress,
                                stop_after_steps=stop_after_steps)
        except OSError as exc:
            raise RunWriteFailed(f"writing {getattr(exc, 'filename', None) or 'the run folder'} failed: "
                                 f"{exc.strerror or exc}; {self.kept_checkpoint()}") from None
        finally:
            if self.steplog is not None:
                self.steplog.close()

    # ------------------------------------------------------------ what is on disk
    def _checkpoint_on_disk(self) -> Checkpoint:
        """The checkpoint to resume from, checked for format."""
        found = load_checkpoint(self.out, repair=int(os.environ.get("RANK", "0")) == 0)
        if found is None:
            raise UserError(f"nothing to resume (no {A.TRAIN_STATE})", file=str(self.out))
        state = found[2]
        if state.get("format") != STATE_FORMAT:
            raise UserError(f"{A.TRAIN_STATE} has format {state.get('format')!r}, this saec writes {STATE_FORMAT}; "
                            "cannot resume it", file=str(self.out))
        return found

    def _restore(self, trainer: Trainer, checkpoint: Checkpoint) -> None:
        """Continue from ``checkpoint`` after checking it belongs to this run."""
        weights, meta, state = checkpoint
        out = self.out
        if str(meta.get("global_step")) != str(state["global_step"]):
            raise UserError("model.safetensors and train_state.pt disagree (different steps); cannot resume",
                            file=str(out))
        if meta.get("spec_sha256", "") != str(self.graph.attrs.get("spec_sha256", "")):
            raise A.ArtifactError(out / A.WEIGHTS, "was trained from another spec than the run's spec.yaml "
                                                   "(spec_sha256 differs); cannot resume")
        check_weights(out / A.WEIGHTS, weights, trainer.model)
        try:
            restore_trainer(trainer, weights, state)
        except (ValueError, RuntimeError, KeyError, TypeError, IndexError) as exc:
            raise A.ArtifactError(out / A.TRAIN_STATE, f"its optimizer or random state does not fit this run "
                                                       f"({A._short(exc)})") from None
        p = trainer.position
        self.log(f"resuming {out} at epoch {p.epoch + 1}, step {p.step_in_epoch} (global step {p.global_step})")

    def _use_plan(self, trainer: Trainer, train_examples: int, dist: Dist, checkpoint: Checkpoint | None) -> None:
        """Give the model its execution plan: the checkpoint's, else the one the policy resolves;
        print one ``plan: ...`` line unless both policy and plan are the default."""
        from saec.runtime.plan import DEFAULT_PLAN, ExecutionPlan, resolve_plan

        model = trainer.model
        saved = checkpoint[2].get("plan") if checkpoint is not None else None
        if saved is not None:
            try:
                plan = ExecutionPlan.from_dict(saved)
            except (TypeError, ValueError) as exc:
                raise A.ArtifactError(self.out / A.TRAIN_STATE, f"its execution plan is unusable ({exc})") from None
            line = f"plan: the run's own, from its checkpoint ({plan.summary(model.graph)})"
        else:
            t = self.config.training
            steps = t.epochs * min(math.ceil(train_examples / t.batch_size), t.max_steps or train_examples)
            policy = "auto" if self.plan == "replan" and dist.world > 1 else self.plan  # ranks would measure at once
            quiet = (lambda line: None)
            resolved = resolve_plan(model.graph, math.ceil(t.batch_size / dist.world), device=self.device,
                                    policy=policy, measure=dist.world == 1 and steps >= PLAN_MIN_STEPS,
                                    log=self.log if dist.main else quiet)
            plan, line = resolved.plan, resolved.line(model.graph)
            if resolved.source == "unplanned":
                line = (f"plan: default (a short run of {steps} steps is not worth measuring and none is cached "
                        f"for this network; `saec plan SPEC` measures one)")
        model.execution = dataclasses.replace(model.execution, plan=plan)
        if dist.main and (self.plan != "default" or plan != DEFAULT_PLAN):
            self.log(line)

    def _start_folder(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            clear_run(self.out)
            write_run_header(self.out, self.spec, self.graph)
        except OSError as exc:
            raise UserError(f"cannot write the run folder: {exc.strerror or exc}", file=str(self.out)) from None

    def _data(self, dist: Dist) -> tuple[ImageSet, ImageSet]:
        """The training and validation sets the run config names, checked against the network's input."""
        data, t = self.config.data, self.config.training
        try:
            train_set, val_set = make_splits(data, self.data_dir, seed=t.seed, log=self.log if dist.main else None)
            for part in (train_set, val_set):
                check_input_shape(part, self.config.input_shape, self.graph.attrs.get("timesteps"))
        except DataError as exc:
            raise UserError(str(exc), path="data") from None
        last = len(train_set) % t.batch_size
        reaches_last = t.max_steps is None or t.max_steps * t.batch_size >= len(train_set)
        if dist.world > 1 and 0 < last < dist.world and reaches_last:
            raise UserError(f"the last batch of every epoch holds {last} example(s), fewer than the {dist.world} "
                            f"processes, so a process would get none; change training.batch_size or "
                            f"data.train_limit", path="training.batch_size")
        return train_set, val_set

    # ------------------------------------------------------------ the loop's callbacks
    def _hooks(self) -> Hooks:
        return Hooks(save=self.save, evaluate=self.evaluate, epoch_done=self.epoch_done, finish=self.finish,
                     completed=self.completed, kept_checkpoint=self.kept_checkpoint,
                     has_checkpoint=lambda: (self.out / MANIFEST).is_file(), folder=str(self.out),
                     step_done=self.steplog.step if self.steplog is not None else None, log=self.log)

    def kept_checkpoint(self) -> str:
        """What a stopped run leaves to resume from, for messages."""
        try:
            manifest = read_manifest(self.out)
        except UserError:
            manifest = None
        if manifest is not None:
            return f"the last good checkpoint (global step {manifest.get('global_step')}) in {self.out} was kept"
        return f"no checkpoint had been written to {self.out} yet"

    def save(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Weights, then the state that points at them (same global step), each written atomically."""
        step = state["global_step"]
        try:
            write_checkpoint(self.out, weights,
                             {"global_step": str(step), "spec_sha256": str(self.graph.attrs.get("spec_sha256", ""))},
                             state)
        except OSError as exc:
            raise RunWriteFailed(f"writing the checkpoint at global step {step} failed: "
                                 f"{exc.strerror or exc}; {self.kept_checkpoint()}") from None

    def evaluate(self, model: SpikingAutoencoder) -> dict[str, Any]:
        from saec.analysis.evaluate import evaluate

        t = self.config.training
        return evaluate(model, self.val_set, batch_size=t.batch_size, seed=t.seed, device=self.device).metrics

    def epoch_done(self, history: list[dict[str, Any]], row: dict[str, Any]) -> None:
        A.write_jsonl(self.out / A.METRICS, history)
        self.steplog.epoch(row)

    def finish(self, model: SpikingAutoencoder) -> dict[str, Any]:
        return report.finish_run(self.out, self.spec, model, self.val_set, device=self.device)

    def completed(self) -> None:
        self.log(f"report: {report.write_run_report(self.out)}")
