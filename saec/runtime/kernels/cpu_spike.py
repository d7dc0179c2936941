"""The C spike-driven synapse (``spike_synapse.c``: the forward, :func:`forward`, the weight
gradient, :func:`weight_grad`, and the input gradient at the active inputs, :func:`input_grad`):
built with the system C compiler on first use (the LIF scan's mechanism,
:func:`saec.runtime.kernels.cpu_lif.build_native`: cached per source, flags, compiler and CPU,
``SAEC_NATIVE_KERNELS=0`` turns it off), called through ctypes.

Nothing here is required: :func:`library` returns None (after one warning) when no compiler is
found or the build fails, and :mod:`saec.runtime.spikedriven` then runs the dense synapse.

Rows are split over ``torch.get_num_threads()`` Python threads; ctypes drops the GIL during a
call, so the ranges run in parallel without a second OpenMP runtime next to torch's.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from saec.compiler import ops
from saec.compiler.dispatch import OpTable
from saec.runtime.kernels.cpu_lif import _pool as _thread_pool  # the LIF scan's per-process pool
from saec.runtime.kernels.cpu_lif import build_native

SOURCE = Path(__file__).with_name("spike_synapse.c")
#: Below this many rows one thread does the whole call (a hand-off costs more than a few rows).
_MIN_ROWS_PER_THREAD = 4
#: Input rows are walked as at most this many dimensions (source shapes are [C, H, W] or [F]).
_MAX_INPUT_DIMS = 4

_KIND = {ops.Linear: 0, ops.Conv2d: 1, ops.ConvTranspose2d: 2}


class SpikeSynapseParams(ctypes.Structure):
    """Mirror of ``spike_synapse_params`` in spike_synapse.c (field order and types must match)."""

    _fields_ = [
        ("kind", ctypes.c_int64),
        ("in_sizes", ctypes.c_int64 * 4), ("in_strides", ctypes.c_int64 * 4), ("in_index", ctypes.c_int64 * 4),
        ("in_row_stride", ctypes.c_int64), ("in_numel", ctypes.c_int64),
        ("H", ctypes.c_int64), ("W", ctypes.c_int64),
        ("Co", ctypes.c_int64), ("Ho", ctypes.c_int64), ("Wo", ctypes.c_int64),
        ("kh", ctypes.c_int64), ("kw", ctypes.c_int64), ("sh", ctypes.c_int64), ("sw", ctypes.c_int64),
        ("ph", ctypes.c_int64), ("pw", ctypes.c_int64),
        ("acc_numel", ctypes.c_int64), ("direct", ctypes.c_int64),
        ("copy_sizes", ctypes.c_int64 * 3), ("copy_acc_strides", ctypes.c_int64 * 3),
        ("copy_out_strides", ctypes.c_int64 * 3), ("copy_planes", ctypes.c_int64),
        ("out_row_stride", ctypes.c_int64), ("row_step", ctypes.c_int64), ("flat", ctypes.c_int64),
        ("logical", ctypes.c_int64),
    ]


_ARGS = [ctypes.POINTER(SpikeSynapseParams), ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 4
_GRAD_ARGS = [ctypes.POINTER(SpikeSynapseParams), ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 3
_INPUT_GRAD_ARGS = _ARGS


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None when native kernels are off or cannot be built."""
    lib = build_native(SOURCE, "C spike-driven synapse kernel",
                       "spike-driven inference uses the dense synapses (slower, same results within fp32 rounding)")
    if lib is None:
        return None
    for name in ("spike_synapse_f32", "spike_synapse_u8"):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = _ARGS, ctypes.c_int
    for name in ("spike_weight_grad_f32", "spike_weight_grad_u8"):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = _GRAD_ARGS, ctypes.c_int
    for name in ("spike_input_grad_f32", "spike_input_grad_u8"):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = _INPUT_GRAD_ARGS, ctypes.c_int
    return lib


def supports(op: ops.Op, x: Tensor, weight: Tensor) -> bool:
    """Whether the kernel can run ``op`` on input rows ``x`` (CPU; float32, bool or uint8 input;
    float32 weights; at most 4 dimensions per row) and is available."""
    return (type(op) in _KIND and x.device.type == "cpu" and weight.device.type == "cpu"
            and x.dtype in (torch.float32, torch.bool, torch.uint8) and weight.dtype == torch.float32
            and x.dim() - 1 <= _MAX_INPUT_DIMS and math.prod(x.shape[1:]) < 1 << 31  # int32 indices
            and library() is not None)


def flips_kernel(op: ops.Op) -> bool:
    """A stride-1 conv2d runs as the scatter of a transposed convolution with its kernel flipped
    (one kernel row's taps then land on consecutive outputs: one contiguous run of adds)."""
    return isinstance(op, ops.Conv2d) and tuple(op.stride) == (1, 1)


def feature_order(op: ops.Op, out: Tensor) -> Tensor | None:
    """For a linear whose output rows ``out`` [n, C, H, W] are not stored in feature order (an
    unflatten handed out channels-last): the feature index at each position of a row in memory;
    None when the row is in feature order (and for convolutions)."""
    if not isinstance(op, ops.Linear) or out.dim() == 2:
        return None
    dims = sorted(range(out.dim() - 1), key=lambda d: out.stride(d + 1), reverse=True)
    if dims == sorted(dims):
        return None
    return torch.arange(out[0].numel()).view(out.shape[1:]).permute(dims).reshape(-1)


def arranged_weight(op: ops.Op, weight: Tensor, order: Tensor | None = None) -> Tensor:
    """The weights with out channels innermost, one contiguous run per input (channel and tap):
    linear [in, out] (out in ``order``, see :func:`feature_order`), conv2d [C_in, kh, kw, C_out]
    (from [C_out, C_in, kh, kw]; flipped in kh and kw at stride 1, :func:`flips_kernel`),
    transposed convolution [C_in, kh, kw, C_out] (from [C_in, C_out, kh, kw])."""
    return ARRANGED.lookup(op)(op, weight, order)


#: Per synapse op type: its weights as the kernel reads them (:func:`arranged_weight`).
ARRANGED: OpTable[Callable[[ops.Op, Tensor, "Tensor | None"], Tensor]] = OpTable("spike-driven weight layout")
ARRANGED.refuse([cls for cls in ops.OP_TYPES.values() if not cls.has_weights], "not a synapse: it has no weights")


@ARRANGED.register(ops.Linear)
def _arranged_linear(op: ops.Linear, weight: Tensor, order: Tensor | None) -> Tensor:
    return (weight if order is None else weight[order]).t().contiguous()


@ARRANGED.register(ops.Conv2d)
def _arranged_conv2d(op: ops.Conv2d, weight: Tensor, order: Tensor | None) -> Tensor:
    weight = weight.flip(2, 3) if flips_kernel(op) else weight
    return weight.permute(1, 2, 3, 0).contiguous()


@ARRANGED.register(ops.ConvTranspose2d)
def _arranged_conv_transpose2d(op: ops.ConvTranspose2d, weight: Tensor, order: Tensor | None) -> Tensor:
    return weight.permute(0, 2, 3, 1).contiguous()


#: Per synapse op type: the kernel's ``kind`` (0 linear, 1 conv2d gather, 2 scatter: transposed).
KIND: OpTable[Callable[[ops.Op], int]] = OpTable("spike-driven kernel kind")
KIND.refuse([cls for cls in ops.OP_TYPES.values() if not cls.has_weights], "not a synapse: it has no weights")
KIND.add(ops.Linear, lambda op: 0)
KIND.add(ops.Conv2d, lambda op: 1)
KIND.add(ops.ConvTranspose2d, lambda op: 2)


def _input_walk(x: Tensor, logical: bool = False) -> tuple[list[int], list[int], list[int]]:
    """Sizes, memory strides and logical-index strides of a row of ``x`` [n, *source shape], its
    dimensions ordered outermost first in memory (so the kernel reads the row in memory order) or,
    with ``logical``, in the source shape's order (so that it visits the inputs in logical order),
    and padded in front to four; the logical index is the row-major one of the source shape, which
    a reshape (a deferred flatten or unflatten) keeps."""
    shape = list(x.shape[1:])
    index = [math.prod(shape[d + 1:]) for d in range(len(shape))]
    # a size-1 dimension's stride means nothing (and may tie with the contiguous one): left out
    dims = [d for d in range(len(shape)) if shape[d] > 1]
    if not logical:
        dims.sort(key=lambda d: x.stride(d + 1), reverse=True)
    sizes = [shape[d] for d in dims]
    strides = [x.stride(d + 1) for d in dims]
    index = [index[d] for d in dims]
    pad = _MAX_INPUT_DIMS - len(sizes)
    return [1] * pad + sizes, [0] * pad + strides, [0] * pad + index


def _input_params(x: Tensor, logical: bool = False) -> tuple[Tensor, SpikeSynapseParams]:
    """Input rows ``x`` as the kernel reads them (bool viewed as uint8) and new kernel parameters
    with the input's walk (sizes, strides, index order, row stride, elements per row) filled in;
    ``logical``: the active inputs are to be taken in logical order (the forward)."""
    if x.dtype == torch.bool:
        x = x.view(torch.uint8)
    p = SpikeSynapseParams()
    sizes, strides, index = _input_walk(x)
    flat = _fills_its_memory(sizes, strides)
    if logical and not flat:  # no scan of the row as one run: walk it in logical order
        sizes, strides, index = _input_walk(x, logical=True)
    p.in_sizes[:], p.in_strides[:], p.in_index[:] = sizes, strides, index
    p.in_row_stride, p.in_numel = x.stride(0), math.prod(x.shape[1:])
    p.flat, p.logical = int(flat), int(logical)
    return x, p


def _fills_its_memory(sizes: list[int], strides: list[int]) -> bool:
    """Whether a row walked as ``sizes`` / ``strides`` (outermost first, :func:`_input_walk`) covers its
    memory without gaps: the kernel may then scan it as one run."""
    expected = 1
    for size, stride in zip(reversed(sizes), reversed(strides)):
        if size > 1:
            if stride != expected:
                return False
            expected *= size
    return True


def forward(op: ops.Op, wt: Tensor, bias: Tensor | None, x: Tensor, sample: tuple[int, ...], out: Tensor) -> bool:
    """Run the synapse ``op`` on the binary rows ``x`` into ``out``: each output element is its bias
    (or 0) plus the weights of the active inputs added one after the other in logical input order,
    so the result is the same bits whatever ``x``'s layout, the rows' split into calls and threads.

    Args:
        op: a Linear, Conv2d or ConvTranspose2d op.
        wt: the weights as :func:`arranged_weight` gives them for ``out`` (float32, contiguous).
        bias: [out channels] float32 (a linear's in the same ``order``), or None.
        x: input rows [n, *source shape], float32 0/1 or bool/uint8, each row dense in any layout;
            any nonzero counts as 1 (not checked).
        sample: the op's input shape per row (a reshape of the source shape).
        out: the output [n, *op output shape per row] (a linear's [n, F] or [n, C, H, W]), float32,
            each row dense in any layout; overwritten.

    Returns:
        False when the kernel could not get its scratch memory (``out`` is then undefined).
    """
    n = x.shape[0]
    x, p = _input_params(x, logical=True)
    p.acc_numel, p.out_row_stride = out[0].numel() if n else 0, out.stride(0)
    p.direct = 1
    _set_geometry(p, op, sample, tuple(out.shape[1:]))
    if p.kind != 0:
        ho, wo, co = p.Ho, p.Wo, p.Co
        _plan_copy(p, (ho, wo, co), (wo * co, co, 1), (out.stride(2), out.stride(3), out.stride(1)))
    fn = getattr(library(), "spike_synapse_u8" if x.dtype == torch.uint8 else "spike_synapse_f32")
    args = (x.data_ptr(), wt.data_ptr(), None if bias is None else bias.data_ptr(), out.data_ptr())
    workers = max(1, min(torch.get_num_threads(), n // _MIN_ROWS_PER_THREAD))
    return _run_rows(fn, p, n, [args] * workers)


def _set_geometry(p: SpikeSynapseParams, op: ops.Op, sample: tuple[int, ...], out_row: tuple[int, ...]) -> None:
    """The kernel's kind, sizes, kernel, stride and padding for ``op`` on input rows of shape ``sample``
    and output rows of shape ``out_row`` (a linear's [F] or [C, H, W]; a convolution's [Co, Ho, Wo])."""
    kind = KIND.lookup(op)(op)
    if kind == 0:  # linear: the accumulator is the output row in memory order (feature_order)
        p.kind, p.Co, p.Ho, p.Wo = 0, op.out_features, 1, 1
        p.H = p.W = p.kh = p.kw = p.sh = p.sw = 1
        return
    _, h, w = sample
    co, ho, wo = out_row
    p.H, p.W, p.Co, p.Ho, p.Wo = h, w, co, ho, wo
    (p.kh, p.kw), (p.sh, p.sw), (p.ph, p.pw) = op.kernel_size, op.stride, op.padding
    p.kind = kind
    if flips_kernel(op):  # the scatter form: padding k - 1 - p
        p.kind, p.ph, p.pw = 2, p.kh - 1 - p.ph, p.kw - 1 - p.pw


def _run_rows(fn, p: SpikeSynapseParams, n: int, worker_args: list[tuple]) -> bool:
    """``fn(p, w, n, *worker_args[w])`` for each worker w over interleaved rows (w, w + workers, ...;
    see spike_synapse.c), in the LIF scan's thread pool; True when every call returned 0."""
    workers = len(worker_args)
    p.row_step = workers
    ref = ctypes.byref(p)
    if workers == 1:
        return fn(ref, 0, n, *worker_args[0]) == 0
    pool = _thread_pool(workers, os.getpid())
    futures = [pool.submit(fn, ref, w, n, *args) for w, args in enumerate(worker_args)]
    return all(f.result() == 0 for f in futures)


def _plan_copy(p: SpikeSynapseParams, sizes: tuple[int, ...], acc_strides: tuple[int, ...],
               out_strides: tuple[int, ...]) -> None:
    """Accumulate in place when the output row has the accumulator's layout (size-1 dimensions
    aside), else copy each row out, its loops in the output's memory order."""
    if all(o == a for n, a, o in zip(sizes, acc_strides, out_strides) if n > 1):
        return
    dims = sorted(range(3), key=lambda d: out_strides[d], reverse=True)
    p.direct = 0
    p.copy_sizes[:] = [sizes[d] for d in dims]
    p.copy_acc_strides[:] = [acc_strides[d] for d in dims]
    p.copy_out_strides[:] = [out_strides[d] for d in dims]
    ho, wo, co = sizes
    # channel planes, each a dense [Ho, Wo]: the kernel's blocked transpose
    p.copy_planes = int(dims == [2, 0, 1] and out_strides[1] == 1 and out_strides[0] == wo
                        and out_strides[2] >= ho * wo)


# ---------------------------------------------------------------- weight gradient
def weight_grad_workers(rows: int) -> int:
    """Threads :func:`weight_grad` uses on ``rows`` rows (each one partial weight gradient): torch's
    thread count, but at least :data:`_MIN_ROWS_PER_THREAD` rows per thread."""
    return max(1, min(torch.get_num_threads(), rows // _MIN_ROWS_PER_THREAD))


def arranged_weight_shape(op: ops.Op, weight_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of :func:`arranged_weight`'s layout for a parameter of shape ``weight_shape``."""
    return FROM_ARRANGED.lookup(op).shape(weight_shape)


def from_arranged(op: ops.Op, arranged: Tensor) -> Tensor:
    """The inverse of :func:`arranged_weight` (no output ``order``): a tensor in the arranged layout
    back in the parameter's shape (a view; the caller copies it into the parameter's strides)."""
    return FROM_ARRANGED.lookup(op).back(op, arranged)


@dataclasses.dataclass(frozen=True)
class _ArrangedInverse:
    """For one synapse kind: the arranged layout's shape from the parameter's (``shape``), and the
    arranged tensor back in the parameter's shape (``back``)."""

    shape: Callable[[tuple[int, ...]], tuple[int, ...]]
    back: Callable[[ops.Op, Tensor], Tensor]


def _conv2d_back(op: ops.Op, arranged: Tensor) -> Tensor:
    w = arranged.permute(3, 0, 1, 2)
    return w.flip(2, 3) if flips_kernel(op) else w


FROM_ARRANGED: OpTable[_ArrangedInverse] = OpTable("spike-driven weight layout, inverse")
FROM_ARRANGED.refuse([cls for cls in ops.OP_TYPES.values() if not cls.has_weights], "not a synapse: it has no weights")
FROM_ARRANGED.add(ops.Linear, _ArrangedInverse(lambda s: (s[1], s[0]), lambda op, a: a.t()))
FROM_ARRANGED.add(ops.Conv2d, _ArrangedInverse(lambda s: (s[1], s[2], s[3], s[0]), _conv2d_back))
FROM_ARRANGED.add(ops.ConvTranspose2d, _ArrangedInverse(lambda s: (s[0], s[2], s[3], s[1]),
                                                        lambda op, a: a.permute(0, 3, 1, 2)))


def grad_rows_supported(op: ops.Op, g: Tensor) -> bool:
    """Whether output-gradient rows ``g`` are laid out as :func:`weight_grad` reads them: float32 on
    the CPU, each row dense with out channels innermost (a linear's [n, F] rows contiguous, a
    convolution's [n, Co, Ho, Wo] rows channels-last; size-1 dimensions' strides do not matter)."""
    if g.dtype != torch.float32 or g.device.type != "cpu":
        return False
    if isinstance(op, ops.Linear):
        return g.dim() == 2 and (g.shape[1] <= 1 or g.stride(1) == 1)
    if g.dim() != 4:
        return False
    _, co, ho, wo = g.shape
    want = {1: 1, 2: wo * co, 3: co}
    return all(g.shape[d] == 1 or g.stride(d) == stride for d, stride in want.items())


def _check_grad_rows(op: ops.Op, g: Tensor, n: int) -> None:
    if not grad_rows_supported(op, g) or g.shape[0] != n:
        raise ValueError(f"output gradient rows must be float32 [{n}, ...] with out channels innermost, "
                         f"got {tuple(g.shape)} strides {g.stride()} {g.dtype}")


def weight_grad(op: ops.Op, x: Tensor, g: Tensor, sample: tuple[int, ...], partials: Tensor) -> bool:
    """Add the weight gradient of ``op`` on the binary input rows ``x`` and output-gradient rows ``g``
    into ``partials``, doing work only where ``x`` is 1 (see spike_synapse.c, weight gradient).

    Args:
        op: a Linear, Conv2d or ConvTranspose2d op (any stride and padding).
        x: input rows [n, *source shape], bool/uint8 or float32 0/1, each row dense in any layout (as for
            :func:`forward`); any nonzero counts as 1 (not checked).
        g: the output gradient rows [n, *op output shape per row] (a linear's [n, F]), float32, laid
            out as :func:`grad_rows_supported` says (checked).
        sample: the op's input shape per row (a reshape of the source shape).
        partials: [k, *arranged weight shape] float32, contiguous (:func:`arranged_weight_shape`),
            k >= :func:`weight_grad_workers` (n): worker w adds its rows' gradient into ``partials[w]``;
            their sum over the first dimension is dW in the arranged layout (:func:`from_arranged`).

    Returns:
        False when the kernel could not get its scratch memory (``partials`` may then hold part of
        the sum: the caller discards it).

    Raises:
        ValueError: ``g`` or ``partials`` not laid out as described.
    """
    n = x.shape[0]
    _check_grad_rows(op, g, n)
    workers = weight_grad_workers(n)
    if not partials.is_contiguous() or partials.dtype != torch.float32 or partials.shape[0] < workers:
        raise ValueError(f"partials must be contiguous float32 [>= {workers}, ...], got {tuple(partials.shape)}")
    if n == 0:
        return True
    x, p, fn = _gradient_call(op, x, g, sample, "spike_weight_grad")
    return _run_rows(fn, p, n, [(x.data_ptr(), g.data_ptr(), partials[w].data_ptr()) for w in range(workers)])


def _gradient_call(op: ops.Op, x: Tensor, g: Tensor, sample: tuple[int, ...], kernel: str):
    """(x as the kernel reads it, the parameters of a gradient kernel's call, the kernel ``kernel``_u8 or
    _f32 for x's dtype) for input rows ``x`` and output-gradient rows ``g``."""
    x, p = _input_params(x)
    p.out_row_stride = g.stride(0)
    _set_geometry(p, op, sample, tuple(g.shape[1:]))
    return x, p, getattr(library(), kernel + ("_u8" if x.dtype == torch.uint8 else "_f32"))


# ---------------------------------------------------------------- input gradient
def input_grad(op: ops.Op, x: Tensor, g: Tensor, sample: tuple[int, ...], wt: Tensor, dx: Tensor) -> bool:
    """The input gradient of ``op`` at the active inputs of ``x`` (0 elsewhere) into ``dx``, with
    work only where ``x`` is 1 (see spike_synapse.c, input gradient): what a synapse needs when its
    input's gradient is read only where the input fired (a ``spike_gated`` producer).

    Args:
        op: a Linear, Conv2d or ConvTranspose2d op (any stride and padding).
        x: input rows [n, *source shape], bool/uint8 or float32 0/1, each row dense in any layout (as
            for :func:`forward`); any nonzero counts as 1 (not checked).
        g: the output-gradient rows, laid out as :func:`grad_rows_supported` says (checked).
        sample: the op's input shape per row (a reshape of the source shape).
        wt: the weights as :func:`arranged_weight` gives them (no ``order``), float32, contiguous.
        dx: [n, *source shape] float32 with ``x``'s strides (checked); overwritten.

    Returns:
        False when the kernel could not get its scratch memory (``dx`` is then undefined).

    Raises:
        ValueError: ``g``, ``wt`` or ``dx`` not laid out as described.
    """
    n = x.shape[0]
    _check_grad_rows(op, g, n)
    if dx.dtype != torch.float32 or dx.shape != x.shape or (n > 1 and dx.stride() != x.stride()) \
            or (n == 1 and dx.stride()[1:] != x.stride()[1:]):
        raise ValueError(f"dx must be float32 with x's shape and strides {tuple(x.shape)} {x.stride()}, "
                         f"got {tuple(dx.shape)} {dx.stride()} {dx.dtype}")
    want = ((math.prod(sample), g.shape[1]) if isinstance(op, ops.Linear)
            else (sample[0], *op.kernel_size, g.shape[1]))
    if not wt.is_contiguous() or wt.dtype != torch.float32 or tuple(wt.shape) != want:
        raise ValueError(f"wt must be the arranged float32 weights, got {tuple(wt.shape)} {wt.dtype}")
    if n == 0:
        return True
    x, p, fn = _gradient_call(op, x, g, sample, "spike_input_grad")
    args = (x.data_ptr(), g.data_ptr(), wt.data_ptr(), dx.data_ptr())
    return _run_rows(fn, p, n, [args] * weight_grad_workers(n))
