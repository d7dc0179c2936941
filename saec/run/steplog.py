"""Per-step training logs: ``steps.csv`` always, TensorBoard event files on request.

``steps.csv`` has one row per optimizer step: ``epoch`` (1-based), ``step``
(1-based within the epoch), ``global_step``, ``lr``, ``seconds`` (wall time of
the step), then the logged terms of the objective (``loss``, ``rec``, the
regularisers, ``spike_rate``; global-batch means under torchrun). A resumed
run first drops the rows after its checkpoint, since those steps run again,
so the file of a resumed run equals the file of an uninterrupted one (up to
``seconds``).

With ``logger="tensorboard"`` the same per-step values and the per-epoch
validation metrics also go to ``RUN/tensorboard/`` (``tensorboard --logdir runs``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from saec.run.artifacts import STEPS, TENSORBOARD
from saec.errors import UserError

LOGGERS = ("csv", "tensorboard")
_FIXED = ["epoch", "step", "global_step", "lr", "seconds"]


def check_logger(logger: str) -> None:
    """UserError (located at ``--logger``) for an unknown logger or TensorBoard not installed."""
    if logger not in LOGGERS:
        raise UserError(f"unknown logger {logger!r}; use one of {', '.join(LOGGERS)}", path="--logger")
    if logger == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise UserError("TensorBoard logging needs the tensorboard package: pip install tensorboard "
                            "(steps.csv is written either way)", path="--logger") from None


class StepLog:
    """Writes ``steps.csv`` (and TensorBoard scalars) for one training run.

    Args:
        out: the run folder.
        resume_from: on resume, the global step of the checkpoint (rows after it are dropped); None = a fresh run.
        logger: ``csv`` or ``tensorboard`` (checked with :func:`check_logger`).
    """

    def __init__(self, out: Path, *, resume_from: int | None, logger: str = "csv") -> None:
        check_logger(logger)
        self.path = Path(out) / STEPS
        self.columns: list[str] | None = None
        kept: list[dict[str, str]] = []
        if resume_from is not None and self.path.is_file():
            with self.path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                self.columns = list(reader.fieldnames or []) or None
                kept = [row for row in reader if int(row["global_step"]) <= resume_from]
        self._fh = self.path.open("w", newline="")
        self._writer: csv.DictWriter | None = None
        if self.columns is not None:
            self._start_writer(self.columns)
            self._writer.writerows(kept)
            self._fh.flush()
        self.tensorboard = None
        if logger == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=str(Path(out) / TENSORBOARD),
                                             purge_step=resume_from + 1 if resume_from is not None else None)

    def _start_writer(self, columns: list[str]) -> None:
        self.columns = columns
        self._writer = csv.DictWriter(self._fh, fieldnames=columns, extrasaction="ignore")
        if self._fh.tell() == 0:
            self._writer.writeheader()

    def step(self, *, epoch: int, step: int, global_step: int, lr: float, seconds: float,
             parts: dict[str, float]) -> None:
        """Log one optimizer step (``epoch`` and ``step`` 1-based)."""
        if self._writer is None:
            self._start_writer(_FIXED + sorted(parts))
        row: dict[str, Any] = {"epoch": epoch, "step": step, "global_step": global_step, "lr": f"{lr:.6g}",
                               "seconds": f"{seconds:.4f}"}
        row.update({k: f"{v:.6g}" for k, v in parts.items()})
        self._writer.writerow(row)
        self._fh.flush()
        if self.tensorboard is not None:
            for key, value in parts.items():
                self.tensorboard.add_scalar(f"train/{key}", value, global_step)
            self.tensorboard.add_scalar("train/lr", lr, global_step)

    def epoch(self, row: dict[str, Any]) -> None:
        """Log an epoch's summary (a ``metrics.jsonl`` row) to TensorBoard."""
        if self.tensorboard is None:
            return
        for key, value in row.items():
            if key.startswith("val_") and isinstance(value, (int, float)):
                self.tensorboard.add_scalar(f"val/{key[4:]}", value, row["global_step"])

    def close(self) -> None:
        self._fh.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_steps(path: Path) -> list[dict[str, float]]:
    """The rows of a ``steps.csv`` as floats (for reports and tests)."""
    text = Path(path).read_text()
    return [{k: float(v) for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(io.StringIO(text))]
