"""The run folder: names of its artifacts and crash-safe writers.

Every file is written to a temporary name in the same folder and renamed
into place, so a crash or Ctrl-C never leaves a half-written artifact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors.torch import load_file, save_file

SPEC = "spec.yaml"
IR = "ir.json"
WEIGHTS = "model.safetensors"
TRAIN_STATE = "train_state.pt"
METRICS = "metrics.jsonl"
EVAL = "eval.json"
STATS = "stats.json"
FIGURES = "figures"
EXPORT = "export"


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=metadata)
    # safetensors creates its file owner-only whatever the umask; match the run's other files.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def weights_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def save_torch(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_torch(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def savefig(fig, path: Path, **kwargs: Any) -> None:
    """Save a matplotlib figure atomically (PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, **kwargs)
    os.replace(tmp, path)


def load_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
