"""Exclusive run folders and atomic checkpoints.

A run folder is written by one process at a time: :class:`RunLock` holds
``saec.lock`` (pid, host, start time; an ``flock`` on it that the kernel drops
when the process dies, so a stale lock of a dead process is taken over).

A checkpoint is complete or absent, never half. Writing one:

1. the step's files go into a fresh folder ``checkpoints/.<serial>.tmp-<pid>``,
   each fsynced, and the folder is renamed to ``checkpoints/<serial>``;
2. ``checkpoint.json`` (the manifest: serial, global step and the sha256 of
   every file) is written atomically: this rename is the commit point;
3. the run-root ``model.safetensors`` and ``train_state.pt`` (what eval,
   stats and export read) are replaced by hard links to the new files;
4. older checkpoint folders are removed.

A crash before step 2 leaves the previous manifest pointing at the previous,
untouched folder; resume reads the manifest, checks the hashes, and repairs
steps 3-4. Every boundary between these writes calls
:func:`saec.run.artifacts.write_boundary` (the crash tests kill the process
there).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import torch

from saec.atomicwrite import TEMPORARY_GLOB, fsync_dir, fsync_file, temporary_name
from saec.run import artifacts as A
from saec.errors import UserError

LOCK = "saec.lock"
MANIFEST = "checkpoint.json"
CHECKPOINTS = "checkpoints"
MANIFEST_FORMAT = 1


# ---------------------------------------------------------------- the lock
class RunLock:
    """Exclusive use of a run folder while a process writes it (a context manager).

    Raises (on enter):
        UserError: another live process holds the folder (the message names its pid, host and start).
    """

    def __init__(self, folder: Path, what: str = "train") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.what = what
        self._fd: int | None = None
        self._created: list[Path] = []  # folders made for the lock (deepest first): removed again if left empty
        self.took_over: dict | None = None  # the stale holder's record, when there was one

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        if not self.folder.is_dir():
            missing = [self.folder, *(p for p in self.folder.parents if not p.exists())]
            self.folder.mkdir(parents=True)
            self._created = missing
        for _ in range(20):  # the file can be unlinked by its holder between our open and our flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise UserError(f"is in use by {describe_holder(read_holder(self.path))}; wait for it to "
                                f"finish or stop it (a lock of a dead process is taken over)",
                                file=str(self.folder)) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = read_holder(self.path)
            if previous:  # a record without a live flock: its process died
                self.took_over = previous
            record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime(
                "%Y-%m-%dT%H:%M:%S%z"), "command": self.what}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            self._fd = fd
            return
        raise UserError("could not lock the run folder (its lock file keeps changing)", file=str(self.folder))

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
        for folder in self._created:  # deepest first; a refused run leaves no empty runs/ behind
            try:
                folder.rmdir()  # only succeeds when nothing was written into it
            except OSError:
                break


def read_holder(path: Path) -> dict:
    """The record in a lock file ({} when absent or unreadable)."""
    try:
        data = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(record: dict) -> str:
    if not record:
        return "another process"
    return (f"`saec {record.get('command', '?')}` (pid {record.get('pid', '?')} on {record.get('host', '?')}, "
            f"started {record.get('started', '?')})")


# ---------------------------------------------------------------- checkpoints
def _serial_folder(run: Path, serial: int) -> Path:
    return run / CHECKPOINTS / f"{serial:06d}"


def read_manifest(run: Path) -> dict | None:
    """The checkpoint manifest of ``run`` (None when the run has none).

    Raises:
        ArtifactError: the manifest is damaged.
    """
    path = Path(run) / MANIFEST
    if not path.exists():
        return None
    data = A.load_json(path)
    ok = (isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT and isinstance(data.get("serial"), int)
          and isinstance(data.get("files"), dict)
          and all(isinstance(v, str) for v in data["files"].values())
          and set(data["files"]) == {A.WEIGHTS, A.TRAIN_STATE})
    if not ok:
        raise A.ArtifactError(path, "not a saec checkpoint manifest (fields format, serial, files)")
    return data


def write_checkpoint(run: Path, weights: dict[str, torch.Tensor], metadata: dict[str, str],
                     state: dict[str, Any]) -> None:
    """Write one complete checkpoint of ``run`` (see the module docstring for the order of writes)."""
    run = Path(run)
    previous = read_manifest(run)
    serial = (previous["serial"] + 1) if previous else 1
    final = _serial_folder(run, serial)
    staging = temporary_name(final)  # a folder, renamed into place as a whole
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        A._save_weights_file(staging / A.WEIGHTS, weights, metadata)
        fsync_file(staging / A.WEIGHTS)
        A.write_boundary()
        A.torch_save(state, staging / A.TRAIN_STATE)
        fsync_file(staging / A.TRAIN_STATE)
        A.write_boundary()
        fsync_dir(staging)
        shutil.rmtree(final, ignore_errors=True)  # an unreferenced leftover of a crash before its manifest
        os.replace(staging, final)
        fsync_dir(final.parent)
        A.write_boundary()
        manifest = {"format": MANIFEST_FORMAT, "serial": serial, "global_step": state.get("global_step"),
                    "complete": bool(state.get("complete")), "folder": f"{CHECKPOINTS}/{final.name}",
                    "files": {name: A.sha256_file(final / name) for name in (A.WEIGHTS, A.TRAIN_STATE)}}
        A.write_json(run / MANIFEST, manifest, durable=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    A.write_boundary()
    publish(run, manifest)


def publish(run: Path, manifest: dict) -> None:
    """Point the run-root weights and state at the manifest's checkpoint; drop older checkpoints."""
    folder = _serial_folder(run, manifest["serial"])
    for name in (A.WEIGHTS, A.TRAIN_STATE):
        target = run / name
        tmp = temporary_name(target)
        try:
            tmp.unlink(missing_ok=True)
            try:
                os.link(folder / name, tmp)
            except OSError:  # a file system without hard links
                shutil.copyfile(folder / name, tmp)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        A.write_boundary()
    fsync_dir(run)
    for old in (run / CHECKPOINTS).iterdir():
        if old == folder:
            continue
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    A.write_boundary()


def load_checkpoint(run: Path, *, repair: bool = True
                    ) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, Any]] | None:
    """The last complete checkpoint of ``run``: (weights, weights metadata, training state); None if none.

    Verifies the manifest's hashes; with ``repair`` (the process holding the run's lock), then
    repairs the run-root copies and removes leftovers if a crash interrupted a checkpoint.
    Runs written before checkpoints had a manifest are read from the run root.

    Raises:
        ArtifactError: a damaged manifest, checkpoint file or training state.
    """
    run = Path(run)
    manifest = read_manifest(run)
    if manifest is None:
        if not (run / A.TRAIN_STATE).is_file():
            return None
        folder = run
    else:
        folder = _serial_folder(run, manifest["serial"])
        for name, digest in manifest["files"].items():
            if not (folder / name).is_file():
                raise A.ArtifactError(folder / name, f"missing, though {MANIFEST} lists it")
            if A.sha256_file(folder / name) != digest:
                raise A.ArtifactError(folder / name, f"its sha256 differs from the one in {MANIFEST}: the file was "
                                                     "changed or damaged after it was written")
    weights = A.load_weights(folder / A.WEIGHTS)
    metadata = A.weights_metadata(folder / A.WEIGHTS)
    state = check_state(folder / A.TRAIN_STATE, A.load_torch(folder / A.TRAIN_STATE))
    if repair and manifest is not None:
        publish(run, manifest)
        for leftover in (run / CHECKPOINTS).glob(TEMPORARY_GLOB):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in run.glob(TEMPORARY_GLOB):
            leftover.unlink(missing_ok=True)
    return weights, metadata, state


#: Keys of a training state and the types resume relies on.
STATE_KEYS: dict[str, type | tuple[type, ...]] = {
    "format": int, "epoch": int, "step_in_epoch": int, "global_step": int, "optimizer": dict,
    "scheduler": dict, "noise_rng": torch.Tensor, "torch_rng": torch.Tensor, "history": list,
    "epoch_sums": dict, "epoch_count": int, "complete": bool,
}


def check_state(path: Path, state: Any) -> dict[str, Any]:
    """``state`` when it has every key resume needs, with the right types; else ArtifactError naming ``path``."""
    if not isinstance(state, dict):
        raise A.ArtifactError(path, f"holds a {type(state).__name__}, not a saec training state")
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise A.ArtifactError(path, f"not a complete saec training state (missing {', '.join(missing)})")
    wrong = [k for k, kind in STATE_KEYS.items() if not isinstance(state[k], kind)
             or (kind is int and isinstance(state[k], bool))]
    if wrong:
        raise A.ArtifactError(path, f"training state field(s) {', '.join(wrong)} have the wrong type")
    if min(state["epoch"], state["step_in_epoch"], state["global_step"], state["epoch_count"]) < 0:
        raise A.ArtifactError(path, "training state holds a negative step or epoch")
    return state


def state_is_complete(run: Path) -> bool:
    """Whether ``run`` holds a finished run's checkpoint (False for an unreadable one)."""
    try:
        manifest = read_manifest(run)
        if manifest is not None:
            return bool(manifest.get("complete"))
        state = A.load_torch(Path(run) / A.TRAIN_STATE)
    except UserError:
        return False
    return isinstance(state, dict) and bool(state.get("complete"))
