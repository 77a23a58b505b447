"""Fused selective-scan kernels: the forward writes y (+ final state, + state checkpoints every CHUNK steps);
the backward recomputes the recurrence chunk by chunk from those checkpoints and runs the adjoint (reverse)
scan. The expanded state (b, d, l, n) never touches HBM.

Work split: one program owns BLOCK_D channels of one group of one sequence and keeps their (n, BLOCK_D)
state in registers; it walks the sequence in chunks (fwd_chunk steps forward, bwd_chunk backward). Inside
a chunk the recurrence h_t = a_t h_{t-1} + b_t (a = exp(Δ A), b = Δ B u) is an associative scan over time
of the affine maps (a_t, b_t) on a (steps, n, BLOCK_D) register tile. A "sequence" is a batch row, or with
cu_seqlens one packed sequence of the single row, so a program never crosses a state reset.

Checkpoints: h every `chunk` steps, (slots, d, n) float32 (n / chunk floats per (b, d, l): 2 by default); a
sequence's k-th checkpoint lives in slot `slot0 + k` with slot0 = row · ceil(L / chunk), or
cu_seqlens[s] // chunk + s when packed (at most L // chunk + num_seqs + 1 slots, whatever the lengths), so
every shape depends only on the input shapes.

Backward, per checkpoint interval from the last, in tiles of the whole interval or of its two halves (the
later half starting from the mid-interval state, recomputed from the checkpoint): recompute h_t; with
dy_ssm = dy · silu(z) and g_t = dL/dh_t, the adjoint recurrence g_t = C_t dy_ssm_t + a_{t+1} g_{t+1} is a reverse scan of
(a_{t+1}, C_t dy_ssm_t); then, using a_t h_{t-1} = h_t − b_t,
  dΔ_t = Σ_n g_t (h_t − b_t) A + u_t Σ_n g_t B_t     du_t = Δ_t Σ_n g_t B_t + D dy_ssm_t
  dA  += Σ_t g_t (h_t − b_t) Δ_t                     dB_t = Σ_d g_t Δ_t u_t,  dC_t = Σ_d dy_ssm_t h_t
  dh_init = a_start g_start.
dB/dC sum over channel blocks with float32 atomics or per-block partial buffers; dA, dD, dΔ-bias are
per-sequence partials summed by the caller.

Segments (`ScanConfig.segment` steps, 0 = off): at small batch × long L, one program per (channel block,
sequence) leaves most SMs idle (b1 × d1536 at 16 channels a program: 96 programs), and each walks the whole
sequence. The recurrence is linear, so L splits into segments run side by side: a summary pass computes each
segment's state from zero, S_j, and ΣΔ_j over it (its decay Π_t exp(Δ_t A) = exp(A ΣΔ_j)); then each segment's
program starts from h_init = exp(A ΣΔ_{j-1}) (… (exp(A ΣΔ_0) h0 + S_0) …) + S_{j-1}, folded over the segments
before it, and runs as a sequence of its own. The backward does the same for the adjoint in reverse: with
ĝ_j = Ā_{s_j} g_{s_j} (what segment j hands to segment j-1) and, from zero, Λ_j = Σ_{t∈j} (Π_{s_j≤u≤t} Ā_u) C_t
dy_ssm_t, ĝ_j = Λ_j + exp(A ΣΔ_j) ĝ_{j+1} with ĝ_S = dL/dh_T; segment k starts its adjoint from ĝ_{k+1}.
The forward pays one extra recurrence (the summary), the backward one extra pass over Δ, C and dy; segments
are used only where the programs would not fill the GPU (default_config). Not with cu_seqlens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from mambalab.ops.triton import common
from mambalab.ops.triton.common import INTERPRETED, LOG2E, affine_combine, sigmoid, softplus

__all__ = ["INTERPRETED", "ScanConfig", "checkpoint_slots", "default_config", "scan_backward", "scan_forward"]


@dataclass(frozen=True)
class ScanConfig:
    """Tile sizes and code variants of the two kernels.

    - block_d / bwd_block_d, fwd_warps / bwd_warps: channels and warps per program, forward / backward.
    - chunk: the checkpoint interval; fwd_chunk: steps per forward iteration (must divide chunk); bwd_chunk:
      steps per backward tile, chunk or chunk / 2 (each interval in two halves, see _scan_bwd_kernel).
    - bwd_sub: channels each backward thread owns (bwd_block_d = bwd_sub sub-blocks of bwd_block_d / bwd_sub
      channels on lanes), so that the dB/dC channel sums are pre-reduced in registers before crossing lanes.
    - bwd_partial_dbc: dB/dC summed over channel blocks through per-block partial buffers, else atomics.
    - bwd_reuse_decay: the adjoint's decay Ā_{t+1} taken from the recomputed Ā of the next step (a shift
      along the steps, free in registers) instead of recomputed from a second Δ tile (no second Δ load; Δ at
      the step after a tile comes from the previously processed tile).
    - bwd_forward_adjoint: the adjoint's reverse scan run as a forward scan over the flipped steps (Triton
      lowers `reverse=True` with lane reversals of every operand; an in-thread flip is free).
    - fwd_maxnreg / bwd_maxnreg: a cap on registers per thread (more resident warps, possibly spills); None:
      the compiler's choice.
    - segment: steps per segment along L run by programs side by side (a multiple of chunk; 0: one segment per
      sequence); see the module docstring."""

    block_d: int = 16
    chunk: int = 8
    fwd_warps: int = 1
    fwd_chunk: int = 8
    bwd_partial_dbc: bool = False
    bwd_block_d: int = 8
    bwd_warps: int = 1
    bwd_chunk: int = 8
    bwd_sub: int = 1
    bwd_reuse_decay: bool = True
    bwd_forward_adjoint: bool = True
    fwd_maxnreg: int | None = None
    bwd_maxnreg: int | None = None
    segment: int = 0

    def __post_init__(self):
        if self.chunk % self.fwd_chunk:
            raise ValueError(f"ScanConfig: fwd_chunk={self.fwd_chunk} must divide chunk={self.chunk}")
        if self.bwd_chunk not in (self.chunk, self.chunk // 2):
            raise ValueError(f"ScanConfig: bwd_chunk={self.bwd_chunk}, expected chunk={self.chunk} or half of it")
        if self.bwd_block_d % self.bwd_sub:
            raise ValueError(f"ScanConfig: bwd_sub={self.bwd_sub} must divide bwd_block_d={self.bwd_block_d}")
        if self.segment % self.chunk:
            raise ValueError(f"ScanConfig: segment={self.segment} must be a multiple of chunk={self.chunk}")


PARTIAL_DBC_MAX_BYTES = 2 << 30


SEGMENT_ALIGN = 64  # segment lengths are multiples of this (and so of every chunk)
MIN_SEGMENT = 512  # shorter segments spend more on the fold over the segments before them than they gain
FILLED_PER_SM = 4  # forward programs per SM from which the GPU counts as filled: no segments
PROGRAMS_PER_SM = 8  # otherwise, segments are added until the forward has this many programs per SM


def default_config(dim_per_group: int, n: int, batch: int = 1, groups: int = 1, length: int = 0,
                   sm_count: int = 0, varlen: bool = False) -> ScanConfig:
    """The tiles chosen by sweeping on a GPU at N=16 (the sweeps: benchmarks/notes/scan.md): one warp per
    program, 16 channels × 8 steps forward, checkpoints every 8 steps (two floats per (b, d, l) at n = 16), 8
    channels × one whole 8-step interval per backward tile, the adjoint as a forward scan over flipped steps with
    its decay reused from the recomputed Ā. The backward sums dB/dC over channel blocks through per-block partial
    buffers (faster than float32 atomics) while those stay under PARTIAL_DBC_MAX_BYTES (they hold
    2·b·G·(d/G/8)·n·l floats), else with atomics."""
    config = ScanConfig()
    n_blk = triton.cdiv(dim_per_group, config.bwd_block_d)
    partial_bytes = 2 * 4 * batch * groups * n_blk * n * length
    programs = batch * groups * triton.cdiv(dim_per_group, config.block_d)
    segment = 0 if varlen else segment_length(length, programs, sm_count)
    return ScanConfig(bwd_partial_dbc=partial_bytes <= PARTIAL_DBC_MAX_BYTES, segment=segment)


def segment_length(length: int, programs: int, sm_count: int) -> int:
    """Steps per segment so that programs × segments reaches PROGRAMS_PER_SM per SM, each segment at least
    MIN_SEGMENT steps; 0 (no segments) when the programs already fill the GPU (FILLED_PER_SM) or the sequence
    is short."""
    if programs >= FILLED_PER_SM * sm_count:
        return 0
    wanted = triton.cdiv(PROGRAMS_PER_SM * sm_count, max(programs, 1))
    n_segments = min(wanted, length // MIN_SEGMENT)
    if n_segments <= 1:
        return 0
    return triton.cdiv(triton.cdiv(length, n_segments), SEGMENT_ALIGN) * SEGMENT_ALIGN


def checkpoint_slots(rows: int, length: int, chunk: int, varlen: bool) -> int:
    """Number of (d, n) checkpoint slots; see the module docstring."""
    return length // chunk + rows + 1 if varlen else rows * triton.cdiv(length, chunk)


@triton.jit
def _sequence_bounds(cu_ptr, seq, length, n_chunks, CHUNK: tl.constexpr, VARLEN: tl.constexpr):
    """(batch row, first step, end step, first checkpoint slot) of sequence `seq`."""
    if VARLEN:
        start = tl.load(cu_ptr + seq).to(tl.int32)
        end = tl.load(cu_ptr + seq + 1).to(tl.int32)
        row = seq * 0
        slot0 = start // CHUNK + seq
    else:
        start = seq * 0
        end = seq * 0 + length
        row = seq
        slot0 = seq * n_chunks
    return row.to(tl.int64), start, end, slot0.to(tl.int64)


@triton.jit
def _segment_bounds(start, end, slot0, SEG: tl.constexpr, CKPT: tl.constexpr):
    """(segment index, first step, end step, first checkpoint slot) of this program's segment of the sequence
    [start, end): program axis 2 (the whole sequence when SEG = 0)."""
    k = tl.program_id(2)
    if SEG > 0:
        start = start + k * SEG
        end = tl.minimum(end, start + SEG)
        slot0 = slot0 + k * (SEG // CKPT)
    return k, start, end, slot0


@triton.jit
def _delta(raw, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Δ = softplus(delta + bias) on a loaded tile of channels (bias broadcastable to it), 0 where masked (so
    exp(ΔA) = 1, ΔBu = 0). Also returns the pre-softplus value (for softplus' derivative)."""
    x = raw.to(tl.float32)
    if HAS_BIAS:
        x = x + bias
    dt = x
    if SOFTPLUS:
        dt = softplus(x)
    return tl.where(mask, dt, 0.0), x


@triton.jit
def _load_td(base, t_offs, mask, PRESENT: tl.constexpr):
    """A tile of steps × channels at base + t_offs (time offsets broadcast over the channels of base), in
    float32 (zeros when the tensor is absent). Converted where it is loaded: the conversion then runs on the
    load's few values per thread, not on every copy of the tile broadcast over N (triton 3.6 places it after
    the broadcast otherwise; benchmarks/notes/scan.md)."""
    if PRESENT:
        tile = tl.load(base + t_offs, mask=mask, other=0.0).to(tl.float32)
    else:
        tile = tl.zeros(mask.shape, dtype=tl.float32)
    return tile


@triton.jit
def _load_tn(base, t, s_l, mask):
    """A (steps, NP) tile of B or C at steps t, in float32 (converted where loaded, as in _load_td)."""
    return tl.load(base + t[:, None] * s_l, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _accumulate(ptrs, value, mask, PARTIAL: tl.constexpr):
    if PARTIAL:
        tl.store(ptrs, value, mask=mask)
    else:
        tl.atomic_add(ptrs, value, mask=mask)


@triton.jit
def _chunk_states(h, dA, dBu, first):
    """The states h_t of consecutive steps (axis 0) from the state h before them, as the associative scan over
    time of the affine maps (Ā_t, B̄_t u_t) = (dA, dBu), tiles (STEPS, *h.shape); `first` (broadcastable to
    them) is true at the first step, where the carried state enters."""
    carried = dBu + tl.where(first, dA * h[None], 0.0)
    _, hs = tl.associative_scan((dA, carried), axis=0, combine_fn=affine_combine)
    return hs


# Tile layout. Every 3-D tile is (CHUNK, N, BLOCK_D) with channels last: Triton's default layout gives the
# last axis to the lanes (and warps), so a thread owns whole channels and holds all CHUNK steps (and a share
# of N) in registers. The scan over time (axis 0) runs inside a thread with no shuffles; sums over N cross
# at most a few lanes, and only the backward's dB/dC (sums over channels) cross the channel lanes. Inputs
# are loaded one chunk ahead into registers (loop-carried), so their latency overlaps the current chunk.


@triton.jit
def _scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, cu_ptr,
    y_ptr, hT_ptr, ckpt_ptr, seg_h_ptr, seg_dsum_ptr,
    length, dim, dim_per_group, n_chunks, n_segs,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n, s_B_l, s_C_b, s_C_g, s_C_n, s_C_l,
    s_z_b, s_z_d, s_z_l, s_h0_s, s_h0_d, s_h0_n, s_y_b, s_y_d, s_y_l,
    N: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, CKPT: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, VARLEN: tl.constexpr, STORE_CKPT: tl.constexpr, SEG: tl.constexpr,
    SUMMARY: tl.constexpr,
):
    """CHUNK steps per iteration; with STORE_CKPT, the state every CKPT steps (a multiple of CHUNK). With SEG,
    one segment per program (axis 2), started from the fold of the summaries before it; with SUMMARY, the
    summary pass: the segment's state from zero and its ΣΔ into seg_h / seg_dsum (rows, n_segs, d, ·), no y."""
    pid_blk = tl.program_id(0)
    seq = tl.program_id(1)
    n_blk = tl.cdiv(dim_per_group, BLOCK_D)
    grp = pid_blk // n_blk
    offs_c = (pid_blk % n_blk) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_c < dim_per_group
    offs_d = grp * dim_per_group + offs_c  # channels of this program                       (BD,)
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    mask_nd = mask_n[:, None] & mask_d[None, :]
    offs_t = tl.arange(0, CHUNK)
    row, start, end, slot0 = _sequence_bounds(cu_ptr, seq, length, n_chunks, CKPT, VARLEN)
    segment, start, end, slot0 = _segment_bounds(start, end, slot0, SEG, CKPT)

    A2 = tl.load(A_ptr + offs_n[:, None] * s_A_n + offs_d[None, :] * s_A_d, mask=mask_nd, other=0.0)
    A2 = A2.to(tl.float32) * LOG2E  # exp(Δ A) = exp2(Δ · A log2 e)                          (NP, BD)
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    h = tl.zeros([NP, BLOCK_D], dtype=tl.float32)  # state                                   (NP, BD)
    if HAS_H0:
        h = tl.load(h0_ptr + seq * s_h0_s + offs_n[:, None] * s_h0_n + offs_d[None, :] * s_h0_d,
                    mask=mask_nd, other=0.0).to(tl.float32)
    nd_offs = offs_n[:, None] + offs_d[None, :] * N  # (n, d) in contiguous (·, d, n) tensors
    if SEG > 0:  # noqa: SIM102  (compile-time flags)
        if not SUMMARY:  # fold the summaries of the segments before this one into h
            for j in range(segment):
                seg = seq * n_segs + j
                h_j = tl.load(seg_h_ptr + seg * dim * N + nd_offs, mask=mask_nd, other=0.0)  # (NP, BD)
                dsum_j = tl.load(seg_dsum_ptr + seg * dim + offs_d, mask=mask_d, other=0.0)  # (BD,)
                h = tl.exp2(dsum_j[None, :] * A2) * h + h_j
    dsum = tl.zeros([BLOCK_D], dtype=tl.float32)  # ΣΔ over the segment (SUMMARY)

    u_base = u_ptr + row * s_u_b + offs_d[None, :] * s_u_d
    dt_base = dt_ptr + row * s_dt_b + offs_d[None, :] * s_dt_d
    z_base = z_ptr + row * s_z_b + offs_d[None, :] * s_z_d
    y_base = y_ptr + row * s_y_b + offs_d[None, :] * s_y_d
    B_base = B_ptr + row * s_B_b + grp * s_B_g + offs_n[None, :] * s_B_n
    C_base = C_ptr + row * s_C_b + grp * s_C_g + offs_n[None, :] * s_C_n
    first = (offs_t == 0)[:, None, None]
    last = (offs_t == CHUNK - 1)[:, None, None]

    t = start + offs_t
    mask_td = (t < end)[:, None] & mask_d[None, :]
    mask_tn = (t < end)[:, None] & mask_n[None, :]
    dt_raw = _load_td(dt_base, t[:, None] * s_dt_l, mask_td, True)
    u_raw = _load_td(u_base, t[:, None] * s_u_l, mask_td, True)
    z_raw = _load_td(z_base, t[:, None] * s_z_l, mask_td, HAS_Z)
    B_raw = _load_tn(B_base, t, s_B_l, mask_tn)  # (T, NP)
    C_raw = _load_tn(C_base, t, s_C_l, mask_tn)
    for t0 in range(start, end, CHUNK):
        if STORE_CKPT:  # noqa: SIM102  (compile-time flag, then a run-time test)
            if (t0 - start) % CKPT == 0:
                tl.store(ckpt_ptr + (slot0 + (t0 - start) // CKPT) * dim * N + nd_offs, h, mask=mask_nd)
        t = t0 + offs_t
        mask_td = (t < end)[:, None] & mask_d[None, :]
        dt, _ = _delta(dt_raw, mask_td, bias[None, :], HAS_BIAS, SOFTPLUS)  # Δ                 (T, BD)
        u, z, Bt, Ct = u_raw, z_raw, B_raw, C_raw  # (T, BD), (T, BD), (T, NP), (T, NP)
        # Prefetch the next chunk (masked off past the end).
        t_next = t + CHUNK
        mask_next = (t_next < end)[:, None] & mask_d[None, :]
        mask_next_n = (t_next < end)[:, None] & mask_n[None, :]
        dt_raw = _load_td(dt_base, t_next[:, None] * s_dt_l, mask_next, True)
        u_raw = _load_td(u_base, t_next[:, None] * s_u_l, mask_next, True)
        z_raw = _load_td(z_base, t_next[:, None] * s_z_l, mask_next, HAS_Z)
        B_raw = _load_tn(B_base, t_next, s_B_l, mask_next_n)
        C_raw = _load_tn(C_base, t_next, s_C_l, mask_next_n)

        dA = tl.exp2(dt[:, None, :] * A2[None, :, :])  # Ā_t = exp(Δ_t A)                     (T, NP, BD)
        dBu = (dt * u)[:, None, :] * Bt[:, :, None]  # B̄_t u_t = Δ_t B_t u_t                  (T, NP, BD)
        hs = _chunk_states(h, dA, dBu, first)  # h_t                                         (T, NP, BD)
        h = tl.sum(tl.where(last, hs, 0.0), axis=0)  # state after the chunk (masked steps keep it)
        if SUMMARY:
            dsum += tl.sum(dt, axis=0)
        else:
            y = tl.sum(hs * Ct[:, :, None], axis=1)  # C_t · h_t                             (T, BD)
            if HAS_D:
                y += Dv[None, :] * u
            if HAS_Z:
                y *= z * sigmoid(z)
            tl.store(y_base + t[:, None] * s_y_l, y.to(y_ptr.dtype.element_ty), mask=mask_td)

    if SUMMARY:
        seg = seq * n_segs + segment
        tl.store(seg_h_ptr + seg * dim * N + nd_offs, h, mask=mask_nd)
        tl.store(seg_dsum_ptr + seg * dim + offs_d, dsum, mask=mask_d)
    else:  # the final state, from the last segment
        tl.store(hT_ptr + seq * dim * N + nd_offs, h, mask=mask_nd & (nd_offs * 0 + segment == n_segs - 1))


# Backward tiles are 4-D, (STEPS, SUB, NP, DI): a program's BLOCK_D = SUB · DI channels are SUB sub-blocks of
# DI channels, channel (s, i) = s · DI + i. The default layout gives DI to the lanes first, then N, so a thread
# holds all STEPS steps of SUB channels (one per sub-block) and a share of N: the sums over channels (dB, dC)
# add the SUB sub-blocks inside the thread before crossing the DI lanes. Channel tiles are (STEPS, SUB, DI),
# B/C tiles (STEPS, NP), states (SUB, NP, DI).


@triton.jit
def _load_bwd_inputs(dt_base, u_base, z_base, dy_base, B_base, C_base, t, start, end, mask_d, mask_n,
                     s_dt_l, s_u_l, s_z_l, s_dy_l, s_B_l, s_C_l, HAS_Z: tl.constexpr, REUSE_DECAY: tl.constexpr):
    """The backward's inputs at steps t (masked to [start, end)), in float32: Δ raw, Δ raw at
    t + 1 (not loaded with REUSE_DECAY: Δ raw again), u, dy, z (STEPS, SUB, DI) and B, C (STEPS, NP)."""
    mask_t = (t >= start) & (t < end)
    mask_td = mask_t[:, None, None] & mask_d[None, :, :]
    mask_tn = mask_t[:, None] & mask_n[None, :]
    t3 = t[:, None, None]
    dt_raw = _load_td(dt_base, t3 * s_dt_l, mask_td, True)
    if REUSE_DECAY:
        dtn_raw = dt_raw
    else:
        dtn_raw = _load_td(dt_base, (t3 + 1) * s_dt_l, (t3 + 1 < end) & mask_td, True)
    u_raw = _load_td(u_base, t3 * s_u_l, mask_td, True)
    dy_raw = _load_td(dy_base, t3 * s_dy_l, mask_td, True)
    z_raw = _load_td(z_base, t3 * s_z_l, mask_td, HAS_Z)
    B_raw = _load_tn(B_base, t, s_B_l, mask_tn)
    C_raw = _load_tn(C_base, t, s_C_l, mask_tn)
    return dt_raw, dtn_raw, u_raw, dy_raw, z_raw, B_raw, C_raw


@triton.jit
def _first_last(t):
    """Masks of the first and the last step of a (STEPS, SUB, NP, DI) tile over steps t."""
    offs_t = tl.arange(0, t.shape[0])
    return (offs_t == 0)[:, None, None, None], (offs_t == t.shape[0] - 1)[:, None, None, None]


@triton.jit
def _advance(h, dt_raw, u_raw, B_raw, t, end, mask_d, bias, A2, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """The state (SUB, NP, DI) after steps t, starting from h before them (steps past `end` keep it)."""
    mask_td = (t < end)[:, None, None] & mask_d[None, :, :]
    dt, _ = _delta(dt_raw, mask_td, bias[None, :, :], HAS_BIAS, SOFTPLUS)  # (STEPS, SUB, DI)
    dA = tl.exp2(dt[:, :, None, :] * A2[None])  # (STEPS, SUB, NP, DI)
    dBu = (dt * u_raw)[:, :, None, :] * B_raw[:, None, :, None]
    first, last = _first_last(t)
    hs = _chunk_states(h, dA, dBu, first)
    return tl.sum(tl.where(last, hs, 0.0), axis=0)


@triton.jit
def _last_two(l_last, l_prev, l_two, r_last, r_prev, r_two):
    """Combine of a scan yielding, at each row, the row before it: a segment is represented by its last value
    and the one before it (r_two = 0: a single row), l preceding r. In-thread, with constant r_two, it
    compiles to register moves."""
    return r_last, tl.where(r_two != 0, r_prev, l_last), r_two | 1


@triton.jit
def _next_rows(x):
    """x one row (step) later along axis 0, row by row; the last row is x's own (the caller replaces it). A
    forward scan over the flipped rows (the flips cost nothing in registers)."""
    flipped = tl.flip(x, 0)
    _, prev, _ = tl.associative_scan((flipped, flipped, tl.zeros(x.shape, dtype=tl.int32)), axis=0,
                                     combine_fn=_last_two)
    return tl.flip(prev, 0)


@triton.jit
def _adjoint_scan(a_next, c, FORWARD: tl.constexpr):
    """g_t = c_t + a_next_t g_{t+1} along axis 0 (g after the last row = 0): a reverse scan, or with FORWARD
    a forward scan over the flipped rows (Triton lowers `reverse=True` by reversing the lanes of every
    operand and result, even for an axis inside the thread; a flip inside the thread costs nothing)."""
    if FORWARD:
        _, gs = tl.associative_scan((tl.flip(a_next, 0), tl.flip(c, 0)), axis=0, combine_fn=affine_combine)
        gs = tl.flip(gs, 0)
    else:
        _, gs = tl.associative_scan((a_next, c), axis=0, combine_fn=affine_combine, reverse=True)
    return gs


@triton.jit
def _channel_sum(x):
    """Σ over the channels of a (STEPS, SUB, NP, DI) tile: the SUB sub-blocks in registers, then the DI lanes."""
    return tl.sum(tl.sum(x, axis=1), axis=2)  # (STEPS, NP)


@triton.jit
def _bwd_steps(
    h_start, g_carry, dA_acc, dD_acc, dbias_acc, dt_after,
    dt_raw, dtn_raw, u_raw, dy_raw, z_raw, B_raw, C_raw,
    t, end, mask_d, mask_n, A, A2, bias, Dv, du_base, ddt_base, dz_base, s_du_l, s_ddt_l, s_dz_l, dBC_base,
    dB_ptr, dC_ptr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    DBC_PARTIAL: tl.constexpr, REUSE_DECAY: tl.constexpr, FORWARD_ADJOINT: tl.constexpr,
):
    """The backward of steps t (STEPS consecutive steps) given the state h_start (SUB, NP, DI) before them,
    g_carry = dL/dh at the step after them and (with REUSE_DECAY) dt_after = Δ there (SUB, DI), 0 past the
    end: stores du, dΔ, dz, dB, dC there; returns the updated g_carry, dA, dD, dΔ-bias accumulators and Δ at
    the first of these steps (the next call's dt_after)."""
    mask_t = t < end
    mask_td = mask_t[:, None, None] & mask_d[None, :, :]  # (STEPS, SUB, DI)
    mask_tn = mask_t[:, None] & mask_n[None, :]  # (STEPS, NP)
    first, last = _first_last(t)
    dt, raw = _delta(dt_raw, mask_td, bias[None, :, :], HAS_BIAS, SOFTPLUS)  # (STEPS, SUB, DI)
    u, dy, z = u_raw, dy_raw, z_raw  # (STEPS, SUB, DI)
    Bt = B_raw[:, None, :, None]  # (STEPS, 1, NP, 1)
    Ct = C_raw[:, None, :, None]

    # Recompute the forward states of these steps.
    dtu = dt * u  # (STEPS, SUB, DI)
    dA = tl.exp2(dt[:, :, None, :] * A2[None])  # Ā_t = exp(Δ_t A)                   (STEPS, SUB, NP, DI)
    dBu = dtu[:, :, None, :] * Bt  # B̄_t u_t                                          (STEPS, SUB, NP, DI)
    hs = _chunk_states(h_start, dA, dBu, first)  # h_t                                (STEPS, SUB, NP, DI)

    # Through the gate and the skip: dy_ssm = dL/d(C·h).
    dy_ssm = dy
    if HAS_Z:
        sig_z = sigmoid(z)
        pre_gate = tl.sum(hs * Ct, axis=2)  # (STEPS, SUB, DI)
        if HAS_D:
            pre_gate += Dv[None, :, :] * u
        dz = dy * pre_gate * sig_z * (1.0 + z * (1.0 - sig_z))
        tl.store(dz_base + t[:, None, None] * s_dz_l, dz.to(dz_base.dtype.element_ty), mask=mask_td)
        dy_ssm = dy * z * sig_z
    du = tl.zeros(dy.shape, dtype=tl.float32)
    if HAS_D:
        dD_acc += tl.sum(dy_ssm * u, axis=0)
        du = dy_ssm * Dv[None, :, :]
    dC = _channel_sum(dy_ssm[:, :, None, :] * hs)  # (STEPS, NP)
    _accumulate(dC_ptr + dBC_base + t[:, None], dC, mask_tn, DBC_PARTIAL)

    # Adjoint: g_t = C_t dy_ssm_t + a_{t+1} g_{t+1}, the later steps entering at the last step.
    if REUSE_DECAY:  # Ā_{t+1} = the next row of Ā; for the last row, from Δ at the step after the tile
        a_after = tl.exp2(dt_after[:, None, :] * A2)  # (SUB, NP, DI)
        a_next = tl.where(last, a_after[None], _next_rows(dA))  # (STEPS, SUB, NP, DI)
        first_step = (tl.arange(0, t.shape[0]) == 0)[:, None, None]  # (STEPS, 1, 1)
        dt_after = tl.sum(tl.where(first_step, dt, 0.0), axis=0)  # Δ at the first step, for the next call
    else:
        mask_next = (t + 1 < end)[:, None, None] & mask_d[None, :, :]
        dt_next, _ = _delta(dtn_raw, mask_next, bias[None, :, :], HAS_BIAS, SOFTPLUS)  # Δ_{t+1}
        a_next = tl.exp2(dt_next[:, :, None, :] * A2[None])  # (STEPS, SUB, NP, DI)
    c = dy_ssm[:, :, None, :] * Ct + tl.where(last, a_next * g_carry[None], 0.0)
    gs = _adjoint_scan(a_next, c, FORWARD_ADJOINT)  # g_t                         (STEPS, SUB, NP, DI)
    g_carry = tl.sum(tl.where(first, gs, 0.0), axis=0)  # (SUB, NP, DI)

    h_decay = hs - dBu  # a_t h_{t-1}                                                 (STEPS, SUB, NP, DI)
    gB = tl.sum(gs * Bt, axis=2)  # Σ_n g_t B_t                                         (STEPS, SUB, DI)
    ddt = tl.sum(gs * h_decay * A[None], axis=2) + gB * u  # dL/dΔ_t                   (STEPS, SUB, DI)
    du += gB * dt
    dB = _channel_sum(gs * dtu[:, :, None, :])  # (STEPS, NP)
    _accumulate(dB_ptr + dBC_base + t[:, None], dB, mask_tn, DBC_PARTIAL)
    dA_acc += tl.sum(gs * h_decay * dt[:, :, None, :], axis=0)
    if SOFTPLUS:
        ddt = ddt * sigmoid(raw)
    ddt = tl.where(mask_td, ddt, 0.0)
    dbias_acc += tl.sum(ddt, axis=0)
    tl.store(du_base + t[:, None, None] * s_du_l, du.to(du_base.dtype.element_ty), mask=mask_td)
    tl.store(ddt_base + t[:, None, None] * s_ddt_l, ddt.to(ddt_base.dtype.element_ty), mask=mask_td)
    return g_carry, dA_acc, dD_acc, dbias_acc, dt_after


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, cu_ptr, ckpt_ptr, dy_ptr, dhT_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr, seg_g_ptr, seg_dsum_ptr,
    length, dim, dim_per_group, n_chunks, groups, n_segs,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n, s_B_l, s_C_b, s_C_g, s_C_n, s_C_l,
    s_z_b, s_z_d, s_z_l, s_dy_b, s_dy_d, s_dy_l,
    s_du_b, s_du_d, s_du_l, s_ddt_b, s_ddt_d, s_ddt_l, s_dz_b, s_dz_d, s_dz_l,
    N: tl.constexpr, NP: tl.constexpr, SUB: tl.constexpr, DI: tl.constexpr, CHUNK: tl.constexpr,
    STEPS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_DHT: tl.constexpr, VARLEN: tl.constexpr, DBC_PARTIAL: tl.constexpr,
    REUSE_DECAY: tl.constexpr, FORWARD_ADJOINT: tl.constexpr, SEG: tl.constexpr,
):
    """One checkpoint interval (CHUNK steps) per iteration, from the last back, over SUB · DI channels. With
    STEPS = CHUNK the whole interval is one tile. With STEPS = CHUNK / 2 it is two halves (half the registers
    per tile): the later half starts from the mid-interval state, which the previous iteration computed by
    advancing this interval's checkpoint through the earlier half (one extra half-interval forward scan, on
    inputs prefetched a whole iteration ahead); the earlier half starts from the checkpoint. dB/dC: float32
    atomics into (b, G, n, l), or with DBC_PARTIAL plain stores of this program's sums into
    (b, G, n_blk, n, l). With SEG, one segment per program (axis 2), its adjoint started from the fold of the
    later segments' summaries (Λ_j, ΣΔ_j in seg_g / seg_dsum, from _scan_bwd_summary_kernel); the per-sequence
    partials (dA, dD, dΔ-bias) are then per (sequence, segment)."""
    BLOCK_D: tl.constexpr = SUB * DI
    pid_blk = tl.program_id(0)
    seq = tl.program_id(1)
    n_blk = tl.cdiv(dim_per_group, BLOCK_D)
    grp = pid_blk // n_blk
    offs_c = (pid_blk % n_blk) * BLOCK_D + tl.arange(0, SUB)[:, None] * DI + tl.arange(0, DI)[None, :]
    mask_d = offs_c < dim_per_group  # (SUB, DI)
    offs_d = grp * dim_per_group + offs_c  # (SUB, DI)
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    mask_nd = mask_n[None, :, None] & mask_d[:, None, :]  # (SUB, NP, DI)
    row, start, end, slot0 = _sequence_bounds(cu_ptr, seq, length, n_chunks, CHUNK, VARLEN)
    segment, start, end, slot0 = _segment_bounds(start, end, slot0, SEG, CHUNK)

    A = tl.load(A_ptr + offs_n[None, :, None] * s_A_n + offs_d[:, None, :] * s_A_d, mask=mask_nd, other=0.0)
    A = A.to(tl.float32)  # (SUB, NP, DI)
    A2 = A * LOG2E
    bias = tl.zeros([SUB, DI], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    Dv = tl.zeros([SUB, DI], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    nd_offs = offs_n[None, :, None] + offs_d[:, None, :] * N  # (n, d) offsets in contiguous (·, d, n) tensors
    g_carry = tl.zeros([SUB, NP, DI], dtype=tl.float32)  # dL/dh at the first step of the later interval
    if HAS_DHT:
        g_carry = tl.load(dhT_ptr + seq * dim * N + nd_offs, mask=mask_nd, other=0.0)
    if SEG > 0:  # ĝ_{k+1}: the later segments' summaries folded from the last (ĝ_j = Λ_j + exp(A ΣΔ_j) ĝ_{j+1})
        for i in range(n_segs - 1 - segment):
            seg = seq * n_segs + n_segs - 1 - i
            g_j = tl.load(seg_g_ptr + seg * dim * N + nd_offs, mask=mask_nd, other=0.0)  # (SUB, NP, DI)
            dsum_j = tl.load(seg_dsum_ptr + seg * dim + offs_d, mask=mask_d, other=0.0)  # (SUB, DI)
            g_carry = g_j + tl.exp2(dsum_j[:, None, :] * A2) * g_carry
    dA_acc = tl.zeros([SUB, NP, DI], dtype=tl.float32)
    dD_acc = tl.zeros([SUB, DI], dtype=tl.float32)
    dbias_acc = tl.zeros([SUB, DI], dtype=tl.float32)
    dt_after = tl.zeros([SUB, DI], dtype=tl.float32)  # Δ at the step after the current tile (REUSE_DECAY)

    u_base = u_ptr + row * s_u_b + offs_d[None, :, :] * s_u_d  # (1, SUB, DI)
    dt_base = dt_ptr + row * s_dt_b + offs_d[None, :, :] * s_dt_d
    z_base = z_ptr + row * s_z_b + offs_d[None, :, :] * s_z_d
    dy_base = dy_ptr + row * s_dy_b + offs_d[None, :, :] * s_dy_d
    du_base = du_ptr + row * s_du_b + offs_d[None, :, :] * s_du_d  # (1, SUB, DI); gradients in their inputs' layouts
    ddt_base = ddt_ptr + row * s_ddt_b + offs_d[None, :, :] * s_ddt_d
    dz_base = dz_ptr + row * s_dz_b + offs_d[None, :, :] * s_dz_d
    B_base = B_ptr + row * s_B_b + grp * s_B_g + offs_n[None, :] * s_B_n  # (1, NP)
    C_base = C_ptr + row * s_C_b + grp * s_C_g + offs_n[None, :] * s_C_n
    if DBC_PARTIAL:
        dBC_base = ((row * groups + grp) * n_blk + pid_blk % n_blk) * N * length + offs_n[None, :] * length
    else:
        dBC_base = (row * groups + grp) * N * length + offs_n[None, :] * length  # dB, dC: (b, G, n, l) fp32
    steps = tl.arange(0, STEPS)  # a half (STEPS < CHUNK: split) or the whole of an interval     (STEPS,)

    n_seq_chunks = tl.cdiv(end - start, CHUNK)
    t0 = start + (n_seq_chunks - 1) * CHUNK  # the last interval, loaded before the loop
    dt_lo, dtn_lo, u_lo, dy_lo, z_lo, B_lo, C_lo = _load_bwd_inputs(
        dt_base, u_base, z_base, dy_base, B_base, C_base, t0 + steps, start, end, mask_d, mask_n,
        s_dt_l, s_u_l, s_z_l, s_dy_l, s_B_l, s_C_l, HAS_Z, REUSE_DECAY)
    h_ck = tl.load(ckpt_ptr + (slot0 + n_seq_chunks - 1) * dim * N + nd_offs,
                   mask=mask_nd & (nd_offs * 0 + n_seq_chunks > 0), other=0.0)  # (SUB, NP, DI)
    if STEPS < CHUNK:
        dt_hi, dtn_hi, u_hi, dy_hi, z_hi, B_hi, C_hi = _load_bwd_inputs(
            dt_base, u_base, z_base, dy_base, B_base, C_base, t0 + STEPS + steps, start, end, mask_d, mask_n,
            s_dt_l, s_u_l, s_z_l, s_dy_l, s_B_l, s_C_l, HAS_Z, REUSE_DECAY)
        h_mid = _advance(h_ck, dt_lo, u_lo, B_lo, t0 + steps, end, mask_d, bias, A2, HAS_BIAS, SOFTPLUS)
    for k in range(n_seq_chunks):
        chunk_idx = n_seq_chunks - 1 - k
        t0 = start + chunk_idx * CHUNK
        if STEPS < CHUNK:  # the later half first, from the mid-interval state
            g_carry, dA_acc, dD_acc, dbias_acc, dt_after = _bwd_steps(
                h_mid, g_carry, dA_acc, dD_acc, dbias_acc, dt_after, dt_hi, dtn_hi, u_hi, dy_hi, z_hi, B_hi, C_hi,
                t0 + STEPS + steps, end, mask_d, mask_n, A, A2, bias, Dv, du_base, ddt_base, dz_base,
                s_du_l, s_ddt_l, s_dz_l, dBC_base, dB_ptr, dC_ptr, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, DBC_PARTIAL,
                REUSE_DECAY, FORWARD_ADJOINT)
        h_start = h_ck
        dt_c, dtn_c, u_c, dy_c, z_c, B_c, C_c = dt_lo, dtn_lo, u_lo, dy_lo, z_lo, B_lo, C_lo
        # Prefetch the previous interval (masked off before the start) and its checkpoint.
        tp = t0 - CHUNK
        dt_lo, dtn_lo, u_lo, dy_lo, z_lo, B_lo, C_lo = _load_bwd_inputs(
            dt_base, u_base, z_base, dy_base, B_base, C_base, tp + steps, start, end, mask_d, mask_n,
            s_dt_l, s_u_l, s_z_l, s_dy_l, s_B_l, s_C_l, HAS_Z, REUSE_DECAY)
        h_ck = tl.load(ckpt_ptr + (slot0 + chunk_idx - 1) * dim * N + nd_offs,
                       mask=mask_nd & (nd_offs * 0 + chunk_idx > 0), other=0.0)
        if STEPS < CHUNK:
            dt_hi, dtn_hi, u_hi, dy_hi, z_hi, B_hi, C_hi = _load_bwd_inputs(
                dt_base, u_base, z_base, dy_base, B_base, C_base, tp + STEPS + steps, start, end, mask_d, mask_n,
                s_dt_l, s_u_l, s_z_l, s_dy_l, s_B_l, s_C_l, HAS_Z, REUSE_DECAY)
        g_carry, dA_acc, dD_acc, dbias_acc, dt_after = _bwd_steps(
            h_start, g_carry, dA_acc, dD_acc, dbias_acc, dt_after, dt_c, dtn_c, u_c, dy_c, z_c, B_c, C_c,
            t0 + steps, end, mask_d, mask_n, A, A2, bias, Dv, du_base, ddt_base, dz_base,
            s_du_l, s_ddt_l, s_dz_l, dBC_base, dB_ptr, dC_ptr, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, DBC_PARTIAL,
                REUSE_DECAY, FORWARD_ADJOINT)
        if STEPS < CHUNK:  # the previous interval's mid state, for the next iteration
            h_mid = _advance(h_ck, dt_lo, u_lo, B_lo, tp + steps, end, mask_d, bias, A2, HAS_BIAS, SOFTPLUS)

    # dL/dh_init = a_start g_start (g_carry is dL/dh_T itself for an empty sequence: a = 1).
    mask_start = mask_d & ((start + 0 * offs_c) < end)  # (SUB, DI)
    raw0 = tl.load(dt_ptr + row * s_dt_b + offs_d * s_dt_d + start * s_dt_l, mask=mask_start, other=0.0)
    dt0, _ = _delta(raw0, mask_start, bias, HAS_BIAS, SOFTPLUS)  # (SUB, DI)
    dh0 = tl.exp2(dt0[:, None, :] * A2) * g_carry  # (SUB, NP, DI)
    tl.store(dh0_ptr + seq * dim * N + nd_offs, dh0, mask=mask_nd & (nd_offs * 0 + segment == 0))
    part = seq * n_segs + segment  # this program's slot of the per-(sequence, segment) partials
    tl.store(dA_ptr + part * dim * N + nd_offs, dA_acc, mask=mask_nd)
    tl.store(dD_ptr + part * dim + offs_d, dD_acc, mask=mask_d)
    tl.store(dbias_ptr + part * dim + offs_d, dbias_acc, mask=mask_d)


@triton.jit
def _scan_bwd_summary_kernel(
    dt_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, dy_ptr, seg_g_ptr, seg_dsum_ptr,
    length, dim, dim_per_group, n_segs,
    s_dt_b, s_dt_d, s_dt_l, s_A_d, s_A_n, s_C_b, s_C_g, s_C_n, s_C_l, s_z_b, s_z_d, s_z_l, s_dy_b, s_dy_d, s_dy_l,
    N: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, SEG: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """The backward's summary of segment j = program axis 2 + 1 (segment 0 needs none): from zero, Λ_j =
    Σ_{t∈j} (Π_{s_j≤u≤t} Ā_u) C_t dy_ssm_t, the decay products as exp2(A log2e · cumulative ΣΔ), and ΣΔ_j, into
    seg_g (rows, n_segs, d, n) and seg_dsum (rows, n_segs, d). Tiles as in the forward: (CHUNK, NP, BD)."""
    pid_blk = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    j = tl.program_id(2) + 1
    n_blk = tl.cdiv(dim_per_group, BLOCK_D)
    grp = pid_blk // n_blk
    offs_c = (pid_blk % n_blk) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_c < dim_per_group
    offs_d = grp * dim_per_group + offs_c  # (BD,)
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    mask_nd = mask_n[:, None] & mask_d[None, :]
    offs_t = tl.arange(0, CHUNK)
    start = j * SEG
    end = tl.minimum(length, start + SEG)
    A2 = tl.load(A_ptr + offs_n[:, None] * s_A_n + offs_d[None, :] * s_A_d, mask=mask_nd, other=0.0)
    A2 = A2.to(tl.float32) * LOG2E  # (NP, BD)
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    dt_base = dt_ptr + row * s_dt_b + offs_d[None, :] * s_dt_d
    z_base = z_ptr + row * s_z_b + offs_d[None, :] * s_z_d
    dy_base = dy_ptr + row * s_dy_b + offs_d[None, :] * s_dy_d
    C_base = C_ptr + row * s_C_b + grp * s_C_g + offs_n[None, :] * s_C_n
    g = tl.zeros([NP, BLOCK_D], dtype=tl.float32)  # Λ_j                                       (NP, BD)
    dsum = tl.zeros([BLOCK_D], dtype=tl.float32)  # ΣΔ up to the current chunk                  (BD,)
    for t0 in range(start, end, CHUNK):
        t = t0 + offs_t
        mask_td = (t < end)[:, None] & mask_d[None, :]
        mask_tn = (t < end)[:, None] & mask_n[None, :]
        dt, _ = _delta(_load_td(dt_base, t[:, None] * s_dt_l, mask_td, True), mask_td, bias[None, :], HAS_BIAS,
                       SOFTPLUS)  # (T, BD), 0 past the end
        dy = _load_td(dy_base, t[:, None] * s_dy_l, mask_td, True)  # (T, BD)
        if HAS_Z:
            z = _load_td(z_base, t[:, None] * s_z_l, mask_td, True)
            dy = dy * z * sigmoid(z)  # dy_ssm = dy · silu(z)
        Ct = _load_tn(C_base, t, s_C_l, mask_tn)  # (T, NP)
        cum = dsum[None, :] + tl.cumsum(dt, axis=0)  # Σ_{s_j ≤ u ≤ t} Δ_u                      (T, BD)
        decay = tl.exp2(cum[:, None, :] * A2[None, :, :])  # (T, NP, BD)
        g += tl.sum(decay * Ct[:, :, None] * dy[:, None, :], axis=0)
        dsum += tl.sum(dt, axis=0)
    seg = row * n_segs + j
    nd_offs = offs_n[:, None] + offs_d[None, :] * N
    tl.store(seg_g_ptr + seg * dim * N + nd_offs, g, mask=mask_nd)
    tl.store(seg_dsum_ptr + seg * dim + offs_d, dsum, mask=mask_d)


def _groups_view(B: torch.Tensor) -> torch.Tensor:
    return B.unsqueeze(1) if B.dim() == 3 else B  # (b, G, n, l), a view


def _rows(u: torch.Tensor, cu_seqlens: torch.Tensor | None) -> int:
    return u.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


def _register_cap(maxnreg: int | None) -> dict:
    """Launch option capping registers per thread (absent: the compiler's choice, up to 255 at one warp)."""
    return {} if maxnreg is None else {"maxnreg": maxnreg}


def _segments(config: ScanConfig, length: int, varlen: bool) -> tuple[int, int]:
    """(steps per segment, segments per sequence); (0, 1) when the sequence runs in one piece."""
    if varlen or config.segment == 0 or config.segment >= length:
        return 0, 1
    return config.segment, triton.cdiv(length, config.segment)


def _dummy(u: torch.Tensor) -> torch.Tensor:
    return u.new_empty(1)  # stands for an absent optional tensor (never read: the flag is off)


def scan_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus,
                 store_checkpoints, config: ScanConfig):
    """Launch the forward. Returns y (b, d, l) in u's dtype and layout (common.empty_like_layout), final state
    (rows, d, n) float32 and the checkpoints (slots, d, n) float32 (an empty tensor unless store_checkpoints)."""
    _, dim, length = u.shape
    n = A.shape[1]
    B4, C4 = _groups_view(B), _groups_view(C)
    groups = B4.shape[1]
    rows, varlen = _rows(u, cu_seqlens), cu_seqlens is not None
    n_chunks = triton.cdiv(length, config.chunk)
    y = common.empty_like_layout(u)  # (b, d, l), in u's layout
    final = common.empty(rows, dim, n, device=u.device, dtype=torch.float32)  # (rows, d, n)
    slots = checkpoint_slots(rows, length, config.chunk, varlen) if store_checkpoints else 0
    ckpt = common.empty(slots, dim, n, device=u.device, dtype=torch.float32)  # (slots, d, n)
    z_ = z if z is not None else u
    h0 = initial_state if initial_state is not None else final
    seg, n_segs = _segments(config, length, varlen)
    seg_h = common.empty(rows, n_segs, dim, n, device=u.device, dtype=torch.float32)  # S_j (rows, segs, d, n)
    seg_dsum = common.empty(rows, n_segs, dim, device=u.device, dtype=torch.float32)  # ΣΔ_j (rows, segs, d)
    blocks = groups * triton.cdiv(dim // groups, config.block_d)

    def launch(grid, summary: bool):
        _scan_fwd_kernel[grid](
            u, delta, A, B4, C4,
            D if D is not None else _dummy(u), z_, delta_bias if delta_bias is not None else _dummy(u), h0,
            cu_seqlens if varlen else _dummy(u),
            y, final, ckpt if store_checkpoints else _dummy(u), seg_h, seg_dsum,
            length, dim, dim // groups, n_chunks, n_segs,
            *u.stride(), *delta.stride(), *A.stride(), *B4.stride(), *C4.stride(), *z_.stride(), *h0.stride(),
            *y.stride(), N=n, NP=triton.next_power_of_2(n), BLOCK_D=config.block_d, CHUNK=config.fwd_chunk, CKPT=config.chunk,
            HAS_D=D is not None and not summary, HAS_Z=z is not None and not summary,
            HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
            HAS_H0=initial_state is not None and not summary, VARLEN=varlen, STORE_CKPT=store_checkpoints and not summary, SEG=seg, SUMMARY=summary,
            num_warps=config.fwd_warps, **_register_cap(config.fwd_maxnreg),
        )

    if n_segs > 1:
        launch((blocks, rows, n_segs - 1), summary=True)
    launch((blocks, rows, n_segs), summary=False)
    return y, final, ckpt


def scan_backward(dy, d_final, u, delta, A, B, C, D, z, delta_bias, cu_seqlens, ckpt, delta_softplus,
                  config: ScanConfig):
    """Launch the backward. Returns float32/raw gradients: du, dΔ, dz (b, d, l) in the inputs' dtypes and layouts;
    dA (d, n), dB and dC shaped like B/C, dD, dΔ-bias (d,) float32 (dz/dD/dbias empty when absent); dh_init
    (rows, d, n) float32."""
    batch, dim, length = u.shape
    n = A.shape[1]
    B4, C4 = _groups_view(B), _groups_view(C)
    groups = B4.shape[1]
    rows, varlen = _rows(u, cu_seqlens), cu_seqlens is not None
    f32 = {"device": u.device, "dtype": torch.float32}
    du = common.empty_like_layout(u)  # (b, d, l), each gradient in its input's layout
    ddelta = common.empty_like_layout(delta)
    dz = common.empty_like_layout(z) if z is not None else _dummy(u)
    seg, n_segs = _segments(config, length, varlen)
    dA = common.empty(rows * n_segs, dim, n, **f32)  # per-(sequence, segment) partials       (rows·segs, d, n)
    n_blk = triton.cdiv(dim // groups, config.bwd_block_d)
    if config.bwd_partial_dbc:  # one slice per channel block, summed below       (b, G, n_blk, n, l)
        dB = common.empty(batch, groups, n_blk, n, length, **f32)
        dC = common.empty(batch, groups, n_blk, n, length, **f32)
    else:  # accumulated with atomics                                                (b, G, n, l)
        dB = torch.zeros(batch, groups, n, length, **f32)
        dC = torch.zeros(batch, groups, n, length, **f32)
    dD = common.empty(rows * n_segs, dim, **f32)  # (rows·segs, d)
    dbias = common.empty(rows * n_segs, dim, **f32)
    dh0 = common.empty(rows, dim, n, **f32)  # (rows, d, n)
    z_ = z if z is not None else u
    seg_g = common.empty(rows, n_segs, dim, n, **f32)  # Λ_j (rows, segs, d, n)
    seg_dsum = common.empty(rows, n_segs, dim, **f32)  # ΣΔ_j (rows, segs, d)
    if n_segs > 1:
        _scan_bwd_summary_kernel[(groups * triton.cdiv(dim // groups, config.block_d), rows, n_segs - 1)](
            delta, A, C4, z_, delta_bias if delta_bias is not None else _dummy(u), dy, seg_g, seg_dsum,
            length, dim, dim // groups, n_segs,
            *delta.stride(), *A.stride(), *C4.stride(), *z_.stride(), *dy.stride(),
            N=n, NP=triton.next_power_of_2(n), BLOCK_D=config.block_d, CHUNK=config.fwd_chunk, SEG=seg,
            HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
            num_warps=config.fwd_warps,
        )
    grid = (groups * n_blk, rows, n_segs)
    _scan_bwd_kernel[grid](
        u, delta, A, B4, C4,
        D if D is not None else _dummy(u), z_, delta_bias if delta_bias is not None else _dummy(u),
        cu_seqlens if varlen else _dummy(u), ckpt, dy,
        d_final.contiguous() if d_final is not None else _dummy(u),  # (rows, d, n), read with contiguous strides
        du, ddelta, dz, dA, dB, dC, dD, dbias, dh0, seg_g, seg_dsum,
        length, dim, dim // groups, triton.cdiv(length, config.chunk), groups, n_segs,
        *u.stride(), *delta.stride(), *A.stride(), *B4.stride(), *C4.stride(), *z_.stride(), *dy.stride(),
        *du.stride(), *ddelta.stride(), *(dz.stride() if z is not None else du.stride()),
        N=n, NP=triton.next_power_of_2(n), SUB=config.bwd_sub, DI=config.bwd_block_d // config.bwd_sub,
        CHUNK=config.chunk, STEPS=config.bwd_chunk,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        HAS_DHT=d_final is not None, VARLEN=varlen, DBC_PARTIAL=config.bwd_partial_dbc,
        REUSE_DECAY=config.bwd_reuse_decay, FORWARD_ADJOINT=config.bwd_forward_adjoint, SEG=seg,
        num_warps=config.bwd_warps, **_register_cap(config.bwd_maxnreg),
    )
    if config.bwd_partial_dbc:
        dB, dC = dB.sum(2), dC.sum(2)  # (b, G, n, l)
    dB, dC = (g.view(B.shape) if B.dim() == 4 else g.squeeze(1) for g in (dB, dC))
    return du, ddelta, dz, dA.sum(0), dB, dC, dD.sum(0), dbias.sum(0), dh0
