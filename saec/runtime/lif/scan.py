"""The fast LIF scan: all T steps of one layer at once, with a hand-written backward.

:func:`lif_scan` runs the recurrence of :mod:`saec.runtime.lif` (the package
docstring has the equations and the gradient rules) as one fused kernel per
layer where one applies, else as torch ops (:mod:`saec.runtime.lif.dispatch`
chooses, by the ``backend`` argument). Backward is a reverse linear recurrence
(:class:`_LIFScanFunction`) that needs only the spikes and a few bool masks,
not the float states. It performs the same floating-point operations in the
same order as :mod:`saec.runtime.lif.reference`, so spikes are bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from saec.compiler.ops import LIF
from saec.runtime import pool as buffers
from saec.runtime.kernels import cpu_lif
from saec.runtime.lif import dispatch
from saec.runtime.lif.dispatch import ScanBackend
from saec.runtime.lif.result import Cumulative, LIFResult, check_args

_MEMBRANE_SURROGATES = ("fast_sigmoid", "arctan")


class _Saved(NamedTuple):
    keep: Tensor | None = None
    gate: Tensor | None = None
    v: Tensor | None = None


def _scan_forward(
    current: Tensor, op: LIF, cumulative: str, record_potential: bool, for_backward: bool,
    bool_spikes: bool, counts: bool, backend: ScanBackend,
) -> tuple[Tensor, Tensor | None, Tensor | None, _Saved, Tensor | None, Tensor | None]:
    """Run the recurrence; return spikes, U, u, what backward needs, the bool spikes and the
    spike counts (summed over time)."""
    kernel = dispatch.kernel_for(current, backend)
    if kernel is not None:
        return _scan_forward_kernel(kernel, current, op, cumulative, record_potential, for_backward,
                                    bool_spikes, counts)
    spikes, U, u, saved = _scan_forward_torch(current, op, cumulative, record_potential, for_backward)
    fired = spikes.to(torch.bool) if bool_spikes else None
    return spikes, U, u, _Saved(**saved), fired, spikes.sum(0) if counts else None


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
    params = dispatch.kernel_params(kernel, op, T, x[0].numel(), cumulative, for_backward, x.dtype)
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
    rounding ones, ``decay * x`` and ``+``, which :func:`~saec.runtime.lif.reference.lif_step` repeats in
    the same order.
    """
    scan = _TorchScan.start(current, op, cumulative, record_potential, for_backward)
    for t in range(current.shape[0]):
        scan.step(t, current[t])
    U_out = scan.U_all if cumulative == "all" else scan.U_run
    saved: dict[str, Tensor | None] = {"keep": None, "gate": None, "v": None}
    if for_backward:
        saved = _backward_masks(op, scan.spikes, scan.floored)
        if scan.keep_v:
            saved["v"] = scan.v_store if scan.v_store is not None else scan.u_store
    return scan.spikes, U_out, scan.u_all, saved


@dataclass
class _TorchScan:
    """One torch-op scan: the op's rules decoded, the outputs over T and the per-step scratch."""

    op: LIF
    floor_first: bool  # the floor rule runs before the spike test
    floor_after: bool  # ... after it (where the neuron did not spike)
    floor_overlaps_spike: bool  # spiking and the floor rule can coincide (floor above threshold)
    keep_v: bool  # backward needs v (a surrogate that depends on it)
    spikes: Tensor
    u_all: Tensor | None  # u(1..T), returned (record_potential)
    u_store: Tensor | None  # where u(t) is written over T (u_all, or kept for backward), else None
    v_store: Tensor | None  # v(1..T) for backward when the floor rule runs first
    floored: Tensor | None  # bool: where the floor rule applied (a cut clamp_grad's backward)
    U_all: Tensor | None
    U_run: Tensor | None
    up: Tensor  # u'(t-1)
    ubuf: Tensor
    vbuf: Tensor | None
    below: Tensor | None  # float 0/1: where the floor rule applies this step

    @classmethod
    def start(cls, current: Tensor, op: LIF, cumulative: str, record_potential: bool,
              for_backward: bool) -> "_TorchScan":
        shape = current.shape[1:]
        like = dict(dtype=current.dtype, device=current.device)
        floor = op.lower_bound is not None
        floor_first = floor and op.clamp_first
        floor_after = floor and not op.clamp_first
        keep_v = for_backward and op.surrogate in _MEMBRANE_SURROGATES
        u_all = torch.empty(current.shape, **like) if record_potential else None
        return cls(
            op=op, floor_first=floor_first, floor_after=floor_after,
            floor_overlaps_spike=floor_after and op.lower_bound > op.threshold, keep_v=keep_v,
            spikes=torch.empty(current.shape, **like), u_all=u_all,
            # v is u unless the floor rule runs first; then it needs its own storage.
            u_store=u_all if u_all is not None else (
                torch.empty(current.shape, **like) if keep_v and not floor_first else None),
            v_store=torch.empty(current.shape, **like) if keep_v and floor_first else None,
            floored=torch.empty(current.shape, dtype=torch.bool, device=current.device)
            if for_backward and floor and op.clamp_grad == "cut" else None,
            U_all=torch.empty(current.shape, **like) if cumulative == "all" else None,
            U_run=torch.zeros(shape, **like) if cumulative != "none" else None,
            up=torch.zeros(shape, **like), ubuf=torch.empty(shape, **like),
            vbuf=torch.empty(shape, **like) if floor_first else None,
            below=torch.empty(shape, **like) if floor else None,
        )

    def step(self, t: int, I_t: Tensor) -> None:
        """Time step t: u(t), v(t), phi(t), u'(t) and U(t) into their buffers."""
        op, up, below, floored = self.op, self.up, self.below, self.floored
        decay, thr, lb, fv = op.decay, op.threshold, op.lower_bound, op.floor_value
        u = self.u_store[t] if self.u_store is not None else self.ubuf
        torch.mul(up, decay, out=u)
        u.add_(I_t)
        if self.floor_first:
            torch.lt(u, lb, out=below)
            v = self.v_store[t] if self.v_store is not None else self.vbuf
            torch.addcmul(u, u, below, value=-1.0, out=v)  # 0 where below, else u
            v.add_(below, alpha=fv)
            if floored is not None:
                floored[t].copy_(below)
        else:
            v = u
        s = self.spikes[t]
        (torch.ge if op.spike_when == "ge" else torch.gt)(v, thr, out=s)
        if op.reset == "zero":
            torch.addcmul(v, v, s, value=-1.0, out=up)
        elif op.reset == "subtract":
            torch.add(v, s, alpha=-thr, out=up)
        else:
            up.copy_(v)
        if self.floor_after:
            torch.lt(u, lb, out=below)
            if self.floor_overlaps_spike:
                below.addcmul_(below, s, value=-1.0)
            # Where not spiked u' is u, so u' - u'*below + fv*below sets the floor exactly.
            up.addcmul_(up, below, value=-1.0)
            up.add_(below, alpha=fv)
            if floored is not None:
                floored[t].copy_(below)
        if self.U_run is not None:
            self._integrate(t, u, I_t)

    def _integrate(self, t: int, u: Tensor, I_t: Tensor) -> None:
        """U(t) from U(t-1) and u(t) (integrate="potential") or I(t) ("current")."""
        U_all, U_run, decay = self.U_all, self.U_run, self.op.decay
        U_t = U_all[t] if U_all is not None else U_run
        U_prev = U_all[t - 1] if (U_all is not None and t > 0) else U_run
        if self.op.integrate == "potential":
            torch.mul(U_prev, decay, out=U_t)
            U_t.add_(u)
        else:
            torch.add(U_prev, I_t, out=U_t)
            U_t.mul_(decay)


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
    step (:func:`~saec.runtime.lif.reference.lif_scan_autograd`). Backward reads
    the masks through a uint8 view: CPU arithmetic with bool operands is several
    times slower.
    """

    @staticmethod
    def forward(ctx, current, op, cumulative, record_potential, bool_spikes, counts, backend):
        ctx.set_materialize_grads(False)
        spikes, U, u, saved, fired, count = _scan_forward(current, op, cumulative, record_potential, True,
                                                          bool_spikes, counts, backend)
        ctx.op, ctx.cumulative, ctx.pool, ctx.backend = op, cumulative, buffers.active(), backend
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
            return None, None, None, None, None, None, None
        ref = next(g for g in (g_spikes, g_U, g_u) if g is not None)
        kernel = dispatch.kernel_for(ref, ctx.backend)
        if kernel is not None:
            grad = _scan_backward_kernel(kernel, ctx, g_spikes, g_U, g_u, keep, gate, v)
        else:
            grad = _scan_backward_torch(ctx, g_spikes, g_U, g_u, keep, gate, v)
        return grad, None, None, None, None, None, None


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
    params = dispatch.kernel_params(kernel, op, T, N, ctx.cumulative, True, ref.dtype)
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
    backend: ScanBackend = "auto",
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
        backend: "auto" (a fused kernel where one applies, else torch ops) or "torch" (always
            torch ops); see :mod:`saec.runtime.lif.dispatch`. Same results either way.

    Returns:
        :class:`LIFResult` (spikes, U, u, fired, counts). Gradients reach ``current`` from the
        spikes and counts (through the surrogate), from U and from the recorded u, by the
        hand-written recurrence of :class:`_LIFScanFunction`.

    Raises:
        TypeError, ValueError: a wrong op record, ``cumulative`` or ``backend``, or a current
            that is not float [T, B, ...].
    """
    check_args(current, op, cumulative)
    dispatch.check_backend(backend)
    if torch.is_grad_enabled() and current.requires_grad:
        spikes, U, u, fired, count = _LIFScanFunction.apply(current, op, cumulative, record_potential,
                                                            bool_spikes, counts, backend)
    else:
        spikes, U, u, _, fired, count = _scan_forward(current, op, cumulative, record_potential, False,
                                                      bool_spikes, counts, backend)
    return LIFResult(spikes, U, u, fired, count)
