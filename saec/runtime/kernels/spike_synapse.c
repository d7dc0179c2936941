/* Spike-driven synapse forward, weight gradient and input gradient on the CPU: conv2d,
 * conv_transpose2d and linear on a binary input (0/1 spikes), doing work only where the input is 1
 * (the gradients: see the sections at the end of the file).
 *
 * A dense synapse multiplies every input by its weights; with 1-5 % of the inputs
 * at 1 (the SAE's spike trains) that is 20-100x more multiply-adds than needed.
 * Here each row (one image at one time step) is handled in two passes:
 *   1. gather: list the logical indices of the row's ones (a row that fills its memory is
 *      scanned as one run, blocks of inputs tested at once, so zero runs are cheap); the
 *      forward puts them in increasing logical order (the layout of the input does not
 *      matter), the gradients take them in memory order;
 *   2. scatter: start the row's output at the bias (or 0) and, for each active
 *      input, add that input's weights, a contiguous run of out-channel floats:
 *        linear          out[:]          += W^T[i, :]
 *        conv2d          out[oy, ox, :]  += W'[ci, ky, kx, :]   for oy = (iy + ph - ky) / sh, ...
 *        conv_transpose  out[oy, ox, :]  += W'[ci, ky, kx, :]   for oy = iy * sh + ky - ph, ...
 *      with the weights rearranged by the caller so that out channels are innermost
 *      (W' = W permuted to [C_in, kh, kw, C_out]).
 * The input's values are never multiplied: a 1 contributes its weight exactly, so the only
 * rounding is the order of the additions: the bias, then the active inputs in logical order,
 * one after the other, whatever the input's layout, the chunking of the rows or the thread
 * count, on every CPU (plain fp32 additions). That order defines saec's numerics for a layer
 * planned spike-driven (saec.runtime.fastpath, SynapseChoice.forward); it differs from
 * oneDNN's blocked sums by fp32 rounding only.
 *
 * The row's output is accumulated in a small array with out channels innermost
 * ([Ho, Wo, C_out]; a linear's features): the output row itself when its layout is
 * that (channels-last convolutions, a linear's output; for a linear unflattened
 * channels-last the caller permutes W's columns to that order), else a per-call
 * scratch copied out with the output's strides at the end of the row (a contiguous
 * conv output, for a flatten).
 *
 * Parallelism: none here. The caller splits the rows over several Python threads
 * (ctypes releases the GIL), as for the LIF scan (lif_scan.c). Build with
 * -ffp-contract=off (no fused multiply-add: the input gradient's products round on their own).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t kind;            /* 0 linear, 1 conv2d, 2 conv_transpose2d */
    int64_t in_sizes[4];     /* the input row's dimensions, outermost first in memory */
    int64_t in_strides[4];   /* their strides in elements */
    int64_t in_index[4];     /* their strides in the op's logical (row-major) input index */
    int64_t in_row_stride;   /* elements between rows */
    int64_t in_numel;        /* elements per row */
    int64_t H, W;            /* convolutions: input height and width (channel = index / (H W)) */
    int64_t Co, Ho, Wo;      /* out channels (linear: out features), output height and width */
    int64_t kh, kw, sh, sw, ph, pw;  /* kernel size, stride, padding */
    int64_t acc_numel;       /* the accumulator: one output row, out channels innermost */
    int64_t direct;          /* 1: an output row is laid out as the accumulator: add in place */
    int64_t copy_sizes[3];   /* else: the copy's loops, outermost first (output memory order), */
    int64_t copy_acc_strides[3];  /* their strides in the accumulator */
    int64_t copy_out_strides[3];  /* and in the output row */
    int64_t copy_planes;     /* 1: the output row is [Co, Ho, Wo] with dense planes (a transpose) */
    int64_t out_row_stride;  /* elements between output rows */
    int64_t row_step;        /* this call's rows: r0, r0 + row_step, ... below r1 */
    int64_t flat;            /* 1: a row fills its in_numel elements of memory (any order of dimensions) */
    int64_t logical;         /* forward: 1 = add the active inputs in logical index order (layout-free) */
} spike_synapse_params;

#define GATHER_BLOCK 16
#define FLAT_BLOCK 64

/* For rows that fill their memory (p->flat): the logical input index of each memory offset of a
 * row (the same for every row), so that the gather can scan a row as one run of memory; NULL when
 * the rows do not fill their memory (the gather then walks the dimensions) or no memory was had. */
static int32_t *logical_of_offsets(const spike_synapse_params *p)
{
    if (!p->flat) return NULL;
    int32_t *perm = (int32_t *)malloc((size_t)(p->in_numel > 0 ? p->in_numel : 1) * sizeof(int32_t));
    if (!perm) return NULL;
    const int64_t *n = p->in_sizes, *s = p->in_strides, *m = p->in_index;
    for (int64_t i0 = 0; i0 < n[0]; ++i0)
        for (int64_t i1 = 0; i1 < n[1]; ++i1)
            for (int64_t i2 = 0; i2 < n[2]; ++i2)
                for (int64_t i3 = 0; i3 < n[3]; ++i3)
                    perm[i0 * s[0] + i1 * s[1] + i2 * s[2] + i3 * s[3]] =
                        (int32_t)(i0 * m[0] + i1 * m[1] + i2 * m[2] + i3 * m[3]);
    return perm;
}

/* The logical input indices of the nonzero elements of one row, in memory order; with MEM, their
 * offsets in the row's memory too (into mem, for the input gradient, which is written in the
 * input's layout). With perm (logical_of_offsets) the row is scanned as one run of memory, blocks
 * of FLAT_BLOCK elements tested at once; else its dimensions are walked, the innermost in blocks
 * of GATHER_BLOCK. Both visit the elements in memory order. */
#define DEFINE_GATHER(NAME, S, MEM)                                                           \
static int64_t NAME(const spike_synapse_params *p, const S *restrict row, const int32_t *restrict perm, \
                    int32_t *restrict idx, int32_t *restrict mem)                             \
{                                                                                             \
    int64_t count = 0;                                                                        \
    if (perm) {                                                                               \
        const int64_t N = p->in_numel;                                                        \
        int64_t j = 0;                                                                        \
        for (; j + FLAT_BLOCK <= N; j += FLAT_BLOCK) {                                        \
            int any = 0;                                                                      \
            for (int k = 0; k < FLAT_BLOCK; ++k) any |= (row[j + k] != (S)0);                 \
            if (!any) continue;                                                               \
            for (int k = 0; k < FLAT_BLOCK; ++k)                                              \
                if (row[j + k] != (S)0) {                                                     \
                    if (MEM) mem[count] = (int32_t)(j + k);                                   \
                    idx[count++] = perm[j + k];                                               \
                }                                                                             \
        }                                                                                     \
        for (; j < N; ++j)                                                                    \
            if (row[j] != (S)0) {                                                             \
                if (MEM) mem[count] = (int32_t)j;                                             \
                idx[count++] = perm[j];                                                       \
            }                                                                                 \
        return count;                                                                         \
    }                                                                                         \
    const int64_t n0 = p->in_sizes[0], n1 = p->in_sizes[1], n2 = p->in_sizes[2], n3 = p->in_sizes[3]; \
    const int64_t s0 = p->in_strides[0], s1 = p->in_strides[1], s2 = p->in_strides[2], s3 = p->in_strides[3]; \
    const int64_t m0 = p->in_index[0], m1 = p->in_index[1], m2 = p->in_index[2], m3 = p->in_index[3]; \
    for (int64_t i0 = 0; i0 < n0; ++i0)                                                       \
        for (int64_t i1 = 0; i1 < n1; ++i1)                                                   \
            for (int64_t i2 = 0; i2 < n2; ++i2) {                                             \
                const int64_t off = i0 * s0 + i1 * s1 + i2 * s2;                              \
                const S *restrict q = row + off;                                              \
                const int64_t base = i0 * m0 + i1 * m1 + i2 * m2;                             \
                int64_t j = 0;                                                                \
                if (s3 == 1) {                                                                \
                    for (; j + GATHER_BLOCK <= n3; j += GATHER_BLOCK) {                       \
                        int any = 0;                                                          \
                        for (int k = 0; k < GATHER_BLOCK; ++k) any |= (q[j + k] != (S)0);     \
                        if (!any) continue;                                                   \
                        for (int k = 0; k < GATHER_BLOCK; ++k)                                \
                            if (q[j + k] != (S)0) {                                           \
                                if (MEM) mem[count] = (int32_t)(off + j + k);                 \
                                idx[count++] = (int32_t)(base + (j + k) * m3);                \
                            }                                                                 \
                    }                                                                         \
                }                                                                             \
                for (; j < n3; ++j)                                                           \
                    if (q[j * s3] != (S)0) {                                                  \
                        if (MEM) mem[count] = (int32_t)(off + j * s3);                        \
                        idx[count++] = (int32_t)(base + j * m3);                              \
                    }                                                                         \
            }                                                                                 \
    return count;                                                                             \
}

DEFINE_GATHER(gather_f32, float, 0)
DEFINE_GATHER(gather_u8, uint8_t, 0)
DEFINE_GATHER(gather_mem_f32, float, 1)
DEFINE_GATHER(gather_mem_u8, uint8_t, 1)

/* Whether perm (logical_of_offsets) is the identity: memory order is logical order. */
static int is_identity(const int32_t *perm, int64_t n)
{
    for (int64_t j = 0; j < n; ++j)
        if (perm[j] != (int32_t)j) return 0;
    return 1;
}

/* idx[0..count) (distinct logical indices, below the row's in_numel) in increasing order, through
 * a bitmap of the row's inputs (cleared again on the way): count bit sets and in_numel / 64 words. */
static void sort_indices(int32_t *restrict idx, int64_t count, uint64_t *restrict bits, int64_t words)
{
    for (int64_t a = 0; a < count; ++a) bits[idx[a] >> 6] |= (uint64_t)1 << (idx[a] & 63);
    int64_t c = 0;
    for (int64_t w = 0; w < words && c < count; ++w) {
        uint64_t word = bits[w];
        bits[w] = 0;
        while (word) {
            idx[c++] = (int32_t)(w * 64 + __builtin_ctzll(word));
            word &= word - 1;
        }
    }
}

/* out[:] += the weight rows of the active inputs, four at a time: one pass over the
 * accumulator per four inputs, the additions still one after the other in input order. */
static void scatter_linear(const spike_synapse_params *p, const int32_t *restrict idx, int64_t count,
                           const float *restrict wt, float *restrict acc)
{
    const int64_t F = p->Co;
    int64_t a = 0;
    for (; a + 4 <= count; a += 4) {
        const float *restrict w0 = wt + (int64_t)idx[a] * F, *restrict w1 = wt + (int64_t)idx[a + 1] * F;
        const float *restrict w2 = wt + (int64_t)idx[a + 2] * F, *restrict w3 = wt + (int64_t)idx[a + 3] * F;
        for (int64_t o = 0; o < F; ++o) {
            float s = acc[o];
            s = s + w0[o];
            s = s + w1[o];
            s = s + w2[o];
            s = s + w3[o];
            acc[o] = s;
        }
    }
    for (; a < count; ++a) {
        const float *restrict w = wt + (int64_t)idx[a] * F;
        for (int64_t o = 0; o < F; ++o) acc[o] = acc[o] + w[o];
    }
}

/* After a row with `count` active inputs, ask for the next row's output gradient (g_next: [Ho, Wo, Co])
 * to be brought into the caches (L2) ahead of its use, where the windows the backward kernels read
 * cover a good part of a row: they are scattered over it, and each would otherwise wait on memory.
 * A linear's gradient row is read from start to end for each active input, which the hardware
 * prefetcher follows by itself; a sparse row's few windows are not worth the row's traffic. */
static inline void prefetch_next_grad_row(const spike_synapse_params *p, int64_t count, const float *g_next)
{
    const int64_t numel = p->Ho * p->Wo * p->Co;
    if (p->kind == 0 || count * p->kh * p->kw * p->Co < numel / 8) return;
    for (int64_t j = 0; j < numel; j += 64 / sizeof(float)) __builtin_prefetch(g_next + j, 0, 2);
}

/* Along one axis: the output position that kernel tap k of input position i reaches (stride s,
 * padding p), or -1 where it reaches none. The scatter form (kind 2): i * s + k - p; a strided
 * conv2d (kind 1): (i + p - k) / s where that divides. */
static inline int64_t tap_target(int scatter, int64_t i, int64_t k, int64_t s, int64_t p)
{
    if (scatter) return i * s + k - p;
    const int64_t t = i + p - k;
    return (t < 0 || t % s) ? -1 : t / s;
}

/* The kernel window of one active input, as contiguous runs of out-channel floats: for the input
 * with logical index F (channel ci, row iy, column ix), BODY runs once per run with w_off (the
 * run's start in the arranged weights W' [C_in, kh, kw, C_out]), o_off (its start in an output
 * row [Ho, Wo, C_out]) and len (its length in floats), kernel rows first, then columns (the
 * macro's variadic argument is BODY).
 * kind 2, the scatter form: oy = iy * sh + ky - ph (a transposed convolution, and a stride-1
 * conv2d whose kernel the caller flipped, with padding k - 1 - p); kind 1, a strided conv2d:
 * oy = (iy + ph - ky) / sh where that divides. In the scatter form at stride 1, one kernel row's
 * taps land on consecutive output positions: one run of kw * Co floats in both the output and W'.
 * The forward, the weight gradient and the input gradient all walk windows this way. */
#define FOR_EACH_RUN(p, F, ...)                                                              \
    do {                                                                                      \
        const int64_t Co_ = (p)->Co, Ho_ = (p)->Ho, Wo_ = (p)->Wo, kh_ = (p)->kh, kw_ = (p)->kw; \
        const int64_t sh_ = (p)->sh, sw_ = (p)->sw, ph_ = (p)->ph, pw_ = (p)->pw;             \
        const int scatter_ = (p)->kind == 2;                                                  \
        const uint32_t HW32_ = (uint32_t)((p)->H * (p)->W), W32_ = (uint32_t)(p)->W; /* 32-bit: 2-4x cheaper */ \
        const uint32_t f_ = (uint32_t)(F), ci32_ = f_ / HW32_, rem_ = f_ - ci32_ * HW32_, iy32_ = rem_ / W32_; \
        const int64_t ci_ = ci32_, iy_ = iy32_, ix_ = rem_ - iy32_ * W32_;                     \
        const int64_t w_ci_ = ci_ * kh_ * kw_ * Co_;                                          \
        /* stride-1 scatter: the taps kx0 <= kx < kx1 reach 0 <= ox = ix - pw + kx < Wo */     \
        const int64_t kx0_ = pw_ - ix_ > 0 ? pw_ - ix_ : 0;                                   \
        const int64_t kx1_ = Wo_ + pw_ - ix_ < kw_ ? Wo_ + pw_ - ix_ : kw_;                   \
        for (int64_t ky_ = 0; ky_ < kh_; ++ky_) {                                             \
            const int64_t oy_ = tap_target(scatter_, iy_, ky_, sh_, ph_);                     \
            if (oy_ < 0 || oy_ >= Ho_) continue;                                              \
            if (scatter_ && sw_ == 1) {                                                       \
                if (kx1_ <= kx0_) continue;                                                   \
                const int64_t w_off = w_ci_ + (ky_ * kw_ + kx0_) * Co_;                       \
                const int64_t o_off = (oy_ * Wo_ + ix_ - pw_ + kx0_) * Co_;                   \
                const int64_t len = (kx1_ - kx0_) * Co_;                                      \
                __VA_ARGS__;                                                                  \
                continue;                                                                     \
            }                                                                                 \
            for (int64_t kx_ = 0; kx_ < kw_; ++kx_) {                                         \
                const int64_t ox_ = tap_target(scatter_, ix_, kx_, sw_, pw_);                 \
                if (ox_ < 0 || ox_ >= Wo_) continue;                                          \
                const int64_t w_off = w_ci_ + (ky_ * kw_ + kx_) * Co_;                        \
                const int64_t o_off = (oy_ * Wo_ + ox_) * Co_;                                \
                const int64_t len = Co_;                                                      \
                __VA_ARGS__;                                                                         \
            }                                                                                 \
        }                                                                                     \
    } while (0)

/* Each active input adds its weights W'[ci, ky, kx, :] to every output position its kernel
 * window reaches (FOR_EACH_RUN). */
static void scatter_conv(const spike_synapse_params *p, const int32_t *restrict idx, int64_t count,
                         const float *restrict wt, float *restrict acc)
{
    for (int64_t a = 0; a < count; ++a)
        FOR_EACH_RUN(p, idx[a], {
            float *restrict out = acc + o_off;
            const float *restrict w = wt + w_off;
            for (int64_t j = 0; j < len; ++j) out[j] = out[j] + w[j];
        });
}

/* The accumulator's start: the bias of each output element (its out channel), or 0. */
static void start_row(const spike_synapse_params *p, const float *restrict bias, float *restrict acc,
                      int64_t acc_numel)
{
    if (!bias) {
        memset(acc, 0, (size_t)acc_numel * sizeof(float));
    } else if (p->kind == 0) {
        memcpy(acc, bias, (size_t)p->Co * sizeof(float));
    } else {
        const int64_t Co = p->Co;
        for (int64_t pos = 0; pos < p->Ho * p->Wo; ++pos)
            for (int64_t co = 0; co < Co; ++co) acc[pos * Co + co] = bias[co];
    }
}

#define TRANSPOSE_BLOCK 16

/* The accumulator into an output row of another layout, walking the output in memory order
 * (the caller orders the copy's three dimensions by output stride, outermost first).
 * A conv's contiguous output (channel planes) is the common case: [Ho Wo, Co] -> [Co, Ho Wo],
 * transposed in blocks of positions so that the reads stay in a few cache lines. */
static void copy_out(const spike_synapse_params *p, const float *restrict acc, float *restrict out)
{
    if (p->copy_planes) {
        const int64_t P = p->Ho * p->Wo, Co = p->Co, plane = p->copy_out_strides[0];
        for (int64_t p0 = 0; p0 < P; p0 += TRANSPOSE_BLOCK) {
            const int64_t p1 = p0 + TRANSPOSE_BLOCK < P ? p0 + TRANSPOSE_BLOCK : P;
            for (int64_t co = 0; co < Co; ++co) {
                float *restrict dst = out + co * plane;
                for (int64_t q = p0; q < p1; ++q) dst[q] = acc[q * Co + co];
            }
        }
        return;
    }
    const int64_t n0 = p->copy_sizes[0], n1 = p->copy_sizes[1], n2 = p->copy_sizes[2];
    const int64_t a0 = p->copy_acc_strides[0], a1 = p->copy_acc_strides[1], a2 = p->copy_acc_strides[2];
    const int64_t o0 = p->copy_out_strides[0], o1 = p->copy_out_strides[1], o2 = p->copy_out_strides[2];
    for (int64_t i0 = 0; i0 < n0; ++i0)
        for (int64_t i1 = 0; i1 < n1; ++i1) {
            const float *restrict src = acc + i0 * a0 + i1 * a1;
            float *restrict dst = out + i0 * o0 + i1 * o1;
            for (int64_t i2 = 0; i2 < n2; ++i2) dst[i2 * o2] = src[i2 * a2];
        }
}

/* Rows r0, r0 + row_step, ... (below r1) of the input x into the output (threads take
 * interleaved rows: the first time steps, which fire less, are not all one thread's);
 * returns 0, or -1 when scratch memory could not be had (the caller then uses the dense
 * synapse). */
#define DEFINE_FORWARD(NAME, GATHER, S)                                                       \
int NAME(const spike_synapse_params *p, int64_t r0, int64_t r1, const S *x,                   \
         const float *wt, const float *bias, float *out)                                      \
{                                                                                             \
    const int64_t acc_numel = p->acc_numel;                                                   \
    int32_t *idx = (int32_t *)malloc((size_t)(p->in_numel > 0 ? p->in_numel : 1) * sizeof(int32_t)); \
    float *scratch = p->direct ? NULL : (float *)malloc((size_t)acc_numel * sizeof(float));   \
    int32_t *perm = logical_of_offsets(p);                                                    \
    const int64_t words = p->in_numel / 64 + 1;                                               \
    /* logical order from a scan in memory order: sorted, unless memory order is logical order */ \
    const int sort = p->logical && perm && !is_identity(perm, p->in_numel);                   \
    uint64_t *bits = sort ? (uint64_t *)calloc((size_t)words, sizeof(uint64_t)) : NULL;       \
    if (!idx || (!p->direct && !scratch) || (p->flat && !perm) || (sort && !bits)) {          \
        free(idx); free(scratch); free(perm); free(bits); return -1;                          \
    }                                                                                         \
    for (int64_t r = r0; r < r1; r += p->row_step) {                                          \
        float *row_out = out + r * p->out_row_stride;                                         \
        float *acc = p->direct ? row_out : scratch;                                           \
        const int64_t count = GATHER(p, x + r * p->in_row_stride, perm, idx, NULL);           \
        if (bits) sort_indices(idx, count, bits, words);                                      \
        start_row(p, bias, acc, acc_numel);                                                   \
        if (p->kind == 0) scatter_linear(p, idx, count, wt, acc);                             \
        else scatter_conv(p, idx, count, wt, acc);                                            \
        if (!p->direct) copy_out(p, acc, row_out);                                            \
    }                                                                                         \
    free(idx);                                                                                \
    free(scratch);                                                                            \
    free(perm);                                                                               \
    free(bits);                                                                               \
    return 0;                                                                                 \
}

DEFINE_FORWARD(spike_synapse_f32, gather_f32, float)
DEFINE_FORWARD(spike_synapse_u8, gather_u8, uint8_t)

/* ------------------------------------------------------------------ weight gradient
 * The weight gradient of a synapse on binary input, dW = sum over rows of g (x) x, from the
 * active inputs only: the same index walk as the forward's scatter with the roles of the
 * output and the weights swapped. Each active input adds a contiguous run of out-channel
 * gradients into its weight taps (no multiplications: x is 1):
 *   linear          dW^T[i, :]          += g[:]
 *   conv2d          dW'[ci, ky, kx, :]  += g[oy, ox, :]  for oy = (iy + ph - ky) / sh, ...
 *   conv_transpose  dW'[ci, ky, kx, :]  += g[oy, ox, :]  for oy = iy * sh + ky - ph, ...
 * with g's row channels-last ([Ho, Wo, Co]; a linear's [F]) and dW' the weights in the
 * arranged layout of the forward (out channels innermost; a stride-1 conv2d's flipped, so
 * that one kernel row's taps are one contiguous run in dW' and in g). The caller turns dW'
 * back into the parameter's layout. The additions happen in row order, then in the active
 * inputs' memory order: the sums differ from a dense GEMM's only in fp32 summation order.
 *
 * Parallelism: none here. The caller gives each thread its own dW' (rows r0, r0 + row_step,
 * ...) and sums them afterwards. */

/* dW' taps of one row's active inputs += the row's gradient windows (FOR_EACH_RUN). */
static void accumulate_conv(const spike_synapse_params *p, const int32_t *restrict idx, int64_t count,
                            const float *restrict g, float *restrict dw)
{
    for (int64_t a = 0; a < count; ++a)
        FOR_EACH_RUN(p, idx[a], {
            const float *restrict src = g + o_off;
            float *restrict d = dw + w_off;
            for (int64_t j = 0; j < len; ++j) d[j] = d[j] + src[j];
        });
}

/* dW^T rows of one row's active inputs += the row's gradient [F]. */
static void accumulate_linear(const spike_synapse_params *p, const int32_t *restrict idx, int64_t count,
                              const float *restrict g, float *restrict dw)
{
    const int64_t F = p->Co;
    for (int64_t a = 0; a < count; ++a) {
        float *restrict d = dw + (int64_t)idx[a] * F;
        for (int64_t o = 0; o < F; ++o) d[o] = d[o] + g[o];
    }
}

/* Rows r0, r0 + row_step, ... (below r1) of the input x and the output gradient g (row stride
 * out_row_stride, each row channels-last) added into dw (the arranged weight layout, float32,
 * not cleared here); returns 0, or -1 when scratch memory could not be had. */
#define DEFINE_WEIGHT_GRAD(NAME, GATHER, S)                                                   \
int NAME(const spike_synapse_params *p, int64_t r0, int64_t r1, const S *x, const float *g, float *dw) \
{                                                                                             \
    int32_t *idx = (int32_t *)malloc((size_t)(p->in_numel > 0 ? p->in_numel : 1) * sizeof(int32_t)); \
    int32_t *perm = logical_of_offsets(p);                                                    \
    if (!idx || (p->flat && !perm)) { free(idx); free(perm); return -1; }                     \
    for (int64_t r = r0; r < r1; r += p->row_step) {                                          \
        const float *g_row = g + r * p->out_row_stride;                                       \
        const int64_t count = GATHER(p, x + r * p->in_row_stride, perm, idx, NULL);           \
        if (r + p->row_step < r1) prefetch_next_grad_row(p, count, g_row + p->row_step * p->out_row_stride); \
        if (p->kind == 0) accumulate_linear(p, idx, count, g_row, dw);                        \
        else accumulate_conv(p, idx, count, g_row, dw);                                       \
    }                                                                                         \
    free(idx);                                                                                \
    free(perm);                                                                               \
    return 0;                                                                                 \
}

DEFINE_WEIGHT_GRAD(spike_weight_grad_f32, gather_f32, float)
DEFINE_WEIGHT_GRAD(spike_weight_grad_u8, gather_u8, uint8_t)


/* ------------------------------------------------------------------ input gradient
 * The input gradient of a synapse whose input's gradient is read only where the input is 1 (its
 * producer is a spike_gated LIF layer: the surrogate d phi / d v is zero wherever the neuron did not
 * fire, so the rest of dL/dx never reaches anything). At each active input it is the dot product of
 * the input's weights with the output-gradient window they reach (the forward's window, read
 * instead of written):
 *   linear          dx[i]           = sum_o W^T[i, o] g[o]
 *   convolutions    dx[ci, iy, ix]  = sum over the window's runs of W'[ci, ky, kx, :] . g[oy, ox, :]
 * and 0 everywhere else. Each dot product sums in 2 DOT_LANES interleaved partial sums (vectorised,
 * fixed order; see dot_run), added up in a fixed order at the end: the values differ from a dense transposed
 * product's only in fp32 summation order. dx is written in the input's own layout (the gather's
 * memory offsets), each row cleared first.
 *
 * Parallelism: none here; the caller gives each thread its own rows (they write disjoint rows). */

#define DOT_LANES 16

/* Sixteen floats as one value (GCC / Clang vector extension: one AVX-512 register, two AVX ones, ...);
 * element-wise arithmetic, no fused multiply-add (-ffp-contract=off). */
typedef float vf16 __attribute__((vector_size(DOT_LANES * sizeof(float))));

static inline vf16 load16(const float *p)
{
    vf16 v;
    memcpy(&v, p, sizeof v);  /* an unaligned load */
    return v;
}

/* One dot product's partial sums: two vectors of DOT_LANES (alternate blocks: two independent
 * chains of additions) and a scalar for what is left of a run. */
typedef struct {
    vf16 even, odd;
    float tail;
} dot_sums;

static inline void dot_run(dot_sums *d, const float *restrict a, const float *restrict b, int64_t n)
{
    int64_t j = 0;
    for (; j + 2 * DOT_LANES <= n; j += 2 * DOT_LANES) {
        d->even = d->even + load16(a + j) * load16(b + j);
        d->odd = d->odd + load16(a + j + DOT_LANES) * load16(b + j + DOT_LANES);
    }
    if (j + DOT_LANES <= n) {
        d->even = d->even + load16(a + j) * load16(b + j);
        j += DOT_LANES;
    }
    for (; j < n; ++j) d->tail = d->tail + a[j] * b[j];
}

/* The partial sums added up in a fixed order. */
static inline float dot_total(const dot_sums *d)
{
    const vf16 both = d->even + d->odd;
    float t = 0.0f;
    for (int k = 0; k < DOT_LANES; ++k) t = t + both[k];
    return t + d->tail;
}

/* dx at one row's active inputs (memory offsets mem[a], logical indices idx[a]). */
static void input_grad_row(const spike_synapse_params *p, const int32_t *restrict idx,
                           const int32_t *restrict mem, int64_t count, const float *restrict wt,
                           const float *restrict g, float *restrict dx)
{
    for (int64_t a = 0; a < count; ++a) {
        dot_sums d = {{0}, {0}, 0.0f};
        if (p->kind == 0) {
            dot_run(&d, wt + (int64_t)idx[a] * p->Co, g, p->Co);
        } else {
            FOR_EACH_RUN(p, idx[a], dot_run(&d, wt + w_off, g + o_off, len));
        }
        dx[mem[a]] = dot_total(&d);
    }
}

/* Rows r0, r0 + row_step, ... (below r1): the input x (its walk in p), the output gradient g (row
 * stride out_row_stride, each row channels-last) and the arranged weights wt (as the forward's)
 * give dx, laid out as x (each row dense, row stride in_row_stride): cleared, then written at the
 * active inputs; returns 0, or -1 when scratch memory could not be had. */
#define DEFINE_INPUT_GRAD(NAME, GATHER, S)                                                    \
int NAME(const spike_synapse_params *p, int64_t r0, int64_t r1, const S *x, const float *g,  \
         const float *wt, float *dx)                                                          \
{                                                                                             \
    const size_t n = (size_t)(p->in_numel > 0 ? p->in_numel : 1);                             \
    int32_t *idx = (int32_t *)malloc(n * sizeof(int32_t));                                    \
    int32_t *mem = (int32_t *)malloc(n * sizeof(int32_t));                                    \
    int32_t *perm = logical_of_offsets(p);                                                    \
    if (!idx || !mem || (p->flat && !perm)) { free(idx); free(mem); free(perm); return -1; }  \
    for (int64_t r = r0; r < r1; r += p->row_step) {                                          \
        float *dx_row = dx + r * p->in_row_stride;                                            \
        memset(dx_row, 0, (size_t)p->in_numel * sizeof(float));                               \
        const int64_t count = GATHER(p, x + r * p->in_row_stride, perm, idx, mem);            \
        if (r + p->row_step < r1) prefetch_next_grad_row(p, count, g + (r + p->row_step) * p->out_row_stride); \
        input_grad_row(p, idx, mem, count, wt, g + r * p->out_row_stride, dx_row);            \
    }                                                                                         \
    free(idx);                                                                                \
    free(mem);                                                                                \
    free(perm);                                                                               \
    return 0;                                                                                 \
}

DEFINE_INPUT_GRAD(spike_input_grad_f32, gather_mem_f32, float)
DEFINE_INPUT_GRAD(spike_input_grad_u8, gather_mem_u8, uint8_t)
