"""The Triton kernels of the fused LIF scan, defined where Triton imports (``AVAILABLE``).

:mod:`saec.runtime.kernels.cuda_lif` launches them and states the arithmetic
contract (the same operations in the same order as the torch-op scan and
``lif_scan.c``; compiled without FMA). Kept apart so that the launcher stays
importable, and its functions short, on machines without Triton. With
``TRITON_INTERPRET=1`` set before this module is first imported, they run on CPU
tensors (the tests' way of checking them without a GPU).
"""

try:
    import triton
    import triton.language as tl
except Exception:  # noqa: BLE001 - any import failure means: no Triton here
    triton = tl = None

#: True when Triton imported and the kernels below are defined.
AVAILABLE = triton is not None

if AVAILABLE:
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
