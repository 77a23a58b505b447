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
 * The code says so: it computes on vector types (GCC / clang vector extensions, VEC = v_f32 or v_f64), so
 * each line is one vector instruction wherever the target has 512-bit registers, and a few where it has
 * narrower ones. (b, d, l) rows are transposed into (steps, V) tiles on the way in and back on the way out
 * (in registers, 16 × 16 at a time, with AVX-512; element by element otherwise). The
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
 * float32: exp(Δ A) = 2^(Δ · A log2 e) by a polynomial with range reduction (exp2_v_f32, ≈1 ulp; with
 * AVX-512 its rounding and 2^k are one instruction each), softplus and sigmoid through it, all branch-free,
 * no -ffast-math; float64 uses libm (exp, log1p) lane by lane.
 */

#ifndef REAL /* first pass: what both precisions share, then this file again once per precision */

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <tgmath.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

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

/* One vector: 64 bytes, LANES channels of one precision (16 float32 or 8 float64), and the integer vector of
 * the same lanes (comparisons give -1 / 0 per lane). GCC / clang vector extensions: +, -, * and comparisons
 * work lane by lane, a scalar operand is broadcast; targets without 512-bit registers split them. */
typedef float v_f32 __attribute__((vector_size(64), may_alias));
typedef int32_t vi_f32 __attribute__((vector_size(64)));
typedef double v_f64 __attribute__((vector_size(64), may_alias));
typedef int64_t vi_f64 __attribute__((vector_size(64)));

#define SPLAT_F32(c) ((v_f32){0} + (c)) /* every lane c */

static inline v_f32 select_f32(vi_f32 mask, v_f32 a, v_f32 b) { /* mask ? a : b, lane by lane */
    return (v_f32)((mask & (vi_f32)a) | (~mask & (vi_f32)b));
}

#define LOG2E 1.4426950408889634

/* 2^y for float32, ≈1 ulp over the normal range: y = k + f with k = round(y), |f| ≤ 1/2; 2^f by a degree-6
 * polynomial (Chebyshev fit, relative error 2.6e-9 before rounding), times 2^k. With AVX-512, k by one
 * rounding and 2^k by one vscalefps (which also gives subnormals, 0 and inf); otherwise k by the 1.5·2^23
 * trick and 2^k as two exponent-field scalings (so that k = 128 and subnormal results need no special case).
 * y is clamped to [-151, 129] first: below -151 it gives 0, above 128 inf; NaN stays NaN. */
static inline v_f32 exp2_v_f32(v_f32 y) {
#ifdef __AVX512F__ /* vmaxps / vminps return their second operand, y, when it is NaN */
    y = (v_f32)_mm512_min_ps(_mm512_set1_ps(129.0f), _mm512_max_ps(_mm512_set1_ps(-151.0f), (__m512)y));
    v_f32 k = (v_f32)_mm512_roundscale_ps((__m512)y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    y = select_f32(y < -151.0f, SPLAT_F32(-151.0f), y);
    y = select_f32(y > 129.0f, SPLAT_F32(129.0f), y);
    v_f32 k = (y + 0x1.8p23f) - 0x1.8p23f; /* round to nearest integer (|y| < 2^22) */
#endif
    v_f32 f = y - k; /* exact, in [-1/2, 1/2] */
    v_f32 p = f * 1.54697322e-4f + 1.34004327e-3f;
    p = p * f + 9.61802527e-3f;
    p = p * f + 5.55032715e-2f;
    p = p * f + 2.40226507e-1f;
    p = p * f + 6.93147182e-1f;
    p = p * f + 1.0f;
#ifdef __AVX512F__
    return (v_f32)_mm512_scalef_ps((__m512)p, (__m512)k);
#else
    vi_f32 ki = __builtin_convertvector(k, vi_f32);
    vi_f32 k1 = ki >> 1, k2 = ki - k1; /* each in [-76, 65]: a normal power of two */
    return p * (v_f32)((k1 + 127) << 23) * (v_f32)((k2 + 127) << 23);
#endif
}

static inline v_f32 abs_f32(v_f32 x) { return (v_f32)((vi_f32)x & 0x7fffffff); }

/* softplus(x) = log(1 + e^x) = max(x, 0) + log1p(e), e = e^-|x| ∈ (0, 1]; log1p(e) = 2 atanh(s) with
 * s = e / (2 + e) ∈ (0, 1/3] (no cancellation for tiny e), atanh(s) / s a degree-4 polynomial in s²
 * (Chebyshev fit, relative error 7.8e-9). Also its derivative σ(x) = 1 / (1 + e) or e / (1 + e), from the same
 * e. */
static inline v_f32 softplus_v_f32(v_f32 x, v_f32 *sigma) {
    v_f32 e = exp2_v_f32(abs_f32(x) * (float)-LOG2E);
    *sigma = select_f32(x >= 0.0f, SPLAT_F32(1.0f), e) / (1.0f + e);
    v_f32 s = e / (2.0f + e), w = s * s;
    v_f32 p = w * 1.40873283e-1f + 1.39807090e-1f;
    p = p * w + 2.00124264e-1f;
    p = p * w + 3.33331585e-1f;
    p = p * w + 1.0f;
    return select_f32(x > 0.0f, x, SPLAT_F32(0.0f)) + 2.0f * s * p;
}

static inline v_f32 sigmoid_v_f32(v_f32 x) { return 1.0f / (1.0f + exp2_v_f32(x * (float)-LOG2E)); }

/* float64: libm lane by lane (softplus is x itself above 20, as torch's); sigma = σ(x), its derivative. */
static inline v_f64 exp_v_f64(v_f64 x) {
    for (int l = 0; l < 8; l++) x[l] = exp(x[l]);
    return x;
}

static inline v_f64 softplus_v_f64(v_f64 x, v_f64 *sigma) {
    for (int l = 0; l < 8; l++) {
        (*sigma)[l] = 1 / (1 + exp(-x[l]));
        x[l] = x[l] > 20 ? x[l] : log1p(exp(x[l]));
    }
    return x;
}

static inline v_f64 sigmoid_v_f64(v_f64 x) {
    for (int l = 0; l < 8; l++) x[l] = 1 / (1 + exp(-x[l]));
    return x;
}

#ifdef __AVX512F__
/* 16 rows of 16 float32 transposed in registers (64 shuffles): pairs of rows interleaved, then pairs of
 * pairs, then 128-bit quarters exchanged twice; r[c] ends up holding column c. */
static inline void transpose_16x16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 16; i += 2) { /* within each quarter k: t[i] = r_i[4k], r_i+1[4k], r_i[4k+1], r_i+1[4k+1] */
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int g = 0; g < 16; g += 4) /* u[g + m], quarter k: column 4k + m of rows g .. g + 3 */
        for (int m = 0; m < 2; m++) {
            __m512d lo = _mm512_castps_pd(t[g + m]), hi = _mm512_castps_pd(t[g + m + 2]);
            u[g + 2 * m] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo, hi));
            u[g + 2 * m + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo, hi));
        }
    for (int m = 0; m < 4; m++) { /* gather quarter k of u[m], u[4 + m], u[8 + m], u[12 + m]: column 4k + m */
        __m512 v0 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x88), v1 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xdd);
        __m512 w0 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x88);
        __m512 w1 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xdd);
        r[m] = _mm512_shuffle_f32x4(v0, w0, 0x88);
        r[8 + m] = _mm512_shuffle_f32x4(v0, w0, 0xdd);
        r[4 + m] = _mm512_shuffle_f32x4(v1, w1, 0x88);
        r[12 + m] = _mm512_shuffle_f32x4(v1, w1, 0xdd);
    }
}
#endif

/* y[i] = 2^x[i]: the kernels' exponential as they run it (for its accuracy test and its rate). */
void mambalab_exp2_f32(const float *x, float *y, int64_t count) {
    int64_t i = 0;
    for (; i + 16 <= count; i += 16) {
        v_f32 v;
        memcpy(&v, x + i, sizeof v);
        v = exp2_v_f32(v);
        memcpy(y + i, &v, sizeof v);
    }
    v_f32 v = {0};
    memcpy(&v, x + i, (size_t)(count - i) * sizeof(float));
    v = exp2_v_f32(v);
    memcpy(y + i, &v, (size_t)(count - i) * sizeof(float));
}

/* float32: the decay exponent is Δ · (A log2 e) and the decay 2^that; float64: Δ A and libm's exp. */
#define REAL float
#define VEC v_f32
#define SUFFIX(name) name##_f32
#define DECAY exp2_v_f32
#define SOFTPLUS softplus_v_f32
#define SIGMOID sigmoid_v_f32
#define DECAY_SCALE ((float)LOG2E)
#ifdef __AVX512F__
#define TILE_TRANSPOSE 1 /* gather_lanes, scatter_lanes: 16 × 16 tiles in registers */
#else
#define TILE_TRANSPOSE 0
#endif
#include __FILE__
#undef REAL
#undef VEC
#undef SUFFIX
#undef DECAY
#undef SOFTPLUS
#undef SIGMOID
#undef DECAY_SCALE
#undef TILE_TRANSPOSE

#define REAL double
#define VEC v_f64
#define SUFFIX(name) name##_f64
#define DECAY exp_v_f64
#define SOFTPLUS softplus_v_f64
#define SIGMOID sigmoid_v_f64
#define DECAY_SCALE 1.0
#define TILE_TRANSPOSE 0
#include __FILE__

#else /* per precision: REAL, VEC (its vector), SUFFIX(name), DECAY, SOFTPLUS, SIGMOID (on VEC), DECAY_SCALE */

#define LANES (64 / (int64_t)sizeof(REAL)) /* channels per vector */
#define SPLAT(c) ((VEC){0} + (REAL)(c))    /* every lane c */

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

/* One thread's scratch, in vectors (VEC: LANES channels); "per vector" arrays hold VECTORS_PER_BLOCK of them. */
typedef struct {
    VEC *a2, *A;              /* per vector (n,): A · DECAY_SCALE and A (0 on missing lanes) */
    VEC *carry;               /* per vector (n,): the state h (forward), a_{t+1} g_{t+1} (backward) */
    VEC *dA;                  /* per vector (n,): Σ_t q_t Δ_t */
    VEC *dD, *dbias;          /* per vector (1,): Σ_t dy_ssm_t u_t, Σ_t dΔ_t */
    VEC *u, *dt, *x, *z;      /* (K,): u, Δ, Δ u, z of one vector's segment */
    VEC *d_softplus;          /* (K,): σ(delta + bias), dΔ/d delta (backward, with softplus) */
    VEC *dy, *dy_ssm;         /* (K,): dy, dy silu(z) */
    VEC *d_gate, *y_ssm;      /* (K,): silu'(z), C · h */
    VEC *q_A, *g_B, *out;     /* (K,): Σ_n q A, Σ_n g B, an output before it is written to its rows */
    VEC *start;               /* (n,): a checkpoint, the states before the segment */
    VEC *states, *decays;     /* (K + 1,): h_{t0-1} .. h_{t0+K-1} of one state index; (K,): its a_t */
    VEC *dB_lanes, *dC_lanes; /* (n, K): one segment's dB, dC per lane, over the block's vectors */
    VEC *block;               /* the one allocation all of the above live in */
} SUFFIX(Scratch);

static int SUFFIX(scratch_alloc)(SUFFIX(Scratch) *w, int64_t n, int64_t K) {
    const int64_t per_vector = VECTORS_PER_BLOCK * n;
    const int64_t vectors = 4 * per_vector + 2 * VECTORS_PER_BLOCK + 12 * K + n + (2 * K + 1) + 2 * n * K;
    VEC *p = w->block = aligned_alloc(sizeof(VEC), (size_t)vectors * sizeof(VEC));
    if (!p) return 0;
    w->a2 = p, p += per_vector;
    w->A = p, p += per_vector;
    w->carry = p, p += per_vector;
    w->dA = p, p += per_vector;
    w->dD = p, p += VECTORS_PER_BLOCK;
    w->dbias = p, p += VECTORS_PER_BLOCK;
    VEC **steps[] = {&w->u, &w->dt, &w->x, &w->z, &w->d_softplus, &w->dy, &w->dy_ssm, &w->d_gate, &w->y_ssm,
                     &w->q_A, &w->g_B, &w->out};
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) *steps[i] = p, p += K;
    w->start = p, p += n;
    w->states = p, p += K + 1;
    w->decays = p, p += K;
    w->dB_lanes = p, p += n * K;
    w->dC_lanes = p;
    return 1;
}

/* dst (steps,) = `lanes` rows of src (row stride `stride`) from column 0, transposed; missing lanes 0.
 * float32 with AVX-512: whole 16 × 16 tiles transposed in registers, the rest element by element. */
static void SUFFIX(gather_lanes)(const REAL *src, int64_t stride, int64_t lanes, int64_t steps, VEC *dst) {
    int64_t j = 0;
#if TILE_TRANSPOSE
    if (lanes == LANES)
        for (; j + LANES <= steps; j += LANES) {
            __m512 r[16];
            for (int l = 0; l < 16; l++) r[l] = _mm512_loadu_ps(src + l * stride + j);
            transpose_16x16(r);
            for (int k = 0; k < 16; k++) dst[j + k] = (VEC)r[k];
        }
#endif
    for (; j < steps; j++)
        for (int64_t l = 0; l < LANES; l++) dst[j][l] = l < lanes ? src[l * stride + j] : 0;
}

/* The reverse: `lanes` rows of dst from src (steps,). */
static void SUFFIX(scatter_lanes)(const VEC *src, int64_t lanes, int64_t steps, REAL *dst, int64_t stride) {
    int64_t j = 0;
#if TILE_TRANSPOSE
    if (lanes == LANES)
        for (; j + LANES <= steps; j += LANES) {
            __m512 r[16];
            for (int k = 0; k < 16; k++) r[k] = (__m512)src[j + k];
            transpose_16x16(r);
            for (int l = 0; l < 16; l++) _mm512_storeu_ps(dst + l * stride + j, r[l]);
        }
#endif
    for (int64_t l = 0; l < lanes; l++)
        for (int64_t t = j; t < steps; t++) dst[l * stride + t] = src[t][l];
}

/* Ask for the cache lines of `lanes` rows (row stride `stride`) over `steps` steps from src, to read or (write)
 * to write. The backward walks its segments last first, which the hardware prefetchers do not follow. */
static void SUFFIX(prefetch_rows)(const REAL *src, int64_t stride, int64_t lanes, int64_t steps, int write) {
    const int64_t line = 64 / (int64_t)sizeof(REAL);
    for (int64_t l = 0; l < lanes; l++)
        for (int64_t j = 0; j < steps + line; j += line) {
            const REAL *p = src + l * stride + min_i64(j, steps - 1);
            if (write) __builtin_prefetch(p, 1);
            else __builtin_prefetch(p, 0);
        }
}

/* A per-channel (…, n) state of `lanes` channels from src (rows of n) as (n,) vectors, or zeros when src is
 * NULL. */
static void SUFFIX(load_state)(const REAL *src, int64_t n, int64_t lanes, VEC *dst) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t l = 0; l < LANES; l++) dst[i][l] = src && l < lanes ? src[l * n + i] : 0;
}

static void SUFFIX(store_state)(const VEC *src, int64_t n, int64_t lanes, REAL *dst) {
    for (int64_t l = 0; l < lanes; l++)
        for (int64_t i = 0; i < n; i++) dst[l * n + i] = src[i][l];
}

/* A per-channel parameter (D, delta_bias) of `lanes` channels from src, 0 on missing lanes or when NULL. */
static VEC SUFFIX(channels)(const REAL *src, int64_t lanes) {
    VEC v = SPLAT(0);
    for (int64_t l = 0; src && l < lanes; l++) v[l] = src[l];
    return v;
}

/* What a vector needs at its first segment: A per lane (scaled and not), and zeroed accumulators. */
static void SUFFIX(vector_setup)(const SUFFIX(ScanInputs) *in, int64_t n, int64_t c, int64_t lanes,
                                 SUFFIX(Scratch) *w, int64_t v) {
    VEC *a2 = w->a2 + v * n, *A = w->A + v * n;
    SUFFIX(load_state)(in->A + c * n, n, lanes, A);
    for (int64_t i = 0; i < n; i++) {
        a2[i] = A[i] * DECAY_SCALE;
        w->dA[v * n + i] = SPLAT(0);
    }
    w->dD[v] = w->dbias[v] = SPLAT(0);
}

/* Δ = softplus(delta + bias) (or delta + bias) and Δ u for one vector's segment; u, delta at step t0 of
 * channel c's row. Fills w->u, w->dt, w->x and, with softplus and `derivative`, w->d_softplus. */
static void SUFFIX(step_inputs)(const ScanShape *s, const SUFFIX(ScanInputs) *in, int64_t offset, int64_t c,
                                int64_t lanes, int64_t steps, int derivative, SUFFIX(Scratch) *w) {
    const VEC bias = SUFFIX(channels)(in->delta_bias ? in->delta_bias + c : NULL, lanes);
    SUFFIX(gather_lanes)(in->u + offset, s->length, lanes, steps, w->u);
    SUFFIX(gather_lanes)(in->delta + offset, s->length, lanes, steps, w->out);
    const VEC *restrict delta = w->out, *restrict u = w->u;
    VEC *restrict dt = w->dt, *restrict d_softplus = w->d_softplus, *restrict x = w->x;
    for (int64_t j = 0; j < steps; j++) {
        VEC raw = delta[j] + bias, sigma = SPLAT(1);
        dt[j] = s->delta_softplus ? SOFTPLUS(raw, &sigma) : raw;
        if (derivative) d_softplus[j] = sigma;
        x[j] = dt[j] * u[j];
    }
}

/* The forward recurrence of one vector over one segment, state index by state index: carry (n,) holds h;
 * y_ssm (steps,) = C · h. B, C: (n, length) rows of the group, from step t0. */
static void SUFFIX(forward_segment)(int64_t n, int64_t steps, int64_t length, const REAL *B, const REAL *C,
                                    const VEC *a2, VEC *carry, SUFFIX(Scratch) *w) {
    const VEC *restrict dt = w->dt, *restrict x = w->x;
    VEC *restrict y = w->y_ssm;
    for (int64_t j = 0; j < steps; j++) y[j] = SPLAT(0);
    for (int64_t i = 0; i < n; i++) {
        const REAL *B_i = B + i * length, *C_i = C + i * length; /* (steps,) */
        VEC h = carry[i];
        for (int64_t j = 0; j < steps; j++) {
            h = DECAY(dt[j] * a2[i]) * h + x[j] * B_i[j]; /* h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t */
            y[j] += C_i[j] * h;
        }
        carry[i] = h;
    }
}

/* y = (y_ssm + D u) silu(z) for one vector's segment, into w->out. */
static void SUFFIX(gate_output)(const SUFFIX(ScanInputs) *in, int64_t c, int64_t lanes, int64_t steps,
                                SUFFIX(Scratch) *w) {
    const VEC D = SUFFIX(channels)(in->D ? in->D + c : NULL, lanes);
    for (int64_t j = 0; j < steps; j++) {
        VEC y = w->y_ssm[j] + D * w->u[j];
        if (in->z) y *= w->z[j] * SIGMOID(w->z[j]);
        w->out[j] = y;
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
        SUFFIX(load_state)(in->h0 ? in->h0 + (blk.seq * dim + c) * n : NULL, n, lanes, w->carry + v * n);
    }
    for (int64_t t0 = q.start, k = 0; t0 < q.end; t0 += K, k++) {
        int64_t steps = min_i64(K, q.end - t0);
        for (int64_t v = 0; v < vectors; v++) {
            int64_t c = blk.c0 + v * LANES, lanes = min_i64(LANES, blk.c1 - c), row = (q.row * dim + c) * L + t0;
            VEC *carry = w->carry + v * n;
            if (checkpoints) SUFFIX(store_state)(carry, n, lanes, checkpoints + ((q.slot0 + k) * dim + c) * n);
            SUFFIX(step_inputs)(s, in, row, c, lanes, steps, 0, w);
            if (in->z) SUFFIX(gather_lanes)(in->z + row, L, lanes, steps, w->z);
            SUFFIX(forward_segment)(n, steps, L, B + t0, C + t0, w->a2 + v * n, carry, w);
            SUFFIX(gate_output)(in, c, lanes, steps, w);
            SUFFIX(scatter_lanes)(w->out, lanes, steps, y + row, L);
        }
    }
    for (int64_t v = 0; v < vectors; v++) {
        int64_t c = blk.c0 + v * LANES, lanes = min_i64(LANES, blk.c1 - c);
        SUFFIX(store_state)(w->carry + v * n, n, lanes, final_state + (blk.seq * dim + c) * n);
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
        memcpy(w->dy_ssm, w->dy, (size_t)steps * sizeof(VEC));
        return;
    }
    for (int64_t j = 0; j < steps; j++) {
        VEC z = w->z[j], sig = SIGMOID(z);
        w->dy_ssm[j] = w->dy[j] * z * sig;
        w->d_gate[j] = sig * ((REAL)1 + z * ((REAL)1 - sig));
    }
}

/* The backward recurrence of one vector over one segment, state index by state index: recompute h and a from
 * the checkpoint (start, (n,)), then the adjoint, last step first, with carry (n,) holding a_{t+1} g_{t+1}
 * in and a_{t0} g_{t0} out. Accumulates dA (n,), w->y_ssm = C · h, w->q_A, w->g_B, and the per-lane
 * dB, dC of the segment. B, C: (n, length) rows of the group, from step t0. */
static void SUFFIX(backward_segment)(int64_t n, int64_t steps, int64_t length, const REAL *B, const REAL *C,
                                     const VEC *A, const VEC *a2, const VEC *start, VEC *carry, VEC *dA,
                                     SUFFIX(Scratch) *w) {
    const VEC *restrict dt = w->dt, *restrict x = w->x, *restrict dys = w->dy_ssm;
    VEC *restrict y = w->y_ssm, *restrict qA = w->q_A, *restrict gB = w->g_B;
    VEC *restrict states = w->states, *restrict a = w->decays;
    for (int64_t j = 0; j < steps; j++) y[j] = qA[j] = gB[j] = SPLAT(0);
    for (int64_t i = 0; i < n; i++) {
        const REAL *B_i = B + i * length, *C_i = C + i * length;                    /* (steps,) */
        VEC *restrict dB = w->dB_lanes + i * steps, *restrict dC = w->dC_lanes + i * steps; /* (steps,) */
        VEC h = states[0] = start[i];
        for (int64_t j = 0; j < steps; j++) {
            a[j] = DECAY(dt[j] * a2[i]);
            states[j + 1] = h = a[j] * h + x[j] * B_i[j];
            y[j] += C_i[j] * h;
        }
        VEC ga = carry[i], dA_i = SPLAT(0);
        for (int64_t j = steps - 1; j >= 0; j--) {
            VEC g = C_i[j] * dys[j] + ga;   /* g_t */
            VEC q = g * a[j] * states[j]; /* ∂L/∂(Δ_t A) */
            dA_i += q * dt[j];
            qA[j] += q * A[i];
            gB[j] += g * B_i[j];
            dB[j] += g * x[j];
            dC[j] += dys[j] * states[j + 1];
            ga = a[j] * g;
        }
        carry[i] = ga;
        dA[i] += dA_i;
    }
}

/* From the segment's sums: dz = dy (y_ssm + D u) silu'(z), du = Δ Σ_n g B + D dy_ssm,
 * dΔ = (Σ_n q A + u Σ_n g B) softplus'(delta + bias), written to their rows; adds dD and d delta_bias. */
static void SUFFIX(step_grads)(const ScanShape *s, const SUFFIX(ScanInputs) *in, int64_t offset, int64_t c,
                               int64_t lanes, int64_t steps, SUFFIX(Scratch) *w, VEC *dD, VEC *dbias,
                               const SUFFIX(ScanGrads) *out) {
    const int64_t L = s->length;
    const VEC D = SUFFIX(channels)(in->D ? in->D + c : NULL, lanes);
    const VEC *restrict dy = w->dy, *restrict dys = w->dy_ssm, *restrict u = w->u, *restrict dt = w->dt;
    const VEC *restrict qA = w->q_A, *restrict gB = w->g_B;
    VEC *restrict o = w->out, dD_sum = *dD, dbias_sum = *dbias;
    if (in->z) {
        for (int64_t j = 0; j < steps; j++) o[j] = dy[j] * (w->y_ssm[j] + D * u[j]) * w->d_gate[j];
        SUFFIX(scatter_lanes)(o, lanes, steps, out->dz + offset, L);
    }
    for (int64_t j = 0; j < steps; j++) {
        o[j] = dt[j] * gB[j] + D * dys[j];
        dD_sum += dys[j] * u[j];
    }
    SUFFIX(scatter_lanes)(o, lanes, steps, out->du + offset, L);
    for (int64_t j = 0; j < steps; j++) {
        VEC d_dt = qA[j] + u[j] * gB[j];
        if (s->delta_softplus) d_dt *= w->d_softplus[j];
        dbias_sum += o[j] = d_dt;
    }
    SUFFIX(scatter_lanes)(o, lanes, steps, out->ddelta + offset, L);
    *dD = dD_sum;
    *dbias = dbias_sum;
}

/* dst (n, length) rows from step t0 += the lane sums of src (n, steps); then src = 0. */
static void SUFFIX(add_lane_sums)(int64_t n, int64_t steps, VEC *src, REAL *dst, int64_t length) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < steps; j++) {
            REAL acc = 0;
            for (int64_t l = 0; l < LANES; l++) acc += src[i * steps + j][l];
            dst[i * length + j] += acc;
        }
    memset(src, 0, (size_t)(n * steps) * sizeof(VEC));
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
        SUFFIX(load_state)(d_final ? d_final + (blk.seq * dim + c) * n : NULL, n, lanes, w->carry + v * n);
    }
    memset(w->dB_lanes, 0, (size_t)(2 * n * K) * sizeof(VEC));
    for (int64_t k = (q.end - q.start + K - 1) / K - 1; k >= 0; k--) {
        int64_t t0 = q.start + k * K, steps = min_i64(K, q.end - t0);
        for (int64_t v = 0; v < vectors; v++) {
            int64_t c = blk.c0 + v * LANES, lanes = min_i64(LANES, blk.c1 - c), row = (q.row * dim + c) * L + t0;
            if (k > 0) { /* the previous segment of these channels, for the next pass of this loop */
                int64_t prev = row - K;
                const REAL *reads[] = {in->u + prev, in->delta + prev, dy + prev, in->z ? in->z + prev : NULL};
                REAL *writes[] = {out->du + prev, out->ddelta + prev, out->dz ? out->dz + prev : NULL};
                for (int r = 0; r < 4; r++)
                    if (reads[r]) SUFFIX(prefetch_rows)(reads[r], L, lanes, K, 0);
                for (int r = 0; r < 3; r++)
                    if (writes[r]) SUFFIX(prefetch_rows)(writes[r], L, lanes, K, 1);
            }
            SUFFIX(load_state)(checkpoints + ((q.slot0 + k) * dim + c) * n, n, lanes, w->start);
            SUFFIX(step_inputs)(s, in, row, c, lanes, steps, s->delta_softplus, w);
            if (in->z) SUFFIX(gather_lanes)(in->z + row, L, lanes, steps, w->z);
            SUFFIX(gather_lanes)(dy + row, L, lanes, steps, w->dy);
            SUFFIX(gate_input_grad)(in, steps, w);
            SUFFIX(backward_segment)(n, steps, L, in->B + bc + t0, in->C + bc + t0, w->A + v * n, w->a2 + v * n,
                                     w->start, w->carry + v * n, w->dA + v * n, w);
            SUFFIX(step_grads)(s, in, row, c, lanes, steps, w, w->dD + v, w->dbias + v, out);
        }
        SUFFIX(add_lane_sums)(n, steps, w->dB_lanes, dB_sum + bc + t0, L);
        SUFFIX(add_lane_sums)(n, steps, w->dC_lanes, dC_sum + bc + t0, L);
    }
    for (int64_t v = 0; v < vectors; v++) {
        int64_t c = blk.c0 + v * LANES, lanes = min_i64(LANES, blk.c1 - c), sc = blk.seq * dim + c;
        SUFFIX(store_state)(w->carry + v * n, n, lanes, out->dh0 + sc * n); /* a_start g_start */
        SUFFIX(store_state)(w->dA + v * n, n, lanes, out->dA + sc * n);
        for (int64_t l = 0; l < lanes; l++) {
            if (out->dD) out->dD[sc + l] = w->dD[v][l];
            if (out->ddelta_bias) out->ddelta_bias[sc + l] = w->dbias[v][l];
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
#undef SPLAT

#endif
