"""Leaky integrate-and-fire kernels: pure functions over an immutable ``LIF`` record.

One time step (docs/semantics.md, "One time step"; u'(0) = 0, U(0) = 0)::

    u(t)   = decay * u'(t-1) + I(t)
    v(t)   = floor rule applied to u(t)   if clamp_first else u(t)
    phi(t) = [v(t) >= threshold]          (spike_when="gt": strict >)
    u'(t)  = reset(v(t))                  if phi(t)
             floor_value                  if u(t) < lower_bound (and the floor rule is still due)
             v(t)                         otherwise
    U(t)   = decay * U(t-1) + u(t)        (integrate="potential"; u before the floor rule and reset)
    U(t)   = decay * (U(t-1) + I(t))      (integrate="current")

The floor rule sets a potential below ``lower_bound`` to ``op.floor_value``
(``lower_bound`` itself for mode ``clamp``, ``+threshold`` for ``revive``).
With ``clamp_first=False`` it applies only where the neuron did not spike.

Three entry points:

- :func:`lif_scan`: all T steps of one layer at once (layer-wise multi-step
  execution), with a hand-written backward; the fast path. It runs as one fused
  kernel per layer where one applies (C on the CPU, built on first use; Triton
  on CUDA; :mod:`saec.runtime.kernels`), else as torch ops (:func:`scan_backend`).
- :func:`lif_scan_autograd`: the same maths as a plain loop of torch ops whose
  straight-through rules are written with ``detach`` / ``where`` tricks, so that
  autograd derives the gradient; slow, the oracle the fast backward is tested
  against.
- :func:`lif_step`: one step (the step-by-step reference execution); it is
  the per-step body of :func:`lif_scan_autograd`, differentiable the same way.

All three perform the same floating-point operations in the same order, so
they give bit-identical spikes (up to the sign of a zero membrane).

Backward (membrane-potential backpropagation with a straight-through
estimate). Per step the gradient rules are::

    d phi / d v   = surrogate(v)            (see :func:`_surrogate_grad`)
    d v / d u     = 1, or 0 where the floor rule applied and clamp_grad="cut"
                    (only with clamp_first; otherwise v is u)
    d u' / d u    = 0 at a spike if reset="zero" and reset_grad="cut";
                    0 where the floor rule applied and clamp_grad="cut"; else 1
                    (the spike inside a subtract reset is a constant)
    d u(t) / d u'(t-1) = d U(t) / d U(t-1) = decay if decay_grad else 1
    d U(t) / d u(t) = 1 (potential);  d U(t) / d I(t) = decay if decay_grad else 1 (current)

The recorded potential ``u`` (``record_potential=True``) is differentiable in
both implementations: its gradient enters as d L / d u(t) directly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from saec.compiler.ops import LIF
from saec.runtime import pool as buffers
from saec.runtime.kernels import cpu_lif, cuda_lif

Cumulative = Literal["none", "last", "all"]
_CUMULATIVE = ("none", "last", "all")
_MEMBRANE_SURROGATES = ("fast_sigmoid", "arctan")


class LIFResult(NamedTuple):
    """Outputs of :func:`lif_scan`.

    spikes: phi(1..T), [T, B, ...], same dtype as the input current, values 0 or 1.
    U: cumulative potential; None (``cumulative="none"``), U(T) [B, ...]
        (``"last"``) or U(1..T) [T, B, ...] (``"all"``).
    u: membrane u(1..T) before the floor rule and the reset, [T, B, ...]
        (only with ``record_potential=True``).
    counts: the spikes summed over time [B, ...], differentiable (only with ``counts=True``).
    fired: the spikes as bool [T, B, ...], not differentiable (only with
        ``bool_spikes=True``); where backward keeps the spikes anyway (spike_gated
        surrogate) this is the very tensor it keeps, so a consumer that saves it
        for its own backward costs no memory.
    """

    spikes: Tensor
    U: Tensor | None = None
    u: Tensor | None = None
    fired: Tensor | None = None
    counts: Tensor | None = None


def _check_args(current: Tensor, op: LIF, cumulative: str) -> None:
    if not isinstance(op, LIF):
        raise TypeError(f"op must be a saec.compiler.ops.LIF record, got {type(op).__name__}")
    if cumulative not in _CUMULATIVE:
        raise ValueError(f"cumulative must be one of {_CUMULATIVE}, got {cumulative!r}")
    if not current.is_floating_point():
        raise TypeError(f"current must be a floating-point tensor, got {current.dtype}")
    if current.dim() < 2 or current.shape[0] < 1:
        raise ValueError(
            f"current must be [T, B, ...] with T >= 1, got shape {tuple(current.shape)}"
        )


# ---------------------------------------------------------------- fast path
Backend = Literal["auto", "torch"]
_backend: Backend = "auto"


@contextlib.contextmanager
def scan_backend(name: Backend) -> Iterator[None]:
    """Choose how :func:`lif_scan` runs inside the ``with`` block.

    ``"auto"`` (the default): the fused kernel for the tensor's device where one
    is available (C on the CPU, Triton on CUDA), else torch ops. ``"torch"``:
    always the torch-op scan. Both give the same spikes, potentials and
    gradients; the switch exists for tests and benchmarks.
    """
    global _backend
    if name not in ("auto", "torch"):
        raise ValueError(f"scan backend must be 'auto' or 'torch', got {name!r}")
    previous, _backend = _backend, name
    try:
        yield
    finally:
        _backend = previous


def _kernel_for(t: Tensor):
    """The fused-kernel module that runs on ``t``, or None (torch ops)."""
    if _backend == "torch":
        return None
    if cpu_lif.supports(t):
        return cpu_lif
    if cuda_lif.supports(t):
        return cuda_lif
    return None


class _Saved(NamedTuple):
    keep: Tensor | None = None
    gate: Tensor | None = None
    v: Tensor | None = None


def _scan_forward(
    current: Tensor, op: LIF, cumulative: str, record_potential: bool, for_backward: bool,
    bool_spikes: bool = False, counts: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None, _Saved, Tensor | None, Tensor | None]:
    """Run the recurrence; return spikes, U, u, what backward needs, the bool spikes and the
    spike counts (summed over time)."""
    kernel = _kernel_for(current)
    if kernel is not None:
        return _scan_forward_kernel(kernel, current, op, cumulative, record_potential, for_backward,
                                    bool_spikes, counts)
    spikes, U, u, saved = _scan_forward_torch(current, op, cumulative, record_potential, for_backward)
    fired = spikes.to(torch.bool) if bool_spikes else None
    return spikes, U, u, _Saved(**saved), fired, spikes.sum(0) if counts else None


def _kernel_params(kernel, op: LIF, T: int, N: int, cumulative: str, for_backward: bool,
                   dtype: torch.dtype):
    """The kernel's parameter record for ``op`` (and which masks backward needs)."""
    floor = 0 if op.lower_bound is None else (1 if op.clamp_first else 2)
    reset_cut = for_backward and op.reset == "zero" and op.reset_grad == "cut"
    floor_cut = for_backward and floor != 0 and op.clamp_grad == "cut"
    gate_mode = 0
    if for_backward and op.surrogate == "spike_gated":
        gate_mode = 1
        if floor_cut and floor == 1:
            # A neuron set to the floor value spikes only if that value passes the test (in the
            # tensor's dtype); where it cannot, "fired and not floored" is just "fired".
            fv, thr = torch.tensor(op.floor_value, dtype=dtype), torch.tensor(op.threshold, dtype=dtype)
            floor_fires = bool(fv >= thr) if op.spike_when == "ge" else bool(fv > thr)
            gate_mode = 2 if floor_fires else 1
    elif floor_cut and floor == 1:
        gate_mode = 3  # the spike path is cut where the floor rule ran first
    return kernel.LIFParams(
        T=T, N=N, decay=op.decay, threshold=op.threshold,
        lower_bound=0.0 if op.lower_bound is None else op.lower_bound,
        floor_value=0.0 if op.lower_bound is None else op.floor_value,
        grad_decay=op.decay if op.decay_grad else 1.0,
        spike_ge=int(op.spike_when == "ge"), reset=("zero", "subtract", "none").index(op.reset),
        floor=floor, floor_overlaps_spike=int(floor == 2 and op.lower_bound > op.threshold),
        integrate=int(op.integrate == "current"), cumulative=_CUMULATIVE.index(cumulative),
        reset_cut=int(reset_cut), floor_cut=int(floor_cut), gate_mode=gate_mode,
    )


def _scan_forward_kernel(
    kernel, current: Tensor, op: LIF, cumulative: str, record_potential: bool, for_backward: bool,
    bool_spikes: bool, counts: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None, _Saved, Tensor | None, Tensor | None]:
    """The fused scan: one kernel call per layer, every output written once.

    The kernel treats each time step as a flat block of N elements, so any layout in which
    time is the outermost dimension and each step is dense works (e.g. channels-last
    convolution outputs); every output gets the input's layout, so a channels-last
    current gives channels-last spikes for the next convolution.
    """
    x = current if _time_major_dense(current) else current.contiguous()
    T = x.shape[0]
    params = _kernel_params(kernel, op, T, x[0].numel(), cumulative, for_backward, x.dtype)
    pool = buffers.active()  # the training step's reusable buffers (no page faults), if any

    def new(like: Tensor = x, dtype: torch.dtype | None = None) -> Tensor:
        return buffers.empty_like(pool, like, dtype)

    spikes = new()
    u = new() if record_potential else None
    v = new() if for_backward and op.surrogate in _MEMBRANE_SURROGATES else None
    U = None if cumulative == "none" else new(x if cumulative == "all" else x[0])
    keep = new(dtype=torch.bool) if params.reset_cut or params.floor_cut else None
    gate = new(dtype=torch.bool) if params.gate_mode else None
    # The gate of spike_gated is the spike train itself: hand out that very tensor.
    fired = gate if params.gate_mode == 1 else (new(dtype=torch.bool) if bool_spikes else None)
    fired_out = fired if fired is not gate else None
    if kernel is cpu_lif:  # the C scan sums the spikes on the way (no extra pass over memory)
        count = new(x[0]) if counts else None
        kernel.forward(params, x, spikes, U, u, v, keep, gate, fired_out, count)
    else:
        kernel.forward(params, x, spikes, U, u, v, keep, gate, fired_out)
        count = spikes.sum(0) if counts else None
    return spikes, U, u, _Saved(keep, gate, v), fired if bool_spikes else None, count


def _time_major_dense(x: Tensor) -> bool:
    """Time outermost and every step one dense block (contiguous or channels-last)."""
    step = x[0]
    if x.stride(0) != step.numel():
        return False
    return step.is_contiguous() or (step.dim() == 4 and step.is_contiguous(memory_format=torch.channels_last))


def _scan_forward_torch(
    current: Tensor, op: LIF, cumulative: str, record_potential: bool, for_backward: bool
) -> tuple[Tensor, Tensor | None, Tensor | None, dict[str, Tensor | None]]:
    """Run the recurrence with torch ops; return spikes, U, u and what backward needs.

    Every per-step op writes into a preallocated buffer. Masks are computed as
    float 0/1 (CPU kernels for float arithmetic are several times faster than
    those reading bool) and written out as bool only for saving. All
    value-changing ops are exact (multiplying by 0/1, adding 0) except the two
    rounding ones, ``decay * x`` and ``+``, which :func:`lif_step` repeats in
    the same order.
    """
    T, shape = current.shape[0], current.shape[1:]
    like = dict(dtype=current.dtype, device=current.device)
    decay, thr = op.decay, op.threshold
    lb, fv = op.lower_bound, op.floor_value
    floor = lb is not None
    floor_first = floor and op.clamp_first
    floor_after = floor and not op.clamp_first
    # Spiking and the floor rule can only coincide when the floor lies above the threshold.
    floor_overlaps_spike = floor_after and lb > thr
    spike_test = torch.ge if op.spike_when == "ge" else torch.gt

    keep_floored = for_backward and floor and op.clamp_grad == "cut"
    keep_v = for_backward and op.surrogate in _MEMBRANE_SURROGATES

    spikes = torch.empty(current.shape, **like)
    u_all = torch.empty(current.shape, **like) if record_potential else None
    # v is u unless the floor rule runs first; then it needs its own storage.
    u_store = u_all if u_all is not None else (
        torch.empty(current.shape, **like) if keep_v and not floor_first else None)
    v_store = torch.empty(current.shape, **like) if keep_v and floor_first else None
    floored = torch.empty(current.shape, dtype=torch.bool, device=current.device) \
        if keep_floored else None
    U_all = torch.empty(current.shape, **like) if cumulative == "all" else None
    U_run = torch.zeros(shape, **like) if cumulative != "none" else None

    up = torch.zeros(shape, **like)  # u'(t-1)
    ubuf = torch.empty(shape, **like)
    vbuf = torch.empty(shape, **like) if floor_first else None
    below = torch.empty(shape, **like) if floor else None  # float 0/1

    for t in range(T):
        I_t = current[t]
        u = u_store[t] if u_store is not None else ubuf
        torch.mul(up, decay, out=u)
        u.add_(I_t)
        if floor_first:
            torch.lt(u, lb, out=below)
            v = v_store[t] if v_store is not None else vbuf
            torch.addcmul(u, u, below, value=-1.0, out=v)  # 0 where below, else u
            v.add_(below, alpha=fv)
            if floored is not None:
                floored[t].copy_(below)
        else:
            v = u
        s = spikes[t]
        spike_test(v, thr, out=s)
        if op.reset == "zero":
            torch.addcmul(v, v, s, value=-1.0, out=up)
        elif op.reset == "subtract":
            torch.add(v, s, alpha=-thr, out=up)
        else:
            up.copy_(v)
        if floor_after:
            torch.lt(u, lb, out=below)
            if floor_overlaps_spike:
                below.addcmul_(below, s, value=-1.0)
            # Where not spiked u' is u, so u' - u'*below + fv*below sets the floor exactly.
            up.addcmul_(up, below, value=-1.0)
            up.add_(below, alpha=fv)
            if floored is not None:
                floored[t].copy_(below)
        if U_run is not None:
            U_t = U_all[t] if U_all is not None else U_run
            U_prev = U_all[t - 1] if (U_all is not None and t > 0) else U_run
            if op.integrate == "potential":
                torch.mul(U_prev, decay, out=U_t)
                U_t.add_(u)
            else:
                torch.add(U_prev, I_t, out=U_t)
                U_t.mul_(decay)

    U_out = U_all if cumulative == "all" else U_run
    saved: dict[str, Tensor | None] = {"keep": None, "gate": None, "v": None}
    if for_backward:
        saved = _backward_masks(op, spikes, floored)
        if keep_v:
            saved["v"] = v_store if v_store is not None else u_store
    return spikes, U_out, u_all, saved


def _backward_masks(op: LIF, spikes: Tensor, floored: Tensor | None) -> dict[str, Tensor | None]:
    """Bool masks the backward recurrence needs.

    keep: where the membrane path d u'(t) / d u(t) is 1 (None: everywhere).
    gate: where the spike gradient d phi / d u may be non-zero (None: everywhere);
          for ``spike_gated`` these are the spikes themselves.

    Built in place in the spike and floor buffers where possible: each fresh
    [T, B, ...] tensor costs page faults that rival the arithmetic.
    """
    reset_cut = op.reset == "zero" and op.reset_grad == "cut"
    gated = op.surrogate == "spike_gated"
    fired = spikes.to(torch.bool) if (gated or reset_cut) else None
    if floored is None:
        keep = None
        if reset_cut:
            keep = ~fired if gated else fired.logical_not_()
        return {"keep": keep, "gate": fired if gated else None, "v": None}
    unfloored = floored.logical_not_()
    if op.clamp_first:
        # The floor rule ran before the spike test, so a cut there cuts the spike path too
        # (v is then a constant).
        if gated:
            gate = fired.logical_and_(unfloored)
            # gate lies inside unfloored, so xor removes exactly the spikes: unfloored & ~fired
            keep = unfloored.logical_xor_(gate) if reset_cut else unfloored
        else:
            gate = unfloored
            keep = fired.logical_not_().logical_and_(unfloored) if reset_cut else unfloored
    else:
        # The floor rule applied only where the neuron did not spike: fired lies inside unfloored.
        gate = fired if gated else None
        keep = unfloored.logical_xor_(fired) if reset_cut else unfloored
    return {"keep": keep, "gate": gate, "v": None}


def _surrogate_grad(op: LIF, v: Tensor | None) -> Tensor | float:
    """d phi / d v: a tensor (fast_sigmoid, arctan) or a constant (straight_through, spike_gated).

    straight_through: 1;  spike_gated: 1/threshold where spiked (the gate masks the rest);
    fast_sigmoid: 1 / (1 + slope*|v - thr|)^2;  arctan: (slope/2) / (1 + (pi/2*slope*(v - thr))^2).
    """
    if op.surrogate == "straight_through":
        return 1.0
    if op.surrogate == "spike_gated":
        return 1.0 / op.threshold
    x = v - op.threshold
    if op.surrogate == "fast_sigmoid":
        return (x.abs_().mul_(op.slope).add_(1.0)).pow_(-2)
    return (x.mul_(math.pi / 2 * op.slope).pow_(2).add_(1.0)).reciprocal_().mul_(op.slope / 2)


class _LIFScanFunction(torch.autograd.Function):
    """``lif_scan`` with the straight-through backward as a reverse linear recurrence.

    Saved for backward (nothing else):
    - ``keep`` (bool [T, B, ...]): where d u'/d u = 1, i.e. not a spike under a
      cut zero-reset nor a floor event under a cut clamp; omitted when no rule cuts.
    - ``gate`` (bool [T, B, ...]): where d phi/d u can be non-zero: the spikes
      for ``spike_gated``, non-floored entries when a cut floor rule runs
      before the spike test; omitted otherwise.
    - ``v`` (float [T, B, ...]): the potential the spike test saw, only for the
      surrogates that depend on it (fast_sigmoid, arctan).
    The rest of backward depends only on the op's constants, so no float
    state (u, u', U, I) is kept: for the default op this is two bytes per
    neuron and step, where an autograd loop keeps several float tensors per
    step (:func:`lif_scan_autograd`). Backward reads
    the masks through a uint8 view: CPU arithmetic with bool operands is several
    times slower.
    """

    @staticmethod
    def forward(ctx, current, op, cumulative, record_potential, bool_spikes, counts):
        ctx.set_materialize_grads(False)
        spikes, U, u, saved, fired, count = _scan_forward(current, op, cumulative, record_potential, True,
                                                          bool_spikes, counts)
        ctx.op, ctx.cumulative, ctx.pool = op, cumulative, buffers.active()
        ctx.T, ctx.shape = current.shape[0], current.shape[1:]
        ctx.strides = spikes.stride()  # the kernel's layout (the torch-op scan: contiguous)
        ctx.save_for_backward(saved.keep, saved.gate, saved.v)
        if fired is not None:
            ctx.mark_non_differentiable(fired)
        return spikes, U, u, fired, count

    @staticmethod
    @once_differentiable
    def backward(ctx, g_spikes, g_U, g_u, _g_fired, g_count):
        keep, gate, v = ctx.saved_tensors
        if g_count is not None:  # counts = spikes summed over time: its gradient reaches every step
            if g_spikes is None:
                g_spikes = g_count.unsqueeze(0).expand(ctx.T, *g_count.shape)
            else:
                g_spikes = torch.add(g_spikes, g_count, out=buffers.empty_like(ctx.pool, g_spikes))
        if g_spikes is None and g_U is None and g_u is None:
            return None, None, None, None, None, None
        ref = next(g for g in (g_spikes, g_U, g_u) if g is not None)
        kernel = _kernel_for(ref)
        if kernel is not None:
            grad = _scan_backward_kernel(kernel, ctx, g_spikes, g_U, g_u, keep, gate, v)
        else:
            grad = _scan_backward_torch(ctx, g_spikes, g_U, g_u, keep, gate, v)
        return grad, None, None, None, None, None


def _in_layout(g: Tensor, like: Tensor, time_stride_zero_ok: bool = True,
               pool: buffers.BufferPool | None = None) -> Tensor:
    """``g`` with ``like``'s strides (copied only if needed); a gradient expanded over time
    (stride 0, e.g. from ``spikes.sum(0)``) is kept as it is when its steps have ``like``'s layout."""
    if g.stride() == like.stride():
        return g
    if time_stride_zero_ok and g.dim() == like.dim() and g.stride(0) == 0 and g.stride()[1:] == like.stride()[1:]:
        return g
    return buffers.empty_like(pool, like, g.dtype).copy_(g)


def _scan_backward_kernel(kernel, ctx, g_spikes, g_U, g_u, keep, gate, v) -> Tensor:
    """The whole backward in one fused pass (the surrogate tensor, if any, is one more)."""
    op, T, shape = ctx.op, ctx.T, ctx.shape
    ref = next(g for g in (g_spikes, g_U, g_u) if g is not None)
    N = math.prod(shape)
    params = _kernel_params(kernel, op, T, N, ctx.cumulative, True, ref.dtype)
    if g_U is None:
        params.cumulative = 0
    pool = ctx.pool
    grad = buffers.empty_strided(pool, (T, *shape), ctx.strides, ref.dtype, ref.device)
    sg_value, sg = 0.0, None
    if g_spikes is not None:
        surrogate = _surrogate_grad(op, v)
        if isinstance(surrogate, Tensor):
            sg = _in_layout(surrogate, grad, False, pool)
        else:
            sg_value = surrogate
    if g_U is not None:
        g_U = _in_layout(g_U, grad if ctx.cumulative == "all" else grad[0], False, pool)
    kernel.backward(
        params, grad,
        None if g_spikes is None else _in_layout(g_spikes, grad, pool=pool), sg_value, sg, gate,
        None if g_u is None else _in_layout(g_u, grad, pool=pool), g_U, keep)
    return grad


def _scan_backward_torch(ctx, g_spikes, g_U, g_u, keep, gate, v) -> Tensor | None:
    op, T = ctx.op, ctx.T
    dg = op.decay if op.decay_grad else 1.0

    # dL/du(t) from the terms of step t itself: spikes, recorded u, and U (potential).
    grad: Tensor | None = None
    if g_spikes is not None:
        sg = _surrogate_grad(op, v)
        grad = g_spikes * sg
        if gate is not None:
            grad.mul_(gate.view(torch.uint8))
    if g_u is not None:
        grad = g_u.clone(memory_format=torch.contiguous_format) if grad is None else grad.add_(g_u)
    GU = None
    if g_U is not None:
        GU = _cumulative_grad(g_U, ctx.cumulative, T, dg)
        if op.integrate == "potential":
            grad = GU.clone(memory_format=torch.contiguous_format) if grad is None else grad.add_(GU)
    if grad is None:
        grad = torch.zeros((T, *ctx.shape), dtype=GU.dtype, device=GU.device)
    elif not grad.is_contiguous():
        grad = grad.contiguous()

    # Membrane path, newest step first: dL/du(t-1) += m(t-1) * dg * dL/du(t).
    if T > 1 and (g_spikes is not None or g_u is not None or op.integrate == "potential"):
        if keep is None:
            for t in range(T - 1, 0, -1):
                grad[t - 1].add_(grad[t], alpha=dg)
        else:
            m = keep.view(torch.uint8)
            for t in range(T - 1, 0, -1):
                grad[t - 1].addcmul_(m[t - 1], grad[t], value=dg)
    if GU is not None and op.integrate == "current":
        grad.add_(GU, alpha=dg)
    return grad


def _cumulative_grad(g_U: Tensor, cumulative: str, T: int, dg: float) -> Tensor:
    """dL/dU(t) for t = 1..T, summing what reaches U(t) through U(t+1), U(t+2), ..."""
    if cumulative == "last":
        if dg == 1.0:
            return g_U.unsqueeze(0).expand(T, *g_U.shape)
        powers = torch.tensor([dg ** k for k in range(T - 1, -1, -1)], dtype=g_U.dtype,
                              device=g_U.device)
        return powers.view(T, *([1] * g_U.dim())) * g_U
    if dg == 1.0:
        return g_U.flip(0).cumsum(0).flip(0)
    GU = g_U.clone(memory_format=torch.contiguous_format)
    for t in range(T - 2, -1, -1):
        GU[t].add_(GU[t + 1], alpha=dg)
    return GU


def lif_scan(
    current: Tensor,
    op: LIF,
    *,
    cumulative: Cumulative = "none",
    record_potential: bool = False,
    bool_spikes: bool = False,
    counts: bool = False,
) -> LIFResult:
    """Run a LIF layer over all T time steps at once.

    Args:
        current: input current I(1..T), float [T, B, ...], in units of the threshold's.
        op: the neuron's parameters; every field is honoured (forward and gradient rules).
        cumulative: which cumulative potential U to return: "none", "last" (U(T))
            or "all" (U(1..T)).
        record_potential: also return u(1..T) (before the floor rule and the reset).
        bool_spikes: also return the spikes as a bool tensor (``LIFResult.fired``).
        counts: also return the spikes summed over time (``LIFResult.counts``, differentiable;
            the C scan sums them on the way).

    Returns:
        :class:`LIFResult` (spikes, U, u, fired, counts). Gradients reach ``current`` from the
        spikes and counts (through the surrogate), from U and from the recorded u, by the
        hand-written recurrence of :class:`_LIFScanFunction`. Runs as a fused
        kernel where one applies (see :func:`scan_backend`), else as torch ops.
    """
    _check_args(current, op, cumulative)
    if torch.is_grad_enabled() and current.requires_grad:
        spikes, U, u, fired, count = _LIFScanFunction.apply(current, op, cumulative, record_potential,
                                                            bool_spikes, counts)
    else:
        spikes, U, u, _, fired, count = _scan_forward(current, op, cumulative, record_potential, False,
                                                      bool_spikes, counts)
    return LIFResult(spikes, U, u, fired, count)


# ---------------------------------------------------------------- autograd oracle
def _scale_decay(x: Tensor, op: LIF) -> Tensor:
    """decay * x; gradient decay (decay_grad) or 1 (straight through)."""
    y = x * op.decay
    if op.decay_grad:
        return y
    return y.detach() + (x - x.detach())


def _floor_rule(x: Tensor, floored: Tensor, op: LIF) -> Tensor:
    """Set ``floored`` entries to the floor value; gradient 0 there (cut) or 1 (pass)."""
    y = torch.where(floored, op.floor_value, x)
    if op.clamp_grad == "cut":
        return y
    return y.detach() + (x - x.detach())


def _spike(v: Tensor, fired: Tensor, op: LIF) -> Tensor:
    """Heaviside forward; backward d phi/d v from the surrogate's antiderivative.

    The antiderivatives are written independently of :func:`_surrogate_grad`,
    so that the comparison of the two paths checks the derivative formulas too.
    """
    x = v - op.threshold
    if op.surrogate == "straight_through":
        F = v
    elif op.surrogate == "spike_gated":
        F = v * (fired.to(v.dtype) / op.threshold)
    elif op.surrogate == "fast_sigmoid":
        F = x / (1.0 + op.slope * x.abs())
    else:  # arctan
        F = torch.atan((math.pi / 2 * op.slope) * x) / math.pi
    return fired.to(v.dtype) + (F - F.detach())


def _step(
    I_t: Tensor, u_prev: Tensor, U_prev: Tensor, op: LIF
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step; returns (spikes, u, u', U). Autograd derives the straight-through gradient."""
    u = _scale_decay(u_prev, op) + I_t
    lb = op.lower_bound
    if lb is not None and op.clamp_first:
        v = _floor_rule(u, u < lb, op)
    else:
        v = u
    fired = v >= op.threshold if op.spike_when == "ge" else v > op.threshold
    s = _spike(v, fired, op)
    if op.reset == "zero":
        nxt = torch.where(fired, 0.0, v)
        if op.reset_grad == "pass":
            nxt = nxt.detach() + (v - v.detach())
    elif op.reset == "subtract":
        nxt = v - op.threshold * fired.to(v.dtype)
    else:
        nxt = v
    if lb is not None and not op.clamp_first:
        nxt = _floor_rule(nxt, (u < lb) & ~fired, op)
    if op.integrate == "potential":
        U = _scale_decay(U_prev, op) + u
    else:
        U = _scale_decay(U_prev + I_t, op)
    return s, u, nxt, U


def lif_step(
    current_t: Tensor, state: tuple[Tensor, Tensor] | None, op: LIF
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Advance a LIF layer by one time step (step-by-step reference execution).

    Args:
        current_t: input current I(t), float [B, ...].
        state: (u'(t-1), U(t-1)), each [B, ...]; None for the initial zeros.
        op: the neuron's parameters.

    Returns:
        (phi(t), (u'(t), U(t))). Spikes are bit-identical to :func:`lif_scan`'s;
        the result is differentiable with the same gradient rules.
    """
    if state is None:
        zeros = torch.zeros_like(current_t)
        state = (zeros, zeros)
    s, _, nxt, U = _step(current_t, state[0], state[1], op)
    return s, (nxt, U)


def lif_scan_autograd(
    current: Tensor,
    op: LIF,
    *,
    cumulative: Cumulative = "none",
    record_potential: bool = False,
    bool_spikes: bool = False,
    counts: bool = False,
) -> LIFResult:
    """:func:`lif_scan` as a plain loop of :func:`lif_step`; autograd builds the gradient.

    Same arguments and results as :func:`lif_scan`; slow and memory-hungry
    (autograd keeps every float state), meant as a test oracle.
    """
    _check_args(current, op, cumulative)
    zeros = torch.zeros_like(current[0])
    u_prev, U = zeros, zeros
    spikes, us, Us = [], [], []
    for t in range(current.shape[0]):
        s, u, u_prev, U = _step(current[t], u_prev, U, op)
        spikes.append(s)
        us.append(u)
        Us.append(U)
    U_out = None if cumulative == "none" else (U if cumulative == "last" else torch.stack(Us))
    spikes = torch.stack(spikes)
    fired = spikes.detach().to(torch.bool) if bool_spikes else None
    return LIFResult(spikes, U_out, torch.stack(us) if record_potential else None, fired,
                     spikes.sum(0) if counts else None)
