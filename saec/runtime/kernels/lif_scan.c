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

#define BLOCK 256

#define DEFINE_FORWARD(NAME, S)                                                              \
void NAME(const lif_params *p, int64_t n0, int64_t n1, const S *restrict cur,                \
          S *restrict spikes, S *restrict U_out, S *restrict u_rec, S *restrict v_rec,       \
          uint8_t *restrict keep, uint8_t *restrict gate, uint8_t *restrict fired_out)       \
{                                                                                            \
    const int64_t T = p->T, N = p->N;                                                        \
    const S decay = (S)p->decay, thr = (S)p->threshold;                                      \
    const S lb = (S)p->lower_bound, fv = (S)p->floor_value;                                  \
    const int floor_first = p->floor == 1, floor_after = p->floor == 2;                      \
    S up[BLOCK], Ur[BLOCK];                                                                  \
    for (int64_t nb = n0; nb < n1; nb += BLOCK) {                                            \
        const int64_t m = (n1 - nb) < BLOCK ? (n1 - nb) : BLOCK;                             \
        for (int64_t j = 0; j < m; ++j) { up[j] = (S)0; Ur[j] = (S)0; }                      \
        for (int64_t t = 0; t < T; ++t) {                                                    \
            const int64_t row = t * N + nb;                                                  \
            for (int64_t j = 0; j < m; ++j) {                                                \
                const S I = cur[row + j];                                                    \
                S u = up[j] * decay;                                                         \
                u = u + I;                                                                   \
                int below = 0;                                                               \
                S v = u;                                                                     \
                if (floor_first) { below = u < lb; v = below ? fv : u; }                     \
                const int f = p->spike_ge ? (v >= thr) : (v > thr);                         \
                S nxt = v;                                                                   \
                if (p->reset == 0) nxt = f ? (S)0 : v;                                       \
                else if (p->reset == 1) nxt = f ? v - thr : v;                               \
                if (floor_after) {                                                           \
                    below = u < lb;                                                          \
                    if (p->floor_overlaps_spike) below = below && !f;                        \
                    nxt = below ? fv : nxt;                                                  \
                }                                                                            \
                up[j] = nxt;                                                                 \
                spikes[row + j] = f ? (S)1 : (S)0;                                           \
                if (u_rec) u_rec[row + j] = u;                                               \
                if (v_rec) v_rec[row + j] = v;                                               \
                if (fired_out) fired_out[row + j] = (uint8_t)f;                              \
                if (keep) keep[row + j] =                                                    \
                    (uint8_t)(!(p->reset_cut && f) && !(p->floor_cut && below));             \
                if (gate) {                                                                  \
                    const int g = p->gate_mode == 1 ? f                                      \
                                : p->gate_mode == 2 ? (f && !below) : !below;                \
                    gate[row + j] = (uint8_t)g;                                              \
                }                                                                            \
                if (p->cumulative) {                                                         \
                    S Un;                                                                    \
                    if (p->integrate == 0) { Un = Ur[j] * decay; Un = Un + u; }              \
                    else { Un = Ur[j] + I; Un = Un * decay; }                                \
                    Ur[j] = Un;                                                              \
                    if (p->cumulative == 2) U_out[row + j] = Un;                             \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
        if (p->cumulative == 1)                                                              \
            for (int64_t j = 0; j < m; ++j) U_out[nb + j] = Ur[j];                           \
    }                                                                                        \
}

DEFINE_FORWARD(lif_forward_f32, float)
DEFINE_FORWARD(lif_forward_f64, double)

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
    const int U_membrane = p->integrate == 0, U_all = p->cumulative == 2;                    \
    S carry[BLOCK], GUr[BLOCK];                                                              \
    for (int64_t nb = n0; nb < n1; nb += BLOCK) {                                            \
        const int64_t m = (n1 - nb) < BLOCK ? (n1 - nb) : BLOCK;                             \
        for (int64_t t = T - 1; t >= 0; --t) {                                               \
            const int64_t row = t * N + nb;                                                  \
            const int last = t == T - 1;                                                     \
            for (int64_t j = 0; j < m; ++j) {                                                \
                S g = (S)0, GU = (S)0;                                                       \
                if (g_U) {                                                                   \
                    if (last) GU = U_all ? g_U[row + j] : g_U[nb + j];                       \
                    else if (U_all) { GU = dg * GUr[j]; GU = g_U[row + j] + GU; }            \
                    else GU = dg * GUr[j];                                                   \
                    GUr[j] = GU;                                                             \
                }                                                                            \
                if (g_spk) {                                                                 \
                    g = g_spk[t * spk_tstride + nb + j] * (sg_tensor ? sg_tensor[row + j] : sgc); \
                    if (gate) g = gate[row + j] ? g : (S)0;                                  \
                }                                                                            \
                if (g_u) g = g + g_u[t * u_tstride + nb + j];                                \
                if (g_U && U_membrane) g = g + GU;                                           \
                if (!last) {                                                                 \
                    const S through = dg * carry[j];                                         \
                    g = (keep && !keep[row + j]) ? g : g + through;                          \
                }                                                                            \
                carry[j] = g;                                                                \
                grad[row + j] = (g_U && !U_membrane) ? g + dg * GU : g;                      \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
}

DEFINE_BACKWARD(lif_backward_f32, float)
DEFINE_BACKWARD(lif_backward_f64, double)
