/* Fused LIF scan over T time steps on the CPU: one pass over memory per layer.
 *
 * The Python fallback (saec/runtime/lif.py, _scan_forward_python) runs ~10
 * elementwise torch ops per time step, each a full pass over [B, ...]. Here a
 * block of neurons keeps its state (u', U) in a small local array while the
 * loop walks t, so each element of the current is read once and each output
 * written once.
 *
 * Same answers: the only rounding operations are `decay * x` and `+`, done in
 * the same order as lif_step / the Python scan, in the tensor's own dtype
 * (torch casts a Python scalar to the tensor's dtype). Build with
 * -ffp-contract=off so that no multiply-add is fused into an FMA (that would
 * round once instead of twice and could flip a spike near the threshold).
 *
 * Parallelism: none here. The caller splits [0, N) into ranges and calls from
 * several Python threads (ctypes releases the GIL), so no second OpenMP
 * runtime is loaded next to torch's.
 *
 * Layout: every [T, N] array is contiguous, element (t, n) at t * N + n, except
 * that the upstream gradients may have a time stride of 0 (expanded tensors).
 */
#include <stdint.h>

typedef struct {
    int64_t T;                  /* time steps */
    int64_t N;                  /* neurons x batch, the row length */
    double decay;               /* membrane / cumulative decay per step */
    double threshold;
    double lower_bound;         /* floor rule: below this ... */
    double floor_value;         /* ... the potential is set to this */
    double grad_decay;          /* backward factor per step: decay or 1 */
    int32_t spike_ge;           /* 1: spike when v >= threshold; 0: v > threshold */
    int32_t reset;              /* 0 zero, 1 subtract, 2 none */
    int32_t floor;              /* 0 no floor rule, 1 before the spike test, 2 after it */
    int32_t floor_overlaps_spike; /* floor after the test and lower_bound > threshold */
    int32_t integrate;          /* 0: U += u (potential); 1: U = decay * (U + I) (current) */
    int32_t cumulative;         /* 0 none, 1 last U(T) into U[n], 2 all U(t) into U[t, n] */
    int32_t reset_cut;          /* keep = 0 at a spike */
    int32_t floor_cut;          /* keep = 0 where the floor rule applied */
    int32_t gate_mode;          /* 0 none, 1 fired, 2 fired and not floored, 3 not floored */
} lif_params;

#define BLOCK 1024     /* backward: neurons per block */
#define FBLOCK 2048    /* forward: neurons per block (longer unit-stride runs per time step) */

/* Forward. The body is an always-inline function whose four shape-giving flags
 * (reset, floor mode, spike test, integration) are arguments; the dispatcher
 * below calls it with literal constants, so the compiler emits one straight-line,
 * vectorised loop per combination instead of one loop full of run-time selects
 * (which it would not vectorise: 8 ns per neuron-step before, see the lever log).
 * Optional outputs are written by separate small loops from block-local arrays. */
#define DEFINE_FORWARD(NAME, S)                                                              \
static inline __attribute__((always_inline)) void NAME##_body(                               \
          const lif_params *p, int64_t n0, int64_t n1, const S *restrict cur,                \
          S *restrict spikes, S *restrict U_out, S *restrict u_rec, S *restrict v_rec,       \
          uint8_t *restrict keep, uint8_t *restrict gate, uint8_t *restrict fired_out,       \
          S *restrict count_out,                                                             \
          const int reset, const int floor_mode, const int spike_ge, const int integrate)    \
{                                                                                            \
    /* Every parameter in a local: the uint8_t stores below may alias *p (char types alias    \
       anything), which would force a reload per element and block vectorisation. */         \
    const int64_t T = p->T, N = p->N;                                                        \
    const S decay = (S)p->decay, thr = (S)p->threshold;                                      \
    const S lb = (S)p->lower_bound, fv = (S)p->floor_value;                                  \
    const int floor_first = floor_mode == 1, floor_after = floor_mode == 2;                  \
    const int overlaps = p->floor_overlaps_spike, cumulative = p->cumulative;                \
    const int reset_cut = p->reset_cut, floor_cut = p->floor_cut, gate_mode = p->gate_mode;  \
    const int need_flags = keep || gate || fired_out;                                        \
    /* block-local state and per-step values; the flags are kept as S 0/1 (the spikes      \
       themselves, tb): a uint8_t store in the main loop stops it from vectorising */        \
    S up[FBLOCK], Ur[FBLOCK], tu[FBLOCK], tv[FBLOCK], tb[FBLOCK], cnt[FBLOCK];               \
    for (int64_t nb = n0; nb < n1; nb += FBLOCK) {                                           \
        const int64_t m = (n1 - nb) < FBLOCK ? (n1 - nb) : FBLOCK;                           \
        for (int64_t j = 0; j < m; ++j) { up[j] = (S)0; Ur[j] = (S)0; cnt[j] = (S)0; }       \
        for (int64_t t = 0; t < T; ++t) {                                                    \
            const int64_t row = t * N + nb;                                                  \
            const S *restrict I_t = cur + row;                                               \
            S *restrict s_t = spikes + row;                                                  \
            for (int64_t j = 0; j < m; ++j) {                                                \
                const S I = I_t[j];                                                          \
                S u = up[j] * decay;                                                         \
                u = u + I;                                                                   \
                const int below = (floor_mode != 0) & (u < lb);                              \
                const S v = (floor_first & below) ? fv : u;                                  \
                const int f = spike_ge ? (v >= thr) : (v > thr);                             \
                S nxt;                                                                       \
                if (reset == 0) nxt = f ? (S)0 : v;                                          \
                else if (reset == 1) { const S v_sub = v - thr; nxt = f ? v_sub : v; }       \
                else nxt = v;                                                                \
                const int floored_after = floor_after & below & !(overlaps & f);             \
                if (floor_after) nxt = floored_after ? fv : nxt;                             \
                up[j] = nxt;                                                                 \
                const S spike = f ? (S)1 : (S)0;                                             \
                s_t[j] = spike;                                                              \
                cnt[j] = cnt[j] + spike;  /* exact: integers far below 2^24 */               \
                tu[j] = u;                                                                   \
                tv[j] = v;                                                                   \
                tb[j] = (floor_first ? below : floored_after) ? (S)1 : (S)0;                 \
                if (integrate == 0) { S Up = Ur[j] * decay; Ur[j] = Up + u; }                \
                else { S Uc = Ur[j] + I; Ur[j] = Uc * decay; }                               \
            }                                                                                \
            if (u_rec) for (int64_t j = 0; j < m; ++j) u_rec[row + j] = tu[j];               \
            if (v_rec) for (int64_t j = 0; j < m; ++j) v_rec[row + j] = tv[j];               \
            if (need_flags) {                                                                \
                if (fired_out)                                                               \
                    for (int64_t j = 0; j < m; ++j) fired_out[row + j] = (uint8_t)(s_t[j] != (S)0); \
                if (keep)                                                                    \
                    for (int64_t j = 0; j < m; ++j)                                          \
                        keep[row + j] = (uint8_t)(!(reset_cut & (s_t[j] != (S)0))            \
                                                  & !(floor_cut & (tb[j] != (S)0)));         \
                if (gate) {                                                                  \
                    if (gate_mode == 1)                                                      \
                        for (int64_t j = 0; j < m; ++j) gate[row + j] = (uint8_t)(s_t[j] != (S)0); \
                    else if (gate_mode == 2)                                                 \
                        for (int64_t j = 0; j < m; ++j)                                      \
                            gate[row + j] = (uint8_t)((s_t[j] != (S)0) & (tb[j] == (S)0));   \
                    else for (int64_t j = 0; j < m; ++j) gate[row + j] = (uint8_t)(tb[j] == (S)0); \
                }                                                                            \
            }                                                                                \
            if (cumulative == 2) for (int64_t j = 0; j < m; ++j) U_out[row + j] = Ur[j];     \
        }                                                                                    \
        if (cumulative == 1)                                                                 \
            for (int64_t j = 0; j < m; ++j) U_out[nb + j] = Ur[j];                           \
        if (count_out)                                                                       \
            for (int64_t j = 0; j < m; ++j) count_out[nb + j] = cnt[j];                      \
    }                                                                                        \
}

/* float32 (training): one specialised body per (reset, floor mode, spike test, integration),
 * each a straight-line vectorised loop (with run-time flags gcc leaves some unvectorised). */
DEFINE_FORWARD(lif_forward_f32, float)

#define FWD_CALL(R, F, G, I)                                                                 \
    case ((R * 3 + F) * 2 + G) * 2 + I:                                                      \
        lif_forward_f32_body(p, n0, n1, cur, spikes, U_out, u_rec, v_rec, keep, gate, fired_out, \
                             count_out, R, F, G, I);                                         \
        return;
#define FWD_CASES_GI(R, F) FWD_CALL(R, F, 0, 0) FWD_CALL(R, F, 0, 1) FWD_CALL(R, F, 1, 0) FWD_CALL(R, F, 1, 1)
#define FWD_CASES(R) FWD_CASES_GI(R, 0) FWD_CASES_GI(R, 1) FWD_CASES_GI(R, 2)

void lif_forward_f32(const lif_params *p, int64_t n0, int64_t n1, const float *restrict cur,
                     float *restrict spikes, float *restrict U_out, float *restrict u_rec,
                     float *restrict v_rec, uint8_t *restrict keep, uint8_t *restrict gate,
                     uint8_t *restrict fired_out, float *restrict count_out)
{
    switch (((p->reset * 3 + p->floor) * 2 + (p->spike_ge != 0)) * 2 + (p->integrate != 0)) {
    FWD_CASES(0) FWD_CASES(1) FWD_CASES(2)
    default: break;
    }
}

/* float64 (tests, analysis): one body with run-time flags (compiles fast; speed is no goal). */
DEFINE_FORWARD(lif_forward_f64, double)

void lif_forward_f64(const lif_params *p, int64_t n0, int64_t n1, const double *restrict cur,
                     double *restrict spikes, double *restrict U_out, double *restrict u_rec,
                     double *restrict v_rec, uint8_t *restrict keep, uint8_t *restrict gate,
                     uint8_t *restrict fired_out, double *restrict count_out)
{
    lif_forward_f64_body(p, n0, n1, cur, spikes, U_out, u_rec, v_rec, keep, gate, fired_out, count_out,
                         p->reset, p->floor, p->spike_ge != 0, p->integrate != 0);
}


/* Backward: the straight-through gradient is a reverse linear recurrence
 *
 *   GU(t)    = dL/dU(t), summed over later steps: g_U(t) + dg * GU(t+1)   (cumulative "all")
 *                                                 dg^(T-t) * g_U(T)       (cumulative "last")
 *   local(t) = g_spikes(t) * sg(t) * gate(t) + g_u(t) + [potential] GU(t)
 *   carry(t) = local(t) + keep(t) * dg * carry(t+1)
 *   grad(t)  = carry(t) + [current] dg * GU(t)
 *
 * sg is a constant (sg_value) or a tensor (sg_tensor, [T, N]). Any input pointer
 * may be NULL (term absent; keep / gate: all ones). g_spikes and g_u may have
 * time stride 0 (*_tstride is 0 or N). g_U is [N] for cumulative "last"
 * (p->cumulative == 1) and [T, N] for "all" (2).
 */
#define DEFINE_BACKWARD(NAME, S)                                                             \
void NAME(const lif_params *p, int64_t n0, int64_t n1,                                       \
          const S *restrict g_spk, int64_t spk_tstride, double sg_value,                     \
          const S *restrict sg_tensor, const uint8_t *restrict gate,                         \
          const S *restrict g_u, int64_t u_tstride, const S *restrict g_U,                   \
          const uint8_t *restrict keep, S *restrict grad)                                    \
{                                                                                            \
    const int64_t T = p->T, N = p->N;                                                        \
    const S dg = (S)p->grad_decay, sgc = (S)sg_value;                                        \
    const int U_membrane = p->integrate == 0, U_all = p->cumulative == 2;  /* locals: see forward */ \
    S carry[BLOCK], GUr[BLOCK], g[BLOCK];                                                    \
    for (int64_t nb = n0; nb < n1; nb += BLOCK) {                                            \
        const int64_t m = (n1 - nb) < BLOCK ? (n1 - nb) : BLOCK;                             \
        for (int64_t t = T - 1; t >= 0; --t) {                                               \
            const int64_t row = t * N + nb;                                                  \
            const int last = t == T - 1;                                                     \
            /* each term in its own vectorisable loop, in the torch-op backward's order */   \
            if (g_U) {                                                                       \
                if (last && U_all) for (int64_t j = 0; j < m; ++j) GUr[j] = g_U[row + j];    \
                else if (last) for (int64_t j = 0; j < m; ++j) GUr[j] = g_U[nb + j];         \
                else if (U_all)                                                              \
                    for (int64_t j = 0; j < m; ++j) { S x = dg * GUr[j]; GUr[j] = g_U[row + j] + x; } \
                else for (int64_t j = 0; j < m; ++j) GUr[j] = dg * GUr[j];                   \
            }                                                                                \
            if (g_spk) {                                                                     \
                const S *restrict gs = g_spk + t * spk_tstride + nb;                         \
                if (sg_tensor) for (int64_t j = 0; j < m; ++j) g[j] = gs[j] * sg_tensor[row + j]; \
                else for (int64_t j = 0; j < m; ++j) g[j] = gs[j] * sgc;                     \
                if (gate) for (int64_t j = 0; j < m; ++j) g[j] = gate[row + j] ? g[j] : (S)0; \
            } else {                                                                         \
                for (int64_t j = 0; j < m; ++j) g[j] = (S)0;                                 \
            }                                                                                \
            if (g_u) {                                                                       \
                const S *restrict gu = g_u + t * u_tstride + nb;                             \
                for (int64_t j = 0; j < m; ++j) g[j] = g[j] + gu[j];                         \
            }                                                                                \
            if (g_U && U_membrane) for (int64_t j = 0; j < m; ++j) g[j] = g[j] + GUr[j];     \
            if (!last) {                                                                     \
                if (keep)                                                                    \
                    for (int64_t j = 0; j < m; ++j) {                                        \
                        const S through = dg * carry[j];                                     \
                        g[j] = keep[row + j] ? g[j] + through : g[j];                        \
                    }                                                                        \
                else for (int64_t j = 0; j < m; ++j) { const S through = dg * carry[j]; g[j] = g[j] + through; } \
            }                                                                                \
            for (int64_t j = 0; j < m; ++j) carry[j] = g[j];                                 \
            if (g_U && !U_membrane)                                                          \
                for (int64_t j = 0; j < m; ++j) { const S x = dg * GUr[j]; grad[row + j] = g[j] + x; } \
            else for (int64_t j = 0; j < m; ++j) grad[row + j] = g[j];                       \
        }                                                                                    \
    }                                                                                        \
}

DEFINE_BACKWARD(lif_backward_f32, float)
DEFINE_BACKWARD(lif_backward_f64, double)
