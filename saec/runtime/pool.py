"""Reusable memory for the large tensors of a training step (CPU).

A training step at T = 16, B = 64 allocates dozens of [T*B, ...] tensors of
10-100 MB. glibc serves every block above 32 MiB with a fresh ``mmap`` and
returns it on ``free``, so each step touches ~1 GB of fresh pages: ~300,000
page faults, which cost a third of the step on the 2-core machine
(benchmarks/README.md, lever log). Letting glibc keep freed memory removes the
faults but fragments its heap (peak memory 2x at T = 32).

A :class:`BufferPool` keeps the step's own large buffers instead: the same
sizes come back every step, so a buffer freed by one step (or by an earlier
layer of the same step) is handed out again, with no page fault and no
fragmentation. A buffer counts as free when nothing but the pool refers to its
storage (the storage's use count), so a tensor the caller still holds (saved
for backward, returned to the user) is never handed out twice.

The pool is active inside :func:`use_pool` (the model's forward sets it);
autograd Functions remember it for their backward. Outside, :func:`empty_strided`
falls back to ``torch.empty_strided``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

#: Blocks below this size come from glibc's heap, which reuses them by itself.
MIN_POOLED_BYTES = 1 << 20

_use_count = getattr(torch._C, "_storage_Use_Count", None)


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """Strides of a contiguous tensor of ``shape``."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


class BufferPool:
    """Large CPU buffers, reused once nothing outside the pool refers to them.

    Buffers are keyed by byte size; a request of any shape, strides and dtype
    with that many bytes can reuse one. The pool only grows to the largest number
    of same-sized buffers alive at once; :meth:`clear` gives everything back.

    Attributes:
        min_pooled_bytes: requests below this many bytes are left to glibc's heap; None:
            :data:`MIN_POOLED_BYTES` (the execution plan may set another, :mod:`saec.runtime.plan`).
    """

    def __init__(self, min_pooled_bytes: int | None = None) -> None:
        self.min_pooled_bytes = min_pooled_bytes
        self._buffers: dict[tuple[int, torch.device], list[Tensor]] = {}
        self._baseline: int | None = None
        self.hits = 0
        self.misses = 0

    def _is_free(self, base: Tensor) -> bool:
        return _use_count(base.untyped_storage()._cdata) <= self._baseline

    def empty_strided(self, shape: Sequence[int], strides: Sequence[int], dtype: torch.dtype,
                      device: torch.device | str = "cpu") -> Tensor:
        """An uninitialised tensor of ``shape`` / ``strides`` (a dense layout) from the pool."""
        device = torch.device(device)
        numel = 1
        for n in shape:
            numel *= n
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        smallest = MIN_POOLED_BYTES if self.min_pooled_bytes is None else self.min_pooled_bytes
        if device.type != "cpu" or nbytes < smallest or _use_count is None:
            return torch.empty_strided(tuple(shape), tuple(strides), dtype=dtype, device=device)
        bucket = self._buffers.setdefault((nbytes, device), [])
        for base in bucket:
            if self._is_free(base):
                self.hits += 1
                break
        else:
            base = torch.empty(nbytes, dtype=torch.uint8, device=device)
            if self._baseline is None:  # the pool's own reference (+ the wrapper the check makes)
                self._baseline = _use_count(base.untyped_storage()._cdata)
            bucket.append(base)
            self.misses += 1
        return base.view(dtype).as_strided(tuple(shape), tuple(strides))

    @property
    def nbytes(self) -> int:
        """Bytes the pool holds (in use or free)."""
        return sum(nbytes * len(b) for (nbytes, _), b in self._buffers.items())

    def clear(self) -> None:
        """Forget every buffer (those still in use stay valid until their users drop them)."""
        self._buffers.clear()


_active: contextvars.ContextVar[BufferPool | None] = contextvars.ContextVar("saec_pool", default=None)


@contextlib.contextmanager
def use_pool(pool: BufferPool | None) -> Iterator[None]:
    """Make ``pool`` the one :func:`active` returns inside the ``with`` block."""
    token = _active.set(pool)
    try:
        yield
    finally:
        _active.reset(token)


def active() -> BufferPool | None:
    """The pool of the innermost :func:`use_pool`, or None."""
    return _active.get()


def empty_strided(pool: BufferPool | None, shape: Sequence[int], strides: Sequence[int], dtype: torch.dtype,
                  device: torch.device | str) -> Tensor:
    """From ``pool`` when there is one, else ``torch.empty_strided``."""
    if pool is None:
        return torch.empty_strided(tuple(shape), tuple(strides), dtype=dtype, device=device)
    return pool.empty_strided(shape, strides, dtype, device)


def empty_like(pool: BufferPool | None, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``like``'s shape and strides, from ``pool`` when there is one (``like`` must be dense)."""
    return empty_strided(pool, like.shape, like.stride(), dtype or like.dtype, like.device)
