"""The fused LIF scan on CUDA, as Triton kernels (optional: used when Triton imports).

The kernels themselves are in :mod:`saec.runtime.kernels.lif_triton`; this module
launches them.

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
    """The compiled-on-launch kernels (:mod:`saec.runtime.kernels.lif_triton`), or None without Triton."""
    from saec.runtime.kernels import lif_triton

    if not lif_triton.AVAILABLE:
        return None
    return SimpleNamespace(forward=lif_triton.lif_forward, backward=lif_triton.lif_backward,
                           cdiv=lif_triton.triton.cdiv)


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
