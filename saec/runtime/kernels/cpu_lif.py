"""The C LIF scan (``lif_scan.c``): built with the system C compiler on first use, called
through ctypes.

Nothing here is required: when no compiler is found, the build fails, or
``SAEC_NATIVE_KERNELS=0`` is set, :func:`library` returns None (after one
warning) and :mod:`saec.runtime.lif` uses its torch-op scan, which computes the
same values. The built library is cached per source, flags, compiler and CPU
under ``$SAEC_CACHE_DIR`` (default ``~/.cache/saec``), written under a
temporary name and renamed, so concurrent first uses cannot read half a file.

Work is split over ``torch.get_num_threads()`` Python threads by neuron range;
ctypes drops the GIL during a call, so the ranges run in parallel without
loading a second OpenMP runtime next to torch's.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("lif_scan.c")
#: "0" turns the native kernels off (the torch-op scan is used instead).
ENV_SWITCH = "SAEC_NATIVE_KERNELS"
#: No fused multiply-add: the kernel must round decay*x and + separately, like torch's ops.
CFLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-std=c99", "-fPIC", "-shared")
# Below this many neurons one thread does the whole layer (thread hand-off costs more).
_MIN_PARALLEL = 1 << 15
_ALIGN = 256  # neurons per range boundary (the kernel's block size)


class LIFParams(ctypes.Structure):
    """Mirror of ``lif_params`` in lif_scan.c (field order and types must match)."""

    _fields_ = [
        ("T", ctypes.c_int64), ("N", ctypes.c_int64),
        ("decay", ctypes.c_double), ("threshold", ctypes.c_double),
        ("lower_bound", ctypes.c_double), ("floor_value", ctypes.c_double),
        ("grad_decay", ctypes.c_double),
        ("spike_ge", ctypes.c_int32), ("reset", ctypes.c_int32), ("floor", ctypes.c_int32),
        ("floor_overlaps_spike", ctypes.c_int32), ("integrate", ctypes.c_int32),
        ("cumulative", ctypes.c_int32), ("reset_cut", ctypes.c_int32), ("floor_cut", ctypes.c_int32),
        ("gate_mode", ctypes.c_int32),
    ]


_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_FORWARD_ARGS = [ctypes.POINTER(LIFParams), _I64, _I64] + [_P] * 9
_BACKWARD_ARGS = [ctypes.POINTER(LIFParams), _I64, _I64, _P, _I64, ctypes.c_double, _P, _P, _P, _I64, _P,
                  _P, _P]


def _cache_dir() -> Path:
    explicit = os.environ.get("SAEC_CACHE_DIR")
    if explicit:
        return Path(explicit) / "kernels"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "saec" / "kernels"


def _cpu_signature() -> str:
    """-march=native code only runs on the CPU kind it was built for."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "model name")):
                flags += line
                if line.startswith("flags"):
                    break
    except OSError:
        pass
    return platform.machine() + platform.processor() + flags


def _build(cc: str, source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *CFLAGS, str(source), "-o", tmp], check=True, capture_output=True, text=True,
                       timeout=120)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build_native(source: Path, what: str, fallback: str) -> ctypes.CDLL | None:
    """Build (once per machine) and load the C source ``source``; None, after one warning, when
    native kernels are off (``SAEC_NATIVE_KERNELS=0``, no warning then), no compiler is found or
    the build fails.

    Args:
        source: a C file next to this module.
        what: the kernel's name in the warning ("C LIF kernel").
        fallback: what runs instead, for the warning ("the LIF scan uses torch ops ...").

    Returns:
        The loaded library (argument types not yet declared), or None.
    """
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        warnings.warn(f"saec: no C compiler found; {fallback}", RuntimeWarning, stacklevel=3)
        return None
    key = hashlib.sha256(source.read_bytes() + repr((CFLAGS, cc, _cpu_signature())).encode()).hexdigest()[:16]
    target = _cache_dir() / f"{source.stem}-{key}.so"
    try:
        if not target.exists():
            _build(cc, source, target)
        return ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        warnings.warn(f"saec: building the {what} failed ({detail.strip()[:300]}); {fallback}",
                      RuntimeWarning, stacklevel=3)
        return None


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None when native kernels are off or cannot be built."""
    lib = build_native(SOURCE, "C LIF kernel", "the LIF scan uses torch ops (slower, same results)")
    if lib is None:
        return None
    for dtype in ("f32", "f64"):
        getattr(lib, f"lif_forward_{dtype}").argtypes = _FORWARD_ARGS
        getattr(lib, f"lif_backward_{dtype}").argtypes = _BACKWARD_ARGS
    return lib


def supports(t: Tensor) -> bool:
    """Whether the C kernel can run on ``t`` (CPU, float32/float64) and is available."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and library() is not None


@functools.lru_cache(maxsize=4)
def _pool(workers: int, pid: int) -> ThreadPoolExecutor:
    # keyed by process id: a forked child must not reuse its parent's pool, whose threads it lacks
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="saec-lif")


def _ranges(n: int) -> list[tuple[int, int]]:
    workers = max(1, torch.get_num_threads())
    if workers == 1 or n < _MIN_PARALLEL:
        return [(0, n)]
    step = -(-n // workers)
    step = -(-step // _ALIGN) * _ALIGN
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def _run(fn, params: LIFParams, n: int, args: tuple) -> None:
    ref = ctypes.byref(params)
    parts = _ranges(n)
    if len(parts) == 1:
        fn(ref, 0, n, *args)
        return
    pool = _pool(len(parts), os.getpid())
    futures = [pool.submit(fn, ref, a, b, *args) for a, b in parts]
    for f in futures:
        f.result()


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _suffix(t: Tensor) -> str:
    return "f32" if t.dtype == torch.float32 else "f64"


def forward(params: LIFParams, current: Tensor, spikes: Tensor, U: Tensor | None, u: Tensor | None,
            v: Tensor | None, keep: Tensor | None, gate: Tensor | None, fired: Tensor | None,
            counts: Tensor | None = None) -> None:
    """Run the forward scan; every tensor is contiguous [T, N] (U: [N] for ``cumulative`` "last";
    counts: [N], the spikes summed over time)."""
    fn = getattr(library(), f"lif_forward_{_suffix(current)}")
    _run(fn, params, params.N, (current.data_ptr(), spikes.data_ptr(), _ptr(U), _ptr(u), _ptr(v), _ptr(keep),
                                _ptr(gate), _ptr(fired), _ptr(counts)))


def backward(params: LIFParams, grad: Tensor, g_spikes: Tensor | None, sg_value: float, sg: Tensor | None,
             gate: Tensor | None, g_u: Tensor | None, g_U: Tensor | None, keep: Tensor | None) -> None:
    """Run the reverse recurrence into ``grad`` [T, N].

    g_spikes / g_u: [T, N] with time stride N or 0; g_U: [N] (cumulative "last") or [T, N] ("all").
    """
    fn = getattr(library(), f"lif_backward_{_suffix(grad)}")
    _run(fn, params, params.N, (
        _ptr(g_spikes), 0 if g_spikes is None else g_spikes.stride(0), sg_value, _ptr(sg), _ptr(gate),
        _ptr(g_u), 0 if g_u is None else g_u.stride(0), _ptr(g_U), _ptr(keep), grad.data_ptr()))
