"""The fused LIF scan on CUDA, as Triton kernels (optional: used when Triton imports).

One program handles ``BLOCK`` neurons and walks all T steps with the state in
registers, so a layer costs one launch instead of ~10 elementwise launches per
step. Same arithmetic as the torch-op scan and the C kernel (``lif_scan.c``):
``decay * x`` and ``+`` rounded separately (``enable_fp_fusion=False``: no FMA),
so spikes are bit-identical. float32 only (Triton passes Python scalars as
float32, which is what torch does for a float32 tensor); other dtypes use torch ops.

With ``TRITON_INTERPRET=1`` set before Triton is imported, the same kernels run
on CPU tensors (numpy), which is how the tests check them without a GPU.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import torch
from torch import Tensor

BLOCK = 512


class LIFParams(SimpleNamespace):
    """The kernel's parameters; same fields as ``cpu_lif.LIFParams``."""


@functools.lru_cache(maxsize=1)
def _kernels():
    try:
        import triton
        import triton.language as tl
    except Exception:  # noqa: BLE001 - any import failure means: no Triton here
        return None

    @triton.jit
    def lif_forward(cur, spikes, U_out, u_rec, v_rec, keep, gate, fired, T, N,
                    decay, thr, lb, fv,
                    SPIKE_GE: tl.constexpr, RESET: tl.constexpr, FLOOR: tl.constexpr,
                    FLOOR_OVERLAPS: tl.constexpr, INTEGRATE: tl.constexpr, CUMULATIVE: tl.constexpr,
                    RESET_CUT: tl.constexpr, FLOOR_CUT: tl.constexpr, GATE_MODE: tl.constexpr,
                    HAS_U: tl.constexpr, HAS_V: tl.constexpr, HAS_KEEP: tl.constexpr,
                    HAS_FIRED: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < N
        up = tl.zeros([BLOCK], dtype=tl.float32)
        Ur = tl.zeros([BLOCK], dtype=tl.float32)
        for t in range(0, T):
            at = t * N + offs
            current = tl.load(cur + at, mask=inside, other=0.0)
            u = up * decay
            u = u + current
            below = u < lb
            if FLOOR == 1:
                v = tl.where(below, fv, u)
            else:
                v = u
            if SPIKE_GE:
                f = v >= thr
            else:
                f = v > thr
            if RESET == 0:
                nxt = tl.where(f, 0.0, v)
            elif RESET == 1:
                nxt = tl.where(f, v - thr, v)
            else:
                nxt = v
            if FLOOR == 2:
                if FLOOR_OVERLAPS:
                    below = below & (f == 0)
                nxt = tl.where(below, fv, nxt)
            up = nxt
            tl.store(spikes + at, f.to(tl.float32), mask=inside)
            if HAS_U:
                tl.store(u_rec + at, u, mask=inside)
            if HAS_V:
                tl.store(v_rec + at, v, mask=inside)
            if HAS_FIRED:
                tl.store(fired + at, f.to(tl.int8), mask=inside)
            # (below is only read where a floor rule exists: the cut flags and gate modes 2 and 3 imply one)
            if HAS_KEEP:
                if RESET_CUT and FLOOR_CUT:
                    k = (f == 0) & (below == 0)
                elif RESET_CUT:
                    k = f == 0
                else:
                    k = below == 0
                tl.store(keep + at, k.to(tl.int8), mask=inside)
            if GATE_MODE == 1:
                tl.store(gate + at, f.to(tl.int8), mask=inside)
            elif GATE_MODE == 2:
                tl.store(gate + at, (f & (below == 0)).to(tl.int8), mask=inside)
            elif GATE_MODE == 3:
                tl.store(gate + at, (below == 0).to(tl.int8), mask=inside)
            if CUMULATIVE != 0:
                if INTEGRATE == 0:
                    Un = Ur * decay
                    Un = Un + u
                else:
                    Un = Ur + current
                    Un = Un * decay
                Ur = Un
                if CUMULATIVE == 2:
                    tl.store(U_out + at, Un, mask=inside)
        if CUMULATIVE == 1:
            tl.store(U_out + offs, Ur, mask=inside)

    @triton.jit
    def lif_backward(grad, g_spk, spk_tstride, sg_value, sg_tensor, gate, g_u, u_tstride, g_U, keep,
                     T, N, dg,
                     HAS_SPK: tl.constexpr, HAS_SG: tl.constexpr, HAS_GATE: tl.constexpr,
                     HAS_GU_SMALL: tl.constexpr, CUMULATIVE: tl.constexpr, U_MEMBRANE: tl.constexpr,
                     HAS_KEEP: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < N
        carry = tl.zeros([BLOCK], dtype=tl.float32)
        GUr = tl.zeros([BLOCK], dtype=tl.float32)
        for i in range(0, T):
            t = T - 1 - i
            at = t * N + offs
            g = tl.zeros([BLOCK], dtype=tl.float32)
            GU = tl.zeros([BLOCK], dtype=tl.float32)
            if CUMULATIVE == 2:
                GU = dg * GUr  # 0 at the last step
                GU = tl.load(g_U + at, mask=inside, other=0.0) + GU
                GUr = GU
            elif CUMULATIVE == 1:
                GU = tl.where(i == 0, tl.load(g_U + offs, mask=inside, other=0.0), dg * GUr)
                GUr = GU
            if HAS_SPK:
                gs = tl.load(g_spk + t * spk_tstride + offs, mask=inside, other=0.0)
                if HAS_SG:
                    g = gs * tl.load(sg_tensor + at, mask=inside, other=0.0)
                else:
                    g = gs * sg_value
                if HAS_GATE:
                    g = tl.where(tl.load(gate + at, mask=inside, other=0) != 0, g, 0.0)
            if HAS_GU_SMALL:
                g = g + tl.load(g_u + t * u_tstride + offs, mask=inside, other=0.0)
            if CUMULATIVE != 0:
                if U_MEMBRANE:
                    g = g + GU
            through = dg * carry  # carry is 0 at the last step
            if HAS_KEEP:
                g = tl.where(tl.load(keep + at, mask=inside, other=0) != 0, g + through, g)
            else:
                g = g + through
            carry = g
            if CUMULATIVE != 0:
                if U_MEMBRANE:
                    tl.store(grad + at, g, mask=inside)
                else:
                    tl.store(grad + at, g + dg * GU, mask=inside)
            else:
                tl.store(grad + at, g, mask=inside)

    return SimpleNamespace(forward=lif_forward, backward=lif_backward, cdiv=triton.cdiv)


def supports(t: Tensor) -> bool:
    """Whether the Triton kernels can run on ``t`` (CUDA float32, Triton importable)."""
    if os.environ.get("SAEC_NATIVE_KERNELS", "1") == "0":
        return False
    return t.is_cuda and t.dtype == torch.float32 and _kernels() is not None


def _int8(t: Tensor | None, dummy: Tensor) -> Tensor:
    """Triton has no bool pointers worth trusting; a bool tensor is written through an int8 view."""
    return dummy if t is None else t.view(torch.int8)


def forward(params: LIFParams, current: Tensor, spikes: Tensor, U: Tensor | None, u: Tensor | None,
            v: Tensor | None, keep: Tensor | None, gate: Tensor | None, fired: Tensor | None) -> None:
    """Run the forward scan; every tensor is contiguous [T, N] (U: [N] for ``cumulative`` "last")."""
    k = _kernels()
    p = params
    dummy = spikes
    grid = (k.cdiv(p.N, BLOCK),)
    k.forward[grid](
        current, spikes, dummy if U is None else U, dummy if u is None else u, dummy if v is None else v,
        _int8(keep, dummy), _int8(gate, dummy), _int8(fired, dummy), p.T, p.N,
        float(p.decay), float(p.threshold), float(p.lower_bound), float(p.floor_value),
        SPIKE_GE=p.spike_ge, RESET=p.reset, FLOOR=p.floor, FLOOR_OVERLAPS=p.floor_overlaps_spike,
        INTEGRATE=p.integrate, CUMULATIVE=p.cumulative, RESET_CUT=p.reset_cut, FLOOR_CUT=p.floor_cut,
        GATE_MODE=p.gate_mode, HAS_U=u is not None, HAS_V=v is not None, HAS_KEEP=keep is not None,
        HAS_FIRED=fired is not None, BLOCK=BLOCK, **_launch_options())


def backward(params: LIFParams, grad: Tensor, g_spikes: Tensor | None, sg_value: float, sg: Tensor | None,
             gate: Tensor | None, g_u: Tensor | None, g_U: Tensor | None, keep: Tensor | None) -> None:
    """Run the reverse recurrence into ``grad`` [T, N] (see ``cpu_lif.backward``)."""
    k = _kernels()
    p = params
    dummy = grad
    grid = (k.cdiv(p.N, BLOCK),)
    k.backward[grid](
        grad, dummy if g_spikes is None else g_spikes, 0 if g_spikes is None else g_spikes.stride(0),
        float(sg_value), dummy if sg is None else sg, _int8(gate, dummy),
        dummy if g_u is None else g_u, 0 if g_u is None else g_u.stride(0),
        dummy if g_U is None else g_U, _int8(keep, dummy), p.T, p.N, float(p.grad_decay),
        HAS_SPK=g_spikes is not None, HAS_SG=sg is not None, HAS_GATE=gate is not None,
        HAS_GU_SMALL=g_u is not None, CUMULATIVE=p.cumulative if g_U is not None else 0,
        U_MEMBRANE=p.integrate == 0, HAS_KEEP=keep is not None, BLOCK=BLOCK, **_launch_options())


def _launch_options() -> dict:
    # The interpreter (TRITON_INTERPRET=1) rejects compiler options.
    return {} if os.environ.get("TRITON_INTERPRET") == "1" else {"enable_fp_fusion": False}
