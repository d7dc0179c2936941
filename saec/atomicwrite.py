"""Writing a file so that it is complete or absent, never half: the one implementation, for every layer.

A file is written under a temporary name in its own folder (``.NAME.tmp-PID``)
and renamed into place; on any failure, Ctrl-C included, the temporary goes.
Like :mod:`saec.errors` this module sits at the bottom of the house (it
imports nothing from saec), so the run layer (:mod:`saec.run.artifacts`),
the figures, the exporters and the importers all write through it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Callable

#: How a temporary file's name starts and what it holds, for clean-up globs: ``.NAME.tmp-PID``.
TEMPORARY_GLOB = ".*.tmp-*"


def temporary_name(path: Path) -> Path:
    """The temporary a write of ``path`` goes through (same folder, so the rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (best effort where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush ``path``'s content to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path | str, write: Callable[[Path], Any], *, durable: bool = False) -> Path:
    """Write ``path`` through a temporary name in its folder; the temporary goes on any failure.

    Args:
        path: the file to (re)place; missing parent folders are made.
        write: ``write(temporary)`` writes the whole content to the temporary path it is given (and may
            read it back to check it: it is only renamed into place when ``write`` returns).
        durable: fsync the file and the folder, so the new content survives a power cut.
    Returns:
        ``path``.
    Raises:
        NotADirectoryError: a file stands where a parent folder should be.
        OSError: and whatever ``write`` raises; ``path`` is then untouched.
    """
    path = Path(path)
    for folder in (path.parent, *path.parent.parents):  # mkdir says "File exists" for a file on the way
        if folder.exists():
            if not folder.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(folder))
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        write(tmp)
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def save_figure(fig: Any, path: Path | str, **kwargs: Any) -> Path:
    """Save a matplotlib figure atomically (the format from ``path``'s suffix unless ``format`` is given)."""
    path = Path(path)
    kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    return write_atomically(path, lambda tmp: fig.savefig(tmp, **kwargs))
