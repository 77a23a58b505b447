/* Fused selective scan for CPUs: forward and backward, float32 and float64, OpenMP over blocks of channels.
 *
 * Plain C (no torch headers), compiled on first use by mambalab/ops/selective_scan/cpu_scan.py with
 * `cc -O3 -march=native -fopenmp -shared -fPIC` and called through ctypes with contiguous buffers.
 * Glossary as in reference.py: u (x), delta (Δ before bias/softplus), A, B, C, D, z (gate), h (state),
 * g (adjoint state ∂L/∂h); b batch, d channels, l steps, n state size, G groups of B/C.
 *
 * Layouts (row-major, as torch gives them): u, delta, z, y, dy, du, ddelta, dz (batch, dim, length); A (dim, n);
 * B, C, dB, dC (batch, groups, n, length); D, delta_bias (dim,); h0, final, dh0 (num_seqs, dim, n);
 * checkpoints (slots, dim, n).
 *
 * A "sequence" is a batch row, or with cu_seqlens one packed sequence of the single row. The vector axis is
 * the channels: a vector holds LANES consecutive channels of one group (one 512-bit register: 16 float32 or
 * 8 float64; a group's last vector may be partial, its missing lanes compute on zeros and are never written).
 * Every loop over lanes has a constant trip count, so the compiler turns it into vector instructions; the
 * recurrence of each state index i is a chain in registers over the steps, the n chains of a vector are
 * independent, and every sum over n (C · h, Σ_n q A, Σ_n g B) is a vertical addition across them. B_t[i] and
 * C_t[i] are scalars shared by the lanes. A work item (one OpenMP iteration) is a block of up to
 * VECTORS_PER_BLOCK vectors of one group of one sequence, walked one K-step segment at a time.
 *
 * Forward: h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t, y_t = (C_t · h_t + D u_t) silu(z_t). When a backward will
 * run, the state before every K-step segment is stored (K = checkpoint_steps): sequence s's k-th checkpoint
 * is slot slot0(s) + k, slot0 = row · ceil(L / K), or start // K + s when packed (at most L // K + num_seqs
 * slots, whatever the lengths), so every buffer's size depends only on the input shapes.
 *
 * Backward, per segment from the last: recompute the segment's states from its checkpoint into a local
 * buffer (h_{t-1}, h_t and the decays a_t of one state index at a time), then run the adjoint in reverse,
 *     g_t = C_t dy_ssm_t + a_{t+1} g_{t+1},   dy_ssm = dy · silu(z),   g after the last step = d_final,
 * and read every gradient off it (q_t = g_t a_t h_{t-1} = ∂L/∂(Δ_t A)):
 *     dΔ_t = Σ_n q_t A + u_t Σ_n g_t B_t          du_t = Δ_t Σ_n g_t B_t + D dy_ssm_t
 *     dA  += Σ_t q_t Δ_t                           dB_t += g_t Δ_t u_t,  dC_t += dy_ssm_t h_t  (Σ over channels)
 *     dD  += Σ_t dy_ssm_t u_t                      dz_t = dy_t (C_t · h_t + D u_t) silu'(z_t)
 *     dh0 = a_start g_start;  dΔ goes through softplus (σ(Δ + bias)) and sums into d delta_bias.
 * dB/dC sum over channels, i.e. over lanes: each segment accumulates them per lane over the block's vectors,
 * then sums the lanes into this thread's (batch, groups, n, length) buffer of the workspace; the threads'
 * buffers are summed at the end (no races). dA, dD, d delta_bias are written per sequence, (num_seqs, dim, n) /
 * (num_seqs, dim), and summed by the caller.
 *
 * float32: exp(Δ A) = 2^(Δ · A log2 e) by a polynomial with range reduction (exp2_f32, ≈1 ulp), softplus and
 * sigmoid through it, all branch-free so that loops calling them vectorise without -ffast-math; float64 uses
 * libm (exp, log1p).
 */

#ifndef REAL /* first pass: what both precisions share, then this file again once per precision */

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <tgmath.h>

typedef struct {
    int64_t batch, dim, length, n, groups; /* u (batch, dim, length); A (dim, n); B, C (batch, groups, n, length) */
    int64_t num_seqs;                      /* batch, or the number of packed sequences with cu_seqlens */
    const int64_t *cu_seqlens;             /* (num_seqs + 1,), or NULL: every batch row is one sequence */
    int64_t checkpoint_steps;              /* K: steps per checkpointed segment */
    int32_t delta_softplus;                /* Δ = softplus(delta + delta_bias) when nonzero */
    int32_t threads;                       /* OpenMP threads */
} ScanShape;

typedef struct {
    int64_t row, start, end, slot0; /* batch row, steps [start, end), first checkpoint slot */
} Sequence;

static Sequence sequence_bounds(const ScanShape *s, int64_t seq) {
    Sequence q;
    int64_t K = s->checkpoint_steps;
    if (s->cu_seqlens) {
        q.row = 0;
        q.start = s->cu_seqlens[seq];
        q.end = s->cu_seqlens[seq + 1];
        q.slot0 = q.start / K + seq;
    } else {
        q.row = seq;
        q.start = 0;
        q.end = s->length;
        q.slot0 = seq * ((s->length + K - 1) / K);
    }
    return q;
}

static inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Vectors per work item: a segment's dB/dC lane sums are taken once for all of them. */
#define VECTORS_PER_BLOCK 4

/* A work item: channels [c0, c1) of one group of one sequence. */
typedef struct {
    int64_t seq, group, c0, c1;
} Block;

static int64_t block_count(const ScanShape *s, int64_t lanes) {
    int64_t per_group = s->dim / s->groups, width = lanes * VECTORS_PER_BLOCK;
    return s->num_seqs * s->groups * ((per_group + width - 1) / width);
}

static Block block_at(const ScanShape *s, int64_t lanes, int64_t index) {
    int64_t per_group = s->dim / s->groups, width = lanes * VECTORS_PER_BLOCK;
    int64_t per_seq_group = (per_group + width - 1) / width;
    Block w;
    w.seq = index / (s->groups * per_seq_group);
    w.group = index / per_seq_group % s->groups;
    w.c0 = w.group * per_group + index % per_seq_group * width;
    w.c1 = min_i64(w.c0 + width, (w.group + 1) * per_group);
    return w;
}

static inline float float_from_bits(int32_t i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}

#define LOG2E 1.4426950408889634

/* 2^y for float32, ≈1 ulp over the normal range: y = k + f with k = round(y), |f| ≤ 1/2; 2^f by a degree-6
 * polynomial (Chebyshev fit, relative error 2.6e-9 before rounding); 2^k as two exponent-field scalings
 * (so that k = 128 and subnormal results need no special case). Below -151 it gives 0, above 128 inf,
 * NaN stays NaN. Branch-free, so loops calling it vectorise. */
static inline float exp2_f32(float y) {
    y = y < -151.0f ? -151.0f : y;
    y = y > 129.0f ? 129.0f : y;
    float k = (y + 0x1.8p23f) - 0x1.8p23f; /* round to nearest integer (|y| < 2^22) */
    float f = y - k;                       /* exact, in [-1/2, 1/2] */
    float p = 1.54697322e-4f;
    p = p * f + 1.34004327e-3f;
    p = p * f + 9.61802527e-3f;
    p = p * f + 5.55032715e-2f;
    p = p * f + 2.40226507e-1f;
    p = p * f + 6.93147182e-1f;
    p = p * f + 1.0f;
    int32_t ki = (int32_t)k;
    int32_t k1 = ki >> 1, k2 = ki - k1; /* each in [-76, 65]: a normal power of two */
    return p * float_from_bits((k1 + 127) << 23) * float_from_bits((k2 + 127) << 23);
}

/* softplus(x) = log(1 + e^x) = max(x, 0) + log1p(e), e = e^-|x| ∈ (0, 1]; log1p(e) = 2 atanh(s) with
 * s = e / (2 + e) ∈ (0, 1/3] (no cancellation for tiny e), atanh(s) / s a degree-4 polynomial in s²
 * (Chebyshev fit, relative error 7.8e-9). Also its derivative σ(x) = 1 / (1 + e) or e / (1 + e), from the same
 * e. Branch-free like exp2_f32. */
static inline float softplus_f32(float x, float *sigma) {
    float e = exp2_f32(-fabsf(x) * (float)LOG2E);
    *sigma = (x >= 0.0f ? 1.0f : e) / (1.0f + e);
    float s = e / (2.0f + e), w = s * s;
    float p = 1.40873283e-1f;
    p = p * w + 1.39807090e-1f;
    p = p * w + 2.00124264e-1f;
    p = p * w + 3.33331585e-1f;
    p = p * w + 1.0f;
    return (x > 0.0f ? x : 0.0f) + 2.0f * s * p;
}

static inline float sigmoid_f32(float x) { return 1.0f / (1.0f + exp2_f32(-x * (float)LOG2E)); }

/* float64: libm (softplus is x itself above 20, as torch's); sigma = σ(x), its derivative. */
static inline double softplus_f64(double x, double *sigma) {
    *sigma = 1 / (1 + exp(-x));
    return x > 20 ? x : log1p(exp(x));
}

static inline double sigmoid_f64(double x) { return 1 / (1 + exp(-x)); }

/* y[i] = 2^x[i]: the kernels' exponential as they run it (for its accuracy test and its rate). */
void mambalab_exp2_f32(const float *x, float *y, int64_t count) {
    for (int64_t i = 0; i < count; i++) y[i] = exp2_f32(x[i]);
}

/* float32: the decay exponent is Δ · (A log2 e) and the decay 2^that; float64: Δ A and libm's exp. */
#define REAL float
#define SUFFIX(name) name##_f32
#define DECAY(x) exp2_f32(x)
#define DECAY_SCALE ((float)LOG2E)
#include __FILE__
#undef REAL
#undef SUFFIX
#undef DECAY
#undef DECAY_SCALE

#define REAL double
#define SUFFIX(name) name##_f64
#define DECAY(x) exp(x)
#define DECAY_SCALE 1.0
#include __FILE__

#else /* per precision: REAL, SUFFIX(name), DECAY(exponent), DECAY_SCALE */

#define LANES (64 / (int64_t)sizeof(REAL)) /* channels per vector */

typedef struct {
    const REAL *u, *delta, *A, *B, *C;   /* required */
    const REAL *D, *z, *delta_bias, *h0; /* NULL when absent (h0 absent: zero initial state) */
} SUFFIX(ScanInputs);

typedef struct {
    REAL *du, *ddelta, *dz;   /* (batch, dim, length); dz NULL without z */
    REAL *dA;                 /* (num_seqs, dim, n), summed over sequences by the caller */
    REAL *dB, *dC;            /* (batch, groups, n, length) */
    REAL *dD, *ddelta_bias;   /* (num_seqs, dim), NULL when absent */
    REAL *dh0;                /* (num_seqs, dim, n) */
    REAL *workspace;          /* (threads, 2, batch, groups, n, length): each thread's dB and dC sums */
} SUFFIX(ScanGrads);

/* One thread's scratch. "(…, V)" is LANES channels; "per vector" arrays hold VECTORS_PER_BLOCK of them. */
typedef struct {
    REAL *a2, *A;             /* per vector (n, V): A · DECAY_SCALE and A (0 on missing lanes) */
    REAL *carry;              /* per vector (n, V): the state h (forward), a_{t+1} g_{t+1} (backward) */
    REAL *dA;                 /* per vector (n, V): Σ_t q_t Δ_t */
    REAL *dD, *dbias;         /* per vector (V,): Σ_t dy_ssm_t u_t, Σ_t dΔ_t */
    REAL *u, *dt, *x, *z;     /* (K, V): u, Δ, Δ u, z of one vector's segment */
    REAL *d_softplus;         /* (K, V): σ(delta + bias), dΔ/d delta (backward, with softplus) */
    REAL *dy, *dy_ssm;        /* (K, V): dy, dy silu(z) */
    REAL *d_gate, *y_ssm;     /* (K, V): silu'(z), C · h */
    REAL *q_A, *g_B, *out;    /* (K, V): Σ_n q A, Σ_n g B, an output before it is written to its rows */
    REAL *start;              /* (n, V): a checkpoint, the states before the segment */
    REAL *states, *decays;    /* (K + 1, V): h_{t0-1} .. h_{t0+K-1} of one state index; (K, V): its a_t */
    REAL *dB_lanes, *dC_lanes; /* (n, K, V): one segment's dB, dC per lane, over the block's vectors */
    REAL *block;              /* the one allocation all of the above live in */
} SUFFIX(Scratch);

static int SUFFIX(scratch_alloc)(SUFFIX(Scratch) *w, int64_t n, int64_t K) {
    const int64_t V = LANES, per_vector = VECTORS_PER_BLOCK * n * V;
    REAL *p = w->block = malloc((size_t)(4 * per_vector + 2 * VECTORS_PER_BLOCK * V + 12 * K * V + n * V +
                                         (2 * K + 1) * V + 2 * n * K * V) * sizeof(REAL));
    if (!p) return 0;
    w->a2 = p, p += per_vector;
    w->A = p, p += per_vector;
    w->carry = p, p += per_vector;
    w->dA = p, p += per_vector;
    w->dD = p, p += VECTORS_PER_BLOCK * V;
    w->dbias = p, p += VECTORS_PER_BLOCK * V;
    REAL **steps[] = {&w->u, &w->dt, &w->x, &w->z, &w->d_softplus, &w->dy, &w->dy_ssm, &w->d_gate, &w->y_ssm,
                      &w->q_A, &w->g_B, &w->out};
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) *steps[i] = p, p += K * V;
    w->start = p, p += n * V;
    w->states = p, p += (K + 1) * V;
    w->decays = p, p += K * V;
    w->dB_lanes = p, p += n * K * V;
    w->dC_lanes = p;
    return 1;
}

/* dst (steps, V) = `lanes` rows of src (row stride `stride`) from column 0, transposed; missing lanes 0. */
static void SUFFIX(gather_lanes)(const REAL *src, int64_t stride, int64_t lanes, int64_t steps, REAL *dst) {
    for (int64_t j = 0; j < steps; j++)
        for (int64_t l = 0; l < LANES; l++) dst[j * LANES + l] = l < lanes ? src[l * stride + j] : 0;
}

/* The reverse: `lanes` rows of dst from src (steps, V). */
static void SUFFIX(scatter_lanes)(const REAL *src, int64_t lanes, int64_t steps, REAL *dst, int64_t stride) {
    for (int64_t l = 0; l < lanes; l++)
        for (int64_t j = 0; j < steps; j++) dst[l * stride + j] = src[j * LANES + l];
}

/* A per-channel (…, n) state of `lanes` channels from c (rows of n) as (n, V), or zeros when src is NULL. */
static void SUFFIX(load_state)(const REAL *src, int64_t n, int64_t lanes, REAL *dst) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t l = 0; l < LANES; l++) dst[i * LANES + l] = src && l < lanes ? src[l * n + i] : 0;
}

static void SUFFIX(store_state)(const REAL *src, int64_t n, int64_t lanes, REAL *dst) {
    for (int64_t l = 0; l < lanes; l++)
        for (int64_t i = 0; i < n; i++) dst[l * n + i] = src[i * LANES + l];
}

/* What a vector needs at its first segment: A per lane (scaled and not), and zeroed accumulators. */
static void SUFFIX(vector_setup)(const SUFFIX(ScanInputs) *in, int64_t n, int64_t c, int64_t lanes,
                                 SUFFIX(Scratch) *w, int64_t v) {
    REAL *a2 = w->a2 + v * n * LANES, *A = w->A + v * n * LANES;
    SUFFIX(load_state)(in->A + c * n, n, lanes, A);
    for (int64_t e = 0; e < n * LANES; e++) a2[e] = A[e] * DECAY_SCALE;
    for (int64_t e = 0; e < n * LANES; e++) w->dA[v * n * LANES + e] = 0;
    for (int64_t l = 0; l < LANES; l++) w->dD[v * LANES + l] = w->dbias[v * LANES + l] = 0;
}

/* Δ = softplus(delta + bias) (or delta + bias) and Δ u for one vector's segment; u, delta at step t0 of
 * channel c's row. Fills w->u, w->dt, w->x and, with softplus and `derivative`, w->d_softplus (steps, V). */
static void SUFFIX(step_inputs)(const ScanShape *s, const SUFFIX(ScanInputs) *in, int64_t offset, int64_t c,
                                int64_t lanes, int64_t steps, int derivative, SUFFIX(Scratch) *w) {
    REAL bias[LANES];
    for (int64_t l = 0; l < LANES; l++) bias[l] = in->delta_bias && l < lanes ? in->delta_bias[c + l] : 0;
    SUFFIX(gather_lanes)(in->u + offset, s->length, lanes, steps, w->u);
    SUFFIX(gather_lanes)(in->delta + offset, s->length, lanes, steps, w->out);
    const REAL *restrict delta = w->out, *restrict u = w->u;
    REAL *restrict dt = w->dt, *restrict d_softplus = w->d_softplus, *restrict x = w->x;
    for (int64_t j = 0; j < steps; j++)
        for (int64_t l = 0; l < LANES; l++) {
            int64_t e = j * LANES + l;
            REAL raw = delta[e] + bias[l], sigma = 1;
            dt[e] = s->delta_softplus ? SUFFIX(softplus)(raw, &sigma) : raw;
            if (derivative) d_softplus[e] = sigma;
        }
    for (int64_t e = 0; e < steps * LANES; e++) x[e] = dt[e] * u[e];
}

/* The forward recurrence of one vector over one segment, state index by state index: carry (n, V) holds h;
 * y_ssm (steps, V) = C · h. B, C: (n, length) rows of the group, from step t0. */
static void SUFFIX(forward_segment)(int64_t n, int64_t steps, int64_t length, const REAL *B, const REAL *C,
                                    const REAL *a2, REAL *carry, SUFFIX(Scratch) *w) {
    for (int64_t e = 0; e < steps * LANES; e++) w->y_ssm[e] = 0;
    for (int64_t i = 0; i < n; i++) {
        const REAL *B_i = B + i * length, *C_i = C + i * length, *a2_i = a2 + i * LANES; /* (steps,), (V,) */
        REAL h[LANES];
        memcpy(h, carry + i * LANES, sizeof h);
        for (int64_t j = 0; j < steps; j++) {
            const REAL *restrict dt = w->dt + j * LANES, *restrict x = w->x + j * LANES;
            REAL *restrict y = w->y_ssm + j * LANES, b = B_i[j], c = C_i[j];
#pragma omp simd
            for (int64_t l = 0; l < LANES; l++) {
                REAL a = DECAY(dt[l] * a2_i[l]); /* exp(Δ_t A) */
                h[l] = a * h[l] + x[l] * b;
                y[l] += c * h[l];
            }
        }
        memcpy(carry + i * LANES, h, sizeof h);
    }
}

/* y = (y_ssm + D u) silu(z) for one vector's segment, into w->out (steps, V). */
static void SUFFIX(gate_output)(const SUFFIX(ScanInputs) *in, int64_t c, int64_t lanes, int64_t steps,
                                SUFFIX(Scratch) *w) {
    REAL D[LANES];
    for (int64_t l = 0; l < LANES; l++) D[l] = in->D && l < lanes ? in->D[c + l] : 0;
    for (int64_t j = 0; j < steps; j++)
        for (int64_t l = 0; l < LANES; l++) {
            int64_t e = j * LANES + l;
            REAL y = w->y_ssm[e] + D[l] * w->u[e];
            w->out[e] = in->z ? y * w->z[e] * SUFFIX(sigmoid)(w->z[e]) : y;
        }
}

/* One work item's forward: y over its steps, its final states and checkpoints. */
static void SUFFIX(forward_block)(const ScanShape *s, const SUFFIX(ScanInputs) *in, Block blk, REAL *y,
                                  REAL *final_state, REAL *checkpoints, SUFFIX(Scratch) *w) {
    const int64_t n = s->n, L = s->length, K = s->checkpoint_steps, dim = s->dim;
    Sequence q = sequence_bounds(s, blk.seq);
    int64_t vectors = (blk.c1 - blk.c0 + LANES - 1) / LANES;
    const REAL *B = in->B + (q.row * s->groups + blk.group) * n * L; /* (n, l) */
    const REAL *C = in->C + (q.row * s->groups + blk.group) * n * L;
    for (int64_t v = 0; v < vectors; v++) {
        int64_t c = blk.c0 + v * LANES, lanes = min_i64(LANES, blk.c1 - c);
        SUFFIX(vector_setup)(in, n, c, lanes, w, v);
        SUFFIX(load_state)(in->h0 ? in->h0 + (blk.seq * dim + c) * n : NULL, n, lanes, w->carry + v * n * LANES);
    }
    for (int64_t t0 = q.start, k = 0; t0 < q.end; t0 += K, k++) {
        int64_t steps = min_i64(K, q.end - t0);
        for (int64_t v = 0; v < vectors; v++) {
            int64_t c = blk.c0 + v * LANES, lanes = min_i64(LANES, blk.c1 - c), row = (q.row * dim + c) * L + t0;
            REAL *carry = w->carry + v * n * LANES;
            if (checkpoints) SUFFIX(store_state)(carry, n, lanes, checkpoints + ((q.slot0 + k) * dim + c) * n);
            SUFFIX(step_inputs)(s, in, row, c, lanes, steps, 0, w);
            if (in->z) SUFFIX(gather_lanes)(in->z + row, L, lanes, steps, w->z);
            SUFFIX(forward_segment)(n, steps, L, B + t0, C + t0, w->a2 + v * n * LANES, carry, w);
            SUFFIX(gate_output)(in, c, lanes, steps, w);
            SUFFIX(scatter_lanes)(w->out, lanes, steps, y + row, L);
        }
    }
    for (int64_t v = 0; v < vectors; v++) {
        int64_t c = blk.c0 + v * LANES, lanes = min_i64(LANES, blk.c1 - c);
        SUFFIX(store_state)(w->carry + v * n * LANES, n, lanes, final_state + (blk.seq * dim + c) * n);
    }
}

/* y (batch, dim, length), final_state (num_seqs, dim, n), checkpoints (slots, dim, n) or NULL. Returns 0 when
 * scratch memory could not be allocated, else 1. */
int SUFFIX(mambalab_scan_forward)(const ScanShape *s, const SUFFIX(ScanInputs) *in, REAL *y, REAL *final_state,
                                  REAL *checkpoints) {
    const int64_t blocks = block_count(s, LANES);
    int ok = 1;
#pragma omp parallel num_threads(s->threads) reduction(&& : ok)
    {
        SUFFIX(Scratch) w = {0};
        ok = SUFFIX(scratch_alloc)(&w, s->n, s->checkpoint_steps);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < blocks; r++)
            if (ok) SUFFIX(forward_block)(s, in, block_at(s, LANES, r), y, final_state, checkpoints, &w);
        free(w.block);
    }
    return ok;
}

/* dy_ssm = dy silu(z) and d_gate = silu'(z) = σ (1 + z (1 - σ)); without z, dy_ssm = dy. */
static void SUFFIX(gate_input_grad)(const SUFFIX(ScanInputs) *in, int64_t steps, SUFFIX(Scratch) *w) {
    if (!in->z) {
        memcpy(w->dy_ssm, w->dy, (size_t)(steps * LANES) * sizeof(REAL));
        return;
    }
    for (int64_t e = 0; e < steps * LANES; e++) {
        REAL z = w->z[e], sig = SUFFIX(sigmoid)(z);
        w->dy_ssm[e] = w->dy[e] * z * sig;
        w->d_gate[e] = sig * (1 + z * (1 - sig));
    }
}

/* The backward recurrence of one vector over one segment, state index by state index: recompute h and a from
 * the checkpoint (start, (n, V)), then the adjoint, last step first, with carry (n, V) holding a_{t+1} g_{t+1}
 * in and a_{t0} g_{t0} out. Accumulates dA (n, V), w->y_ssm = C · h, w->q_A, w->g_B, and the per-lane
 * dB, dC of the segment. B, C: (n, length) rows of the group, from step t0. */
static void SUFFIX(backward_segment)(int64_t n, int64_t steps, int64_t length, const REAL *B, const REAL *C,
                                     const REAL *A, const REAL *a2, const REAL *start, REAL *carry, REAL *dA,
                                     SUFFIX(Scratch) *w) {
    for (int64_t e = 0; e < steps * LANES; e++) w->y_ssm[e] = w->q_A[e] = w->g_B[e] = 0;
    for (int64_t i = 0; i < n; i++) {
        const REAL *B_i = B + i * length, *C_i = C + i * length; /* (steps,) */
        const REAL *A_i = A + i * LANES, *a2_i = a2 + i * LANES; /* (V,) */
        REAL *dB = w->dB_lanes + i * steps * LANES, *dC = w->dC_lanes + i * steps * LANES; /* (steps, V) */
        memcpy(w->states, start + i * LANES, LANES * sizeof(REAL));
        for (int64_t j = 0; j < steps; j++) {
            const REAL *restrict dt = w->dt + j * LANES, *restrict x = w->x + j * LANES;
            const REAL *restrict prev = w->states + j * LANES;
            REAL *restrict a = w->decays + j * LANES, *restrict h = w->states + (j + 1) * LANES;
            REAL *restrict y = w->y_ssm + j * LANES;
            REAL b = B_i[j], c = C_i[j];
#pragma omp simd
            for (int64_t l = 0; l < LANES; l++) {
                a[l] = DECAY(dt[l] * a2_i[l]);
                h[l] = a[l] * prev[l] + x[l] * b;
                y[l] += c * h[l];
            }
        }
        REAL ga[LANES], dA_i[LANES] = {0};
        memcpy(ga, carry + i * LANES, sizeof ga);
        for (int64_t j = steps - 1; j >= 0; j--) {
            const REAL *restrict dt = w->dt + j * LANES, *restrict x = w->x + j * LANES;
            const REAL *restrict dys = w->dy_ssm + j * LANES, *restrict a = w->decays + j * LANES;
            const REAL *restrict prev = w->states + j * LANES, *restrict h = w->states + (j + 1) * LANES;
            REAL *restrict qA = w->q_A + j * LANES, *restrict gB = w->g_B + j * LANES;
            REAL *restrict dB_t = dB + j * LANES, *restrict dC_t = dC + j * LANES;
            REAL b = B_i[j], c = C_i[j];
#pragma omp simd
            for (int64_t l = 0; l < LANES; l++) {
                REAL g = c * dys[l] + ga[l]; /* g_t */
                REAL q = g * a[l] * prev[l];  /* ∂L/∂(Δ_t A) */
                dA_i[l] += q * dt[l];
                qA[l] += q * A_i[l];
                gB[l] += g * b;
                dB_t[l] += g * x[l];
                dC_t[l] += dys[l] * h[l];
                ga[l] = a[l] * g;
            }
        }
        memcpy(carry + i * LANES, ga, sizeof ga);
        for (int64_t l = 0; l < LANES; l++) dA[i * LANES + l] += dA_i[l];
    }
}

/* From the segment's sums: dz = dy (y_ssm + D u) silu'(z), du = Δ Σ_n g B + D dy_ssm,
 * dΔ = (Σ_n q A + u Σ_n g B) softplus'(delta + bias), written to their rows; adds dD and d delta_bias. */
static void SUFFIX(step_grads)(const ScanShape *s, const SUFFIX(ScanInputs) *in, int64_t offset, int64_t c,
                               int64_t lanes, int64_t steps, SUFFIX(Scratch) *w, REAL *dD, REAL *dbias,
                               const SUFFIX(ScanGrads) *out) {
    const int64_t L = s->length;
    REAL D[LANES];
    for (int64_t l = 0; l < LANES; l++) D[l] = in->D && l < lanes ? in->D[c + l] : 0;
    if (in->z) {
        for (int64_t j = 0; j < steps; j++)
            for (int64_t l = 0; l < LANES; l++) {
                int64_t e = j * LANES + l;
                w->out[e] = w->dy[e] * (w->y_ssm[e] + D[l] * w->u[e]) * w->d_gate[e];
            }
        SUFFIX(scatter_lanes)(w->out, lanes, steps, out->dz + offset, L);
    }
    for (int64_t j = 0; j < steps; j++)
        for (int64_t l = 0; l < LANES; l++) {
            int64_t e = j * LANES + l;
            w->out[e] = w->dt[e] * w->g_B[e] + D[l] * w->dy_ssm[e];
            dD[l] += w->dy_ssm[e] * w->u[e];
        }
    SUFFIX(scatter_lanes)(w->out, lanes, steps, out->du + offset, L);
    for (int64_t j = 0; j < steps; j++)
        for (int64_t l = 0; l < LANES; l++) {
            int64_t e = j * LANES + l;
            REAL d_dt = w->q_A[e] + w->u[e] * w->g_B[e];
            w->out[e] = s->delta_softplus ? d_dt * w->d_softplus[e] : d_dt;
            dbias[l] += w->out[e];
        }
    SUFFIX(scatter_lanes)(w->out, lanes, steps, out->ddelta + offset, L);
}

/* dst (n, length) rows from step t0 += the lane sums of src (n, steps, V); then src = 0. */
static void SUFFIX(add_lane_sums)(int64_t n, int64_t steps, REAL *src, REAL *dst, int64_t length) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < steps; j++) {
            REAL *p = src + (i * steps + j) * LANES, acc = 0;
            for (int64_t l = 0; l < LANES; l++) acc += p[l];
            dst[i * length + j] += acc;
        }
    memset(src, 0, (size_t)(n * steps * LANES) * sizeof(REAL));
}

/* One work item's backward, segments from the last, every vector of the block per segment; dB/dC into this
 * thread's buffers (dB_sum, dC_sum: (batch, groups, n, length)). */
static void SUFFIX(backward_block)(const ScanShape *s, const SUFFIX(ScanInputs) *in, const REAL *checkpoints,
                                   const REAL *dy, const REAL *d_final, const SUFFIX(ScanGrads) *out, Block blk,
                                   REAL *dB_sum, REAL *dC_sum, SUFFIX(Scratch) *w) {
    const int64_t n = s->n, L = s->length, K = s->checkpoint_steps, dim = s->dim;
    Sequence q = sequence_bounds(s, blk.seq);
    int64_t vectors = (blk.c1 - blk.c0 + LANES - 1) / LANES;
    int64_t bc = (q.row * s->groups + blk.group) * n * L; /* (n, l) block of B, C, dB_sum, dC_sum */
    for (int64_t v = 0; v < vectors; v++) {
        int64_t c = blk.c0 + v * LANES, lanes = min_i64(LANES, blk.c1 - c);
        SUFFIX(vector_setup)(in, n, c, lanes, w, v);
        /* after the last step, a_{t+1} g_{t+1} is ∂L/∂h_final */
        SUFFIX(load_state)(d_final ? d_final + (blk.seq * dim + c) * n : NULL, n, lanes, w->carry + v * n * LANES);
    }
    memset(w->dB_lanes, 0, (size_t)(2 * n * K * LANES) * sizeof(REAL));
    for (int64_t k = (q.end - q.start + K - 1) / K - 1; k >= 0; k--) {
        int64_t t0 = q.start + k * K, steps = min_i64(K, q.end - t0);
        for (int64_t v = 0; v < vectors; v++) {
            int64_t c = blk.c0 + v * LANES, lanes = min_i64(LANES, blk.c1 - c), row = (q.row * dim + c) * L + t0;
            SUFFIX(load_state)(checkpoints + ((q.slot0 + k) * dim + c) * n, n, lanes, w->start);
            SUFFIX(step_inputs)(s, in, row, c, lanes, steps, s->delta_softplus, w);
            if (in->z) SUFFIX(gather_lanes)(in->z + row, L, lanes, steps, w->z);
            SUFFIX(gather_lanes)(dy + row, L, lanes, steps, w->dy);
            SUFFIX(gate_input_grad)(in, steps, w);
            SUFFIX(backward_segment)(n, steps, L, in->B + bc + t0, in->C + bc + t0, w->A + v * n * LANES,
                                     w->a2 + v * n * LANES, w->start, w->carry + v * n * LANES,
                                     w->dA + v * n * LANES, w);
            SUFFIX(step_grads)(s, in, row, c, lanes, steps, w, w->dD + v * LANES, w->dbias + v * LANES, out);
        }
        SUFFIX(add_lane_sums)(n, steps, w->dB_lanes, dB_sum + bc + t0, L);
        SUFFIX(add_lane_sums)(n, steps, w->dC_lanes, dC_sum + bc + t0, L);
    }
    for (int64_t v = 0; v < vectors; v++) {
        int64_t c = blk.c0 + v * LANES, lanes = min_i64(LANES, blk.c1 - c), sc = blk.seq * dim + c;
        SUFFIX(store_state)(w->carry + v * n * LANES, n, lanes, out->dh0 + sc * n); /* a_start g_start */
        SUFFIX(store_state)(w->dA + v * n * LANES, n, lanes, out->dA + sc * n);
        for (int64_t l = 0; l < lanes; l++) {
            if (out->dD) out->dD[sc + l] = w->dD[v * LANES + l];
            if (out->ddelta_bias) out->ddelta_bias[sc + l] = w->dbias[v * LANES + l];
        }
    }
}

/* dB = Σ over the threads' buffers (likewise dC), in parallel over their elements. */
static void SUFFIX(sum_workspace)(const ScanShape *s, const SUFFIX(ScanGrads) *out) {
    const int64_t size = s->batch * s->groups * s->n * s->length;
#pragma omp parallel for num_threads(s->threads) schedule(static)
    for (int64_t e = 0; e < size; e++) {
        REAL dB = 0, dC = 0;
        for (int64_t th = 0; th < s->threads; th++) {
            dB += out->workspace[2 * th * size + e];
            dC += out->workspace[(2 * th + 1) * size + e];
        }
        out->dB[e] = dB;
        out->dC[e] = dC;
    }
}

/* Every gradient (see ScanGrads); dy (batch, dim, length), d_final (num_seqs, dim, n) or NULL,
 * checkpoints from the forward. Returns 0 when scratch memory could not be allocated, else 1. */
int SUFFIX(mambalab_scan_backward)(const ScanShape *s, const SUFFIX(ScanInputs) *in, const REAL *checkpoints,
                                   const REAL *dy, const REAL *d_final, const SUFFIX(ScanGrads) *out) {
    const int64_t size = s->batch * s->groups * s->n * s->length; /* one thread's dB (or dC) buffer */
    const int64_t blocks = block_count(s, LANES);
    int ok = 1;
#pragma omp parallel num_threads(s->threads) reduction(&& : ok)
    {
#pragma omp for schedule(static)
        for (int64_t th = 0; th < s->threads; th++)
            memset(out->workspace + th * 2 * size, 0, (size_t)(2 * size) * sizeof(REAL));
        SUFFIX(Scratch) w = {0};
        ok = SUFFIX(scratch_alloc)(&w, s->n, s->checkpoint_steps);
        REAL *dB_sum = out->workspace + omp_get_thread_num() * 2 * size, *dC_sum = dB_sum + size;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < blocks; r++)
            if (ok) SUFFIX(backward_block)(s, in, checkpoints, dy, d_final, out, block_at(s, LANES, r), dB_sum,
                                           dC_sum, &w);
        free(w.block);
    }
    if (ok) SUFFIX(sum_workspace)(s, out);
    return ok;
}

#undef LANES

#endif
