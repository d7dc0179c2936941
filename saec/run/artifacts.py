"""The run folder: names of its artifacts and crash-safe writers.

Every file is written to a temporary name in the same folder and renamed
into place (:mod:`saec.atomicwrite`, the one implementation), so a crash or
Ctrl-C never leaves a half-written artifact.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors.torch import load_file

from saec.atomicwrite import save_figure, write_atomically
from saec.errors import UserError

SPEC = "spec.yaml"
IR = "ir.json"
WEIGHTS = "model.safetensors"
TRAIN_STATE = "train_state.pt"
METRICS = "metrics.jsonl"
EVAL = "eval.json"
STATS = "stats.json"
STEPS = "steps.csv"  # one row per optimizer step (saec.run.steplog)
REPORT = "report.html"  # the run's self-contained page (saec.analysis.reportpage)
TENSORBOARD = "tensorboard"
FIGURES = "figures"
EXPORT = "export"


class ArtifactError(UserError):
    """A run-folder file is missing, unreadable or does not hold what it should; one line naming the file."""

    def __init__(self, file: Path | str, problem: str) -> None:
        super().__init__(problem, file=str(file))


#: Fault injection for the crash tests: with SAEC_FAULT_KILL_AT_WRITE=N the process SIGKILLs itself
#: at the N-th checkpoint write boundary (counted from 1 over the process's life).
_FAULT_ENV = "SAEC_FAULT_KILL_AT_WRITE"
_boundaries_passed = 0


def write_boundary() -> None:
    """Mark a point between two durable writes of a checkpoint (a crash may happen here)."""
    global _boundaries_passed
    _boundaries_passed += 1
    target = os.environ.get(_FAULT_ENV)
    if target and target.isdigit() and int(target) == _boundaries_passed:
        os.kill(os.getpid(), signal.SIGKILL)


def write_text(path: Path, text: str, *, durable: bool = False) -> None:
    write_atomically(Path(path), lambda tmp: tmp.write_text(text), durable=durable)


def write_json(path: Path, data: Any, *, durable: bool = False) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n", durable=durable)


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted.

    safetensors writes the header from hash maps, so the same tensors and metadata come out in a
    different key order from one call to the next; sorted keys make identical tensors identical bytes.
    The data offsets are unchanged; the header is padded with spaces to 8 bytes as the format allows.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def _save_weights_file(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> None:
    from safetensors.torch import save

    tensors = {k: state[k].detach().contiguous().cpu() for k in sorted(state)}
    Path(path).write_bytes(_canonical_safetensors(save(tensors, metadata=dict(metadata or {}))))
    # safetensors creates its file owner-only whatever the umask; match the run's other files.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                 *, durable: bool = False) -> None:
    write_atomically(Path(path), lambda tmp: _save_weights_file(tmp, state, metadata), durable=durable)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file.

    Raises:
        ArtifactError: missing, empty, truncated or not a safetensors file.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(path, "no such file")
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...: all mean "not readable weights"
        raise ArtifactError(path, f"not a readable safetensors file ({_short(exc)}); the file is damaged: "
                                  "restore it or train the run again") from None


def weights_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - see load_weights
        raise ArtifactError(path, f"not a readable safetensors file ({_short(exc)})") from None


def torch_save(obj: Any, path: Path) -> None:
    """``torch.save``, with its write failures as OSError (torch reports a full disk as a RuntimeError)."""
    try:
        torch.save(obj, path)
    except RuntimeError as exc:
        import shutil

        try:
            full = shutil.disk_usage(Path(path).parent).free < (1 << 20)
        except OSError:
            full = False
        raise OSError(errno.ENOSPC if full else errno.EIO,
                      "No space left on device" if full else f"write failed ({_short(exc)})", str(path)) from None


def save_torch(path: Path, obj: Any, *, durable: bool = False) -> None:
    write_atomically(Path(path), lambda tmp: torch_save(obj, tmp), durable=durable)


def load_torch(path: Path) -> Any:
    """A torch file loaded with ``weights_only=True`` (no pickled code runs).

    Raises:
        ArtifactError: missing, truncated, not a torch file, or holding anything but plain data.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(path, "no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
        # torch's own message suggests weights_only=False, which would run whatever the file holds: never.
        raise ArtifactError(path, f"not a readable training state ({_short(exc).split('. ')[0]}); the file is "
                                  "damaged or not written by saec") from None


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def savefig(fig, path: Path, **kwargs: Any) -> None:
    """Save a matplotlib figure atomically (PNG)."""
    save_figure(fig, path, **kwargs)


def load_json(path: Path) -> Any:
    """A JSON file; NaN/Infinity literals are refused.

    Raises:
        ArtifactError: missing, unreadable or not JSON.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(path, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(path, f"cannot read: {_short(exc)}") from None

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not a number JSON allows")

    try:
        return json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(path, f"not valid JSON ({_short(exc)})") from None
