"""Fused chunked SSD kernels (Triton). Three kinds of programs: sequence walks (one program per (sequence, head,
block of head channels) walks the sequence chunk by chunk, its (p, n) state kept on chip), chunk-parallel
kernels (one program per (chunk, head, channel block), given the state entering or leaving its chunk), and the
state passing (one program per (sequence, head, block of the flattened p·n state), elementwise over chunks).

Notation as in reference.py and torch_ssd.py: in a chunk of Q positions, Λ_t = Σ_{k ≤ t} Δ_k A (restarted
at the chunk), L[t, s] = exp(Λ_t − Λ_s) for t ≥ s, and H the state entering the chunk. Per chunk:

    y_t  = Σ_s L[t, s] (C_t · B_s) Δ_s x_s  +  exp(Λ_t) C_t · H  + D x_t     three tile products
    H   ← exp(Λ_Q) H  +  Σ_s exp(Λ_Q − Λ_s) Δ_s x_s ⊗ B_s                    one more for the state

The forward either walks whole sequences computing both (`ssd_forward_kernel` with STORE_Y: nothing but y
and the final state leave the chip), or walks them for the states only (STORE_STATES) and then computes y of
every chunk in parallel (`ssd_chunk_forward_kernel`), for few (sequence, head) pairs and long sequences.

The backward: a state pass (the same kernel storing the state H entering each chunk), a backward walk
storing G = ∂loss/∂(state leaving each chunk), then one program per (chunk, channel block, heads_per_program
heads of one group) computing every gradient of the chunk from its tiles, H and G. With gy = ∂loss/∂y before the gate and
g_s = Σ_{t ≥ s} exp(Λ_t − Λ_s) C_t ⊗ gy_t + exp(Λ_Q − Λ_s) G (never formed):

    dx_s = Δ_s g_s B_s + D gy_s        dB_s = Δ_s g_sᵀ x_s        dC_t = H_tᵀ gy_t
    dΔ_s = x_s · g_s B_s + A dℓ_s      dA = Σ_s Δ_s dℓ_s

where dℓ_k (ℓ = Δ A) sums the loss contributions of the (source, sink) pairs around position k: inside the
chunk, through H, through G and through both (docs/math.md, "Gradients"). Sums over the heads of a group
(dB, dC) are summed on chip over the program's heads, then added atomically into float32 (float64) buffers,
one add per element and program ((heads / heads_per_program) × channel blocks adds per element in all): by
a second head loop of the same program, or (the default) by `ssd_chunk_state_side_kernel`, the same loop as a
kernel of its own after the gradient kernel, whose registers then hold one head's tiles only; the partial sums
over channel blocks and chunks (dΔ, dA, dD) are stored per block and summed by the caller.

The states entering the chunks and the adjoints leaving them come either from the walks above
(`ssd_forward_kernel` with STORE_STATES, `ssd_adjoint_kernel`: one (p, Q)·(Q, n) product per chunk inside a
sequential loop, so few programs and as many dependent steps as chunks per sequence) or in two parallel
halves: `ssd_local_state_kernel` computes what each chunk alone adds (forward: Σ_s exp(Λ_Q − Λ_s) Δ_s x_s ⊗
B_s; adjoint: Σ_t exp(Λ_t) gy_t ⊗ C_t) and its log decay Λ_Q, for every chunk at once; then
`ssd_state_passing_kernel` runs S ← exp(Λ_Q) S + local along each sequence (backwards for the adjoints),
elementwise, its loads independent of S. Both give the same states; the second trades a float32 round trip of
the local states through HBM for parallelism over chunks.

Rows (positions) of every (…, l, …) tensor are addressed as start + offset with one stride, so batch rows
and packed sequences (cu_seqlens) are the same case: `seq_starts` holds each sequence's first row.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

from mambalab.ops.triton.common import sigmoid, softplus

# Triton decides at decoration time whether @triton.jit functions are interpreted; record that decision.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


@triton.jit
def _step_sizes(dt_chunk, bias_ptr, head, offs_q, row_mask, s_dt_l, ACC: tl.constexpr,
                HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(Δ, dt + bias) of a chunk's rows (0 outside row_mask); softplus exact in float64, fast in float32."""
    raw = tl.load(dt_chunk + offs_q * s_dt_l, mask=row_mask, other=0.0).to(ACC)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + head).to(ACC)
    dt = raw
    if SOFTPLUS:
        dt = _softplus(raw, ACC)
    return tl.where(row_mask, dt, 0.0), raw


@triton.jit
def _softplus(raw, ACC: tl.constexpr):
    """log(1 + e^raw): exact in float64, the shared fast polynomial in float32."""
    if ACC == tl.float64:
        return tl.maximum(raw, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(raw)))
    return softplus(raw)


@triton.jit
def _tile(offs_rows, offs_cols, s_row, s_col):
    """int32 offsets of a (rows, cols) tile from its first element (loop-invariant: a chunk moves the base)."""
    return offs_rows[:, None] * s_row + offs_cols[None, :] * s_col


@triton.jit
def _decay_mask(log_decay, offs_q):
    """L[t, s] = exp(Λ_t − Λ_s) for t ≥ s, else 0  (Q, Q)."""
    causal = offs_q[:, None] >= offs_q[None, :]
    return tl.exp(tl.where(causal, log_decay[:, None] - log_decay[None, :], float("-inf")))


@triton.jit
def _lanes(pblock, head_dim, n_state, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """Offsets of a chunk's positions, of this program's channel block and of the state, with the masks of the
    channels and the state ((P,), (N,), (P, N))."""
    offs_q = tl.arange(0, BLOCK_Q)
    offs_p = pblock * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    p_mask, n_mask = offs_p < head_dim, offs_n < n_state
    return offs_q, offs_p, offs_n, p_mask, n_mask, p_mask[:, None] & n_mask[None, :]


@triton.jit
def _sequence(seq_ptr, chunk_ptr, seq):
    """(first row, length, first chunk in the chunk layout) of sequence `seq`."""
    start = tl.load(seq_ptr + seq).to(tl.int64)
    return start, tl.load(seq_ptr + seq + 1).to(tl.int64) - start, tl.load(chunk_ptr + seq).to(tl.int64)


@triton.jit
def _chunk_output(x, B, C, entering, dt, log_decay, D, offs_q, ACC: tl.constexpr, DOT: tl.constexpr,
                  PRECISION: tl.constexpr):
    """y_t = Σ_s L[t, s] (C_t · B_s) Δ_s x_s + exp(Λ_t) C_t · H + D x_t for one chunk  (Q, P)."""
    scores = tl.dot(C, tl.trans(B), input_precision=PRECISION, out_dtype=ACC)  # C_t · B_s        (Q, Q)
    weights = scores * _decay_mask(log_decay, offs_q) * dt[None, :]  # L ∘ C Bᵀ, times Δ_s
    y = tl.dot(weights.to(DOT), x.to(DOT), input_precision=PRECISION, out_dtype=ACC)  # (Q, P)
    y += tl.exp(log_decay)[:, None] * tl.dot(C, tl.trans(entering), input_precision=PRECISION, out_dtype=ACC)
    return y + D[None, :] * x.to(ACC)


@triton.jit
def _weighted_outer(rows, weights, other, ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr):
    """Σ_t weights_t rows_t ⊗ other_t over a chunk's positions: rows (Q, P), weights (Q,), other (Q, N) in the
    matrix-product dtype  (P, N)."""
    weighted = (rows.to(ACC) * weights[:, None]).to(DOT)  # (Q, P)
    return tl.dot(tl.trans(weighted), other, input_precision=PRECISION, out_dtype=ACC)


@triton.jit
def _gate(z_ptrs, mask, ACC: tl.constexpr):
    """silu(z) of a tile."""
    z = tl.load(z_ptrs, mask=mask, other=0.0).to(ACC)
    return z * sigmoid(z)


@triton.jit
def _chunk_program(chunk_seq_ptr, seq_ptr, chunk_ptr, heads, head_dim, n_state, BLOCK_Q: tl.constexpr,
                   BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """Where this program of a chunk-parallel kernel (grid: chunks × heads × channel blocks) works: its head,
    the chunk's first row, the offsets and masks of its tiles, and the offsets of its (P, N) block of the
    chunk's state in a (chunks, h, p, n) buffer."""
    chunk, head, pblock = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    seq = tl.load(chunk_seq_ptr + chunk)
    row = tl.load(seq_ptr + seq).to(tl.int64) + (chunk - tl.load(chunk_ptr + seq)) * BLOCK_Q
    offs_q, offs_p, offs_n, p_mask, n_mask, pn_mask = _lanes(pblock, head_dim, n_state, BLOCK_Q, BLOCK_P, BLOCK_N)
    row_mask = offs_q < tl.load(seq_ptr + seq + 1).to(tl.int64) - row
    state_offs = (chunk.to(tl.int64) * heads + head) * head_dim * n_state + _tile(offs_p, offs_n, n_state, 1)
    return (chunk, head, pblock, row, offs_q, offs_p, offs_n, p_mask, row_mask, row_mask[:, None] & p_mask[None, :],
            row_mask[:, None] & n_mask[None, :], pn_mask, state_offs)


@triton.jit
def _skip(D_ptr, head, offs_p, p_mask, s_D_h, s_D_p, BLOCK_P: tl.constexpr, ACC: tl.constexpr, HAS_D: tl.constexpr):
    """D of this head's channel block (zeros without D)  (P,)."""
    D = tl.zeros((BLOCK_P,), dtype=ACC)
    if HAS_D:
        D += tl.load(D_ptr + head * s_D_h + offs_p * s_D_p, mask=p_mask, other=0.0).to(ACC)
    return D


@triton.jit
def ssd_chunk_forward_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, seq_ptr, chunk_ptr, chunk_seq_ptr, states_ptr,
    y_ptr,
    s_x_l, s_x_h, s_x_p, s_dt_l, s_dt_h, s_B_l, s_B_g, s_B_n, s_C_l, s_C_g, s_C_n, s_D_h, s_D_p,
    s_z_l, s_z_h, s_z_p, s_y_l, s_y_h, s_y_p,
    heads, heads_per_group, head_dim, n_state,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
    PRECISION: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
):
    """y of one (chunk, head, channel block) from the state entering the chunk (states, (chunks, h, p, n)):
    the chunk-parallel forward, for few (sequence, head) pairs and long sequences."""
    (_, head, _, row, offs_q, offs_p, offs_n, p_mask, row_mask, qp_mask, qn_mask, pn_mask,
     chunk_state) = _chunk_program(chunk_seq_ptr, seq_ptr, chunk_ptr, heads, head_dim, n_state, BLOCK_Q, BLOCK_P,
                                   BLOCK_N)
    group = head // heads_per_group
    A = tl.load(A_ptr + head).to(ACC)
    entering = tl.load(states_ptr + chunk_state, mask=pn_mask, other=0.0).to(DOT)  # H              (P, N)
    D = _skip(D_ptr, head, offs_p, p_mask, s_D_h, s_D_p, BLOCK_P, ACC, HAS_D)
    dt, _ = _step_sizes(dt_ptr + row * s_dt_l + head * s_dt_h, bias_ptr, head, offs_q, row_mask, s_dt_l, ACC,
                        HAS_BIAS, SOFTPLUS)
    x = tl.load(x_ptr + row * s_x_l + head * s_x_h + _tile(offs_q, offs_p, s_x_l, s_x_p), mask=qp_mask, other=0.0)
    B = tl.load(B_ptr + row * s_B_l + group * s_B_g + _tile(offs_q, offs_n, s_B_l, s_B_n), mask=qn_mask,
                other=0.0).to(DOT)
    C = tl.load(C_ptr + row * s_C_l + group * s_C_g + _tile(offs_q, offs_n, s_C_l, s_C_n), mask=qn_mask,
                other=0.0).to(DOT)
    y = _chunk_output(x, B, C, entering, dt, tl.cumsum(dt * A, axis=0), D, offs_q, ACC, DOT, PRECISION)
    if HAS_Z:
        y *= _gate(z_ptr + row * s_z_l + head * s_z_h + _tile(offs_q, offs_p, s_z_l, s_z_p), qp_mask, ACC)
    tl.store(y_ptr + row * s_y_l + head * s_y_h + _tile(offs_q, offs_p, s_y_l, s_y_p), y.to(y_ptr.dtype.element_ty),
             mask=qp_mask)


@triton.jit
def ssd_forward_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, seq_ptr, chunk_ptr,
    y_ptr, states_ptr, final_ptr,
    s_x_l, s_x_h, s_x_p, s_dt_l, s_dt_h, s_B_l, s_B_g, s_B_n, s_C_l, s_C_g, s_C_n, s_D_h, s_D_p,
    s_z_l, s_z_h, s_z_p, s_y_l, s_y_h, s_y_p,
    heads, heads_per_group, head_dim, n_state,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
    PRECISION: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_INIT: tl.constexpr, STORE_Y: tl.constexpr, STORE_STATES: tl.constexpr,
    STORE_FINAL: tl.constexpr,
):
    """y (STORE_Y), the state entering each chunk (STORE_STATES, (chunks, h, p, n)) and the final state
    (STORE_FINAL, (seqs, h, p, n)) of one (sequence, head, channel block)."""
    seq, head, pblock = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start, length, first_chunk = _sequence(seq_ptr, chunk_ptr, seq)
    group = head // heads_per_group
    offs_q, offs_p, offs_n, p_mask, n_mask, pn_mask = _lanes(pblock, head_dim, n_state, BLOCK_Q, BLOCK_P, BLOCK_N)
    A = tl.load(A_ptr + head).to(ACC)
    state_offs = _tile(offs_p, offs_n, n_state, 1)  # (P, N) within one (h, p, n) state
    head_state = heads * head_dim * n_state
    state = tl.zeros((BLOCK_P, BLOCK_N), dtype=ACC)
    if HAS_INIT:
        state += tl.load(h0_ptr + seq * head_state + head * head_dim * n_state + state_offs, mask=pn_mask,
                         other=0.0).to(ACC)
    x_offs, y_offs = _tile(offs_q, offs_p, s_x_l, s_x_p), _tile(offs_q, offs_p, s_y_l, s_y_p)
    z_offs = _tile(offs_q, offs_p, s_z_l, s_z_p)
    B_offs, C_offs = _tile(offs_q, offs_n, s_B_l, s_B_n), _tile(offs_q, offs_n, s_C_l, s_C_n)
    D = _skip(D_ptr, head, offs_p, p_mask, s_D_h, s_D_p, BLOCK_P, ACC, HAS_D)
    for c in range(tl.cdiv(length, BLOCK_Q)):
        row = start + c * BLOCK_Q  # the chunk's first row
        row_mask = offs_q < length - c * BLOCK_Q  # (Q,)
        qp_mask, qn_mask = row_mask[:, None] & p_mask[None, :], row_mask[:, None] & n_mask[None, :]
        dt, _ = _step_sizes(dt_ptr + row * s_dt_l + head * s_dt_h, bias_ptr, head, offs_q, row_mask, s_dt_l, ACC,
                            HAS_BIAS, SOFTPLUS)
        log_decay = tl.cumsum(dt * A, axis=0)  # Λ_t                                         (Q,)
        chunk_decay = tl.sum(dt * A, axis=0)  # Λ_Q
        x = tl.load(x_ptr + row * s_x_l + head * s_x_h + x_offs, mask=qp_mask, other=0.0)  # (Q, P)
        B = tl.load(B_ptr + row * s_B_l + group * s_B_g + B_offs, mask=qn_mask, other=0.0).to(DOT)  # (Q, N)
        if STORE_STATES:
            tl.store(states_ptr + (first_chunk + c) * head_state + head * head_dim * n_state + state_offs,
                     state.to(states_ptr.dtype.element_ty), mask=pn_mask)
        if STORE_Y:
            C = tl.load(C_ptr + row * s_C_l + group * s_C_g + C_offs, mask=qn_mask, other=0.0).to(DOT)  # (Q, N)
            y = _chunk_output(x, B, C, state.to(DOT), dt, log_decay, D, offs_q, ACC, DOT, PRECISION)
            if HAS_Z:
                y *= _gate(z_ptr + row * s_z_l + head * s_z_h + z_offs, qp_mask, ACC)
            tl.store(y_ptr + row * s_y_l + head * s_y_h + y_offs, y.to(y_ptr.dtype.element_ty), mask=qp_mask)
        to_end = tl.exp(chunk_decay - log_decay) * dt  # exp(Λ_Q − Λ_s) Δ_s                   (Q,)
        state = tl.exp(chunk_decay) * state + _weighted_outer(x, to_end, B, ACC, DOT, PRECISION)
    if STORE_FINAL:
        tl.store(final_ptr + seq * head_state + head * head_dim * n_state + state_offs, state, mask=pn_mask)


@triton.jit
def _gate_gradient(dy, z_ptr, row, head, s_z_l, s_z_h, z_offs, qp_mask, ACC: tl.constexpr, HAS_Z: tl.constexpr):
    """(gy, z, σ(z)): ∂loss/∂y before the gate y · silu(z) (dy itself without z)."""
    if HAS_Z:
        z = tl.load(z_ptr + row * s_z_l + head * s_z_h + z_offs, mask=qp_mask, other=0.0).to(ACC)
        gate = sigmoid(z)
        return dy * z * gate, z, gate
    return dy, dy, dy


@triton.jit
def ssd_local_state_kernel(
    rows_ptr, dt_ptr, A_ptr, other_ptr, z_ptr, bias_ptr, seq_ptr, chunk_ptr, chunk_seq_ptr, local_ptr, decay_ptr,
    s_r_l, s_r_h, s_r_p, s_dt_l, s_dt_h, s_o_l, s_o_g, s_o_n, s_z_l, s_z_h, s_z_p,
    heads, heads_per_group, head_dim, n_state,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
    PRECISION: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    ADJOINT: tl.constexpr,
):
    """What one chunk alone adds to the state passed along the sequence, for one (chunk, head, channel block):
    the first half of the parallel state pass (`ssd_state_passing_kernel` is the second). Stores local
    (chunks, h, p, n) and the chunk's log decay Λ_Q (chunks, h).

    Forward (rows x, other B): local = Σ_s exp(Λ_Q − Λ_s) Δ_s x_s ⊗ B_s, the state leaving the chunk had it
    entered at zero. ADJOINT (rows dy, other C, gated by z): local = Σ_t exp(Λ_t) gy_t ⊗ C_t, the chunk's
    outputs' part of ∂loss/∂(state entering it). These are the walks' (`ssd_forward_kernel`,
    `ssd_adjoint_kernel`) per-chunk products, taken out of their sequential loops."""
    (chunk, head, pblock, row, offs_q, offs_p, offs_n, _, row_mask, qp_mask, qn_mask, pn_mask,
     chunk_state) = _chunk_program(chunk_seq_ptr, seq_ptr, chunk_ptr, heads, head_dim, n_state, BLOCK_Q, BLOCK_P,
                                   BLOCK_N)
    group = head // heads_per_group
    A = tl.load(A_ptr + head).to(ACC)
    dt, _ = _step_sizes(dt_ptr + row * s_dt_l + head * s_dt_h, bias_ptr, head, offs_q, row_mask, s_dt_l, ACC,
                        HAS_BIAS, SOFTPLUS)
    log_decay = tl.cumsum(dt * A, axis=0)  # Λ_t                                            (Q,)
    chunk_decay = tl.sum(dt * A, axis=0)  # Λ_Q
    rows = tl.load(rows_ptr + row * s_r_l + head * s_r_h + _tile(offs_q, offs_p, s_r_l, s_r_p), mask=qp_mask,
                   other=0.0)  # x or dy                                                      (Q, P)
    other = tl.load(other_ptr + row * s_o_l + group * s_o_g + _tile(offs_q, offs_n, s_o_l, s_o_n), mask=qn_mask,
                    other=0.0).to(DOT)  # B or C                                              (Q, N)
    if ADJOINT:
        rows, _, _ = _gate_gradient(rows.to(ACC), z_ptr, row, head, s_z_l, s_z_h, _tile(offs_q, offs_p, s_z_l, s_z_p),
                                    qp_mask, ACC, HAS_Z)  # gy
        weights = tl.exp(log_decay)  # exp(Λ_t)
    else:
        weights = tl.exp(chunk_decay - log_decay) * dt  # exp(Λ_Q − Λ_s) Δ_s
    local = _weighted_outer(rows, weights, other, ACC, DOT, PRECISION)  # (P, N)
    tl.store(local_ptr + chunk_state, local.to(local_ptr.dtype.element_ty), mask=pn_mask)
    if pblock == 0:
        tl.store(decay_ptr + chunk.to(tl.int64) * heads + head, chunk_decay.to(decay_ptr.dtype.element_ty))


@triton.jit
def _compose(decay_a, state_a, decay_b, state_b):
    """Two consecutive steps S ← d S + l, a then b, as one step: (d_a d_b, d_b l_a + l_b)."""
    return decay_a * decay_b, decay_b * state_a + state_b


@triton.jit
def ssd_state_passing_kernel(
    local_ptr, decay_ptr, chunk_ptr, init_ptr, passed_ptr, final_ptr,
    heads, state_size,
    BLOCK: tl.constexpr, STEPS: tl.constexpr, HAS_INIT: tl.constexpr, REVERSE: tl.constexpr,
):
    """Pass a state along one (sequence, head) over its chunks, elementwise on a block of the flattened (p·n)
    state: S ← exp(Λ_Q) S + local of each chunk (`ssd_local_state_kernel`), storing S before each step.

    Forward: S starts at the initial state; passed (chunks, h, p, n) = the state entering each chunk, final =
    the state leaving the sequence. REVERSE (chunks last to first): S starts at ∂loss/∂(final state); passed =
    G, the adjoint of the state leaving each chunk; final = ∂loss/∂(initial state).

    STEPS chunks at a time: their local states load as one (STEPS, BLOCK) tile that depends only on the chunk
    indices, never on S, so that STEPS loads per element are in flight at once (the compiler cannot move a
    load above the previous step's store: passed and local might overlap); a scan of the composed steps
    (`_compose`) gives S after each of them."""
    seq, head, block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    first_chunk = tl.load(chunk_ptr + seq).to(tl.int64)
    n_chunks = tl.load(chunk_ptr + seq + 1).to(tl.int64) - first_chunk
    offs = block * BLOCK + tl.arange(0, BLOCK)[None, :]  # one row: S stays in the layout of the (STEPS, BLOCK) tiles
    mask = offs < state_size  # (1, BLOCK)
    seq_offs = (seq.to(tl.int64) * heads + head) * state_size + offs
    state = tl.zeros((1, BLOCK), dtype=final_ptr.dtype.element_ty)
    if HAS_INIT:
        state += tl.load(init_ptr + seq_offs, mask=mask, other=0.0).to(final_ptr.dtype.element_ty)
    steps = tl.arange(0, STEPS)[:, None]  # (STEPS, 1)
    for group in range(0, n_chunks, STEPS):
        position = group + steps  # in the order of passing                                  (STEPS, 1)
        in_seq = position < n_chunks
        if REVERSE:
            chunk, step = first_chunk + n_chunks - 1 - position, -1
        else:
            chunk, step = first_chunk + position, 1
        rows = (chunk * heads + head) * state_size + offs  # (STEPS, BLOCK)
        local = tl.load(local_ptr + rows, mask=in_seq & mask, other=0.0)  # 0 past the end
        decay = tl.exp(tl.load(decay_ptr + chunk * heads + head, mask=in_seq, other=0.0))  # exp(Λ_Q), 1 past
        decays, sums = tl.associative_scan((tl.broadcast_to(decay, (STEPS, BLOCK)), local), 0, _compose)
        after = decays * state + sums  # S after each step                                  (STEPS, BLOCK)
        # S before a step is S after the one before it: the carried S goes to the group's first chunk, each
        # `after` but the last (the next group's carry) to the chunk after its own.
        tl.store(passed_ptr + rows, tl.broadcast_to(state, (STEPS, BLOCK)).to(passed_ptr.dtype.element_ty),
                 mask=(steps == 0) & mask)
        tl.store(passed_ptr + rows + step * heads * state_size, after.to(passed_ptr.dtype.element_ty),
                 mask=(steps < STEPS - 1) & (position + 1 < n_chunks) & mask)
        state = tl.sum(tl.where(steps == STEPS - 1, after, 0.0), axis=0, keep_dims=True)
    tl.store(final_ptr + seq_offs, state, mask=mask)


@triton.jit
def ssd_adjoint_kernel(
    dt_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, dy_ptr, seq_ptr, chunk_ptr, dfinal_ptr, adjoints_ptr, dh0_ptr,
    s_dt_l, s_dt_h, s_C_l, s_C_g, s_C_n, s_z_l, s_z_h, s_z_p, s_dy_l, s_dy_h, s_dy_p,
    heads, heads_per_group, head_dim, n_state,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
    PRECISION: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DFINAL: tl.constexpr,
):
    """Walk one (sequence, head, channel block) backwards: store G_c = ∂loss/∂(state leaving chunk c) for
    every chunk ((chunks, h, p, n)), then G ← exp(Λ_Q) G + Σ_t exp(Λ_t) gy_t ⊗ C_t; the last G is ∂loss/∂H_0."""
    seq, head, pblock = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start, length, first_chunk = _sequence(seq_ptr, chunk_ptr, seq)
    group = head // heads_per_group
    offs_q, offs_p, offs_n, p_mask, n_mask, pn_mask = _lanes(pblock, head_dim, n_state, BLOCK_Q, BLOCK_P, BLOCK_N)
    A = tl.load(A_ptr + head).to(ACC)
    state_offs = _tile(offs_p, offs_n, n_state, 1)
    head_state = heads * head_dim * n_state
    seq_state = seq * head_state + head * head_dim * n_state + state_offs
    adjoint = tl.zeros((BLOCK_P, BLOCK_N), dtype=ACC)
    if HAS_DFINAL:
        adjoint += tl.load(dfinal_ptr + seq_state, mask=pn_mask, other=0.0).to(ACC)
    z_offs, dy_offs = _tile(offs_q, offs_p, s_z_l, s_z_p), _tile(offs_q, offs_p, s_dy_l, s_dy_p)
    C_offs = _tile(offs_q, offs_n, s_C_l, s_C_n)
    n_chunks = tl.cdiv(length, BLOCK_Q)
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        row = start + c * BLOCK_Q
        row_mask = offs_q < length - c * BLOCK_Q
        qp_mask, qn_mask = row_mask[:, None] & p_mask[None, :], row_mask[:, None] & n_mask[None, :]
        tl.store(adjoints_ptr + (first_chunk + c) * head_state + head * head_dim * n_state + state_offs,
                 adjoint.to(adjoints_ptr.dtype.element_ty), mask=pn_mask)
        dt, _ = _step_sizes(dt_ptr + row * s_dt_l + head * s_dt_h, bias_ptr, head, offs_q, row_mask, s_dt_l, ACC,
                            HAS_BIAS, SOFTPLUS)
        log_decay = tl.cumsum(dt * A, axis=0)  # Λ_t                                        (Q,)
        dy = tl.load(dy_ptr + row * s_dy_l + head * s_dy_h + dy_offs, mask=qp_mask, other=0.0).to(ACC)
        gy, _, _ = _gate_gradient(dy, z_ptr, row, head, s_z_l, s_z_h, z_offs, qp_mask, ACC, HAS_Z)
        C = tl.load(C_ptr + row * s_C_l + group * s_C_g + C_offs, mask=qn_mask, other=0.0).to(DOT)  # (Q, N)
        local = _weighted_outer(gy, tl.exp(log_decay), C, ACC, DOT, PRECISION)  # Σ_t exp(Λ_t) gy_t ⊗ C_t
        adjoint = tl.exp(tl.sum(dt * A, axis=0)) * adjoint + local
    tl.store(dh0_ptr + seq_state, adjoint, mask=pn_mask)


@triton.jit
def _head_tiles(x_ptr, dt_ptr, A_ptr, z_ptr, bias_ptr, dy_ptr, states_ptr, adjoints_ptr, head, chunk, row, heads,
                head_dim, n_state, offs_q, row_mask, qp_mask, pn_mask, state_tile, x_offs, dy_offs, z_offs,
                s_x_l, s_x_h, s_dt_l, s_dt_h, s_z_l, s_z_h, s_dy_l, s_dy_h, ACC: tl.constexpr, DOT: tl.constexpr,
                HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """One head's tiles of a chunk: A; H and G (P, N); Δ, dt + bias and Λ_t (Q,); x (input dtype), dy, gy, z,
    σ(z) (Q, P; without z, dy in place of z and σ(z))."""
    A = tl.load(A_ptr + head).to(ACC)
    chunk_state = (chunk.to(tl.int64) * heads + head) * head_dim * n_state + state_tile
    entering = tl.load(states_ptr + chunk_state, mask=pn_mask, other=0.0).to(DOT)  # H              (P, N)
    adjoint = tl.load(adjoints_ptr + chunk_state, mask=pn_mask, other=0.0).to(DOT)  # G             (P, N)
    dt, raw = _step_sizes(dt_ptr + row * s_dt_l + head * s_dt_h, bias_ptr, head, offs_q, row_mask, s_dt_l, ACC,
                          HAS_BIAS, SOFTPLUS)
    x = tl.load(x_ptr + row * s_x_l + head * s_x_h + x_offs, mask=qp_mask, other=0.0)  # (Q, P)
    dy = tl.load(dy_ptr + row * s_dy_l + head * s_dy_h + dy_offs, mask=qp_mask, other=0.0).to(ACC)  # (Q, P)
    gy, z, gate = _gate_gradient(dy, z_ptr, row, head, s_z_l, s_z_h, z_offs, qp_mask, ACC, HAS_Z)
    return A, entering, adjoint, dt, raw, tl.cumsum(dt * A, axis=0), x, dy, gy, z, gate


@triton.jit
def _add_state_side(pairs_dt, dC, dB, gx, mask, dt, log_decay, to_end, gy, x, entering, adjoint, DOT: tl.constexpr,
                    PRECISION: tl.constexpr, ACC: tl.constexpr):
    """One head's share of dB and dC added to the group's sums: W += L ∘ (gy xᵀ) Δ (Q, Q), dC += exp(Λ_t) gy_t H,
    dB += Δ_s exp(Λ_Q − Λ_s) x_s G (Q, N); W's products with B and C follow once for all heads."""
    pairs_dt += gx * mask * dt[None, :]
    dC = tl.dot((tl.exp(log_decay)[:, None] * gy).to(DOT), entering, acc=dC, input_precision=PRECISION,
                out_dtype=ACC)
    dB = tl.dot((x * (dt * to_end)[:, None]).to(DOT), adjoint, acc=dB, input_precision=PRECISION, out_dtype=ACC)
    return pairs_dt, dC, dB


@triton.jit
def _reread_state_side(pairs_dt, dC, dB, x_ptr, dt_ptr, A_ptr, z_ptr, bias_ptr, dy_ptr, states_ptr, adjoints_ptr,
                       head, chunk, row, heads, head_dim, n_state, offs_q, row_mask, qp_mask, pn_mask, state_tile,
                       x_offs, dy_offs, z_offs, s_x_l, s_x_h, s_dt_l, s_dt_h, s_z_l, s_z_h, s_dy_l, s_dy_h,
                       ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr, HAS_Z: tl.constexpr,
                       HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """_add_state_side for one head and channel block from its tiles read again (x, dy, z, Δ, H, G) and gy xᵀ
    and L recomputed: what a program summing several heads' dB and dC does per head."""
    A, entering, adjoint, dt, _raw, log_decay, x, _dy, gy, _z, _gate = _head_tiles(
        x_ptr, dt_ptr, A_ptr, z_ptr, bias_ptr, dy_ptr, states_ptr, adjoints_ptr, head, chunk, row, heads,
        head_dim, n_state, offs_q, row_mask, qp_mask, pn_mask, state_tile, x_offs, dy_offs, z_offs, s_x_l, s_x_h,
        s_dt_l, s_dt_h, s_z_l, s_z_h, s_dy_l, s_dy_h, ACC, DOT, HAS_Z, HAS_BIAS, SOFTPLUS)
    x = x.to(ACC)
    gx = tl.dot(gy.to(DOT), tl.trans(x.to(DOT)), input_precision=PRECISION, out_dtype=ACC)  # gy_t · x_s (Q, Q)
    to_end = tl.exp(tl.sum(dt * A, axis=0) - log_decay)  # exp(Λ_Q − Λ_s)                            (Q,)
    return _add_state_side(pairs_dt, dC, dB, gx, _decay_mask(log_decay, offs_q), dt, log_decay, to_end, gy, x,
                           entering, adjoint, DOT, PRECISION, ACC)


@triton.jit
def _close_state_side(pairs_dt, dC, dB, B, C, ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr):
    """(dC, dB) of the group (Q, N): the state parts summed over heads plus W B and Wᵀ C."""
    pairs_dt = pairs_dt.to(DOT)
    dC = tl.dot(pairs_dt, B, acc=dC, input_precision=PRECISION, out_dtype=ACC)
    dB = tl.dot(tl.trans(pairs_dt), C, acc=dB, input_precision=PRECISION, out_dtype=ACC)
    return dC, dB


@triton.jit
def _add_to_group(dC, dB, dC_ptr, dB_ptr, row, group, groups, n_state, offs_q, offs_n, qn_mask,
                  SOLE: tl.constexpr):
    """A program's (dC, dB) (Q, N) into the group's buffers (l, g, n): stored in their dtype where this program
    is the only one to write these elements (SOLE), else added atomically into zeroed float32 (float64) ones."""
    gn_offs = row * groups * n_state + group * n_state + _tile(offs_q, offs_n, groups * n_state, 1)
    if SOLE:
        tl.store(dC_ptr + gn_offs, dC.to(dC_ptr.dtype.element_ty), mask=qn_mask)
        tl.store(dB_ptr + gn_offs, dB.to(dB_ptr.dtype.element_ty), mask=qn_mask)
    else:
        tl.atomic_add(dC_ptr + gn_offs, dC, mask=qn_mask, sem="relaxed")
        tl.atomic_add(dB_ptr + gn_offs, dB, mask=qn_mask, sem="relaxed")


@triton.jit(do_not_specialize=["heads_per_program"])
def ssd_chunk_backward_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dy_ptr, seq_ptr, chunk_ptr, chunk_seq_ptr,
    states_ptr, adjoints_ptr,
    dx_ptr, dz_ptr, ddt_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr,
    s_x_l, s_x_h, s_x_p, s_dt_l, s_dt_h, s_B_l, s_B_g, s_B_n, s_C_l, s_C_g, s_C_n, s_D_h, s_D_p,
    s_z_l, s_z_h, s_z_p, s_dy_l, s_dy_h, s_dy_p, s_o_l, s_o_h, s_o_p,
    heads, groups, heads_per_group, heads_per_program, head_dim, n_state, p_blocks,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
    PRECISION: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, ONE_PASS: tl.constexpr, STATE_SIDE: tl.constexpr,
):
    """Every gradient of one chunk and channel block for `heads_per_program` consecutive heads of one group
    (grid: chunks × heads / heads_per_program × channel blocks), from the state entering the chunk (states)
    and the adjoint of the state leaving it (adjoints): chunks are independent here. Outputs: dx, dz (l, h, p)
    with strides s_o_*; dB, dC (l, g, n) summed over the program's heads, then added atomically (one add per
    element and program; zeroed by the caller); partial sums over channel blocks: ddt (l, h, p_blocks)
    (∂loss/∂(dt + dt_bias)), dA (chunks, h, p_blocks); dD (chunks, h, p).

    Two loops over the heads (run-time loops, not unrolled). The first does each head's own gradients,
    carrying nothing from head to head: its registers are those of one head. The second sums the group's dB
    and dC; what it carries, W = Σ_heads L ∘ (gy xᵀ) Δ (Q, Q) and the state parts Σ_heads exp(Λ_t) gy_t H and
    Σ_heads Δ_s exp(Λ_Q − Λ_s) x_s G (Q, N each), is 16 + 32 + 32 = 80 float32 registers per thread at Q 64,
    n 128 and 8 warps: too many to carry through the first loop's work beside a tile that already uses 255
    (they spill there, benchmarks/notes/ssd.md), few enough for the light second loop. That loop re-reads
    its head's tiles (x, dy, z, Δ, H, G: in cache, just read by the first) and recomputes gy xᵀ and L.
    ONE_PASS (one head per program: nothing crosses heads) adds the head's share at the end of the first loop
    instead, from the tiles it holds. Without STATE_SIDE the kernel stops after the first loop, and
    ssd_chunk_state_side_kernel adds dB and dC (SSDConfig.state_side "kernel"). heads_per_program is not
    specialised: Triton 3.6 built the one-head case (its loop gone) without STATE_SIDE into an illegal
    shared-memory access in bfloat16 on an H100 (benchmarks/notes/ssd.md, fifteenth session)."""
    (chunk, slot, pblock, row, offs_q, offs_p, offs_n, p_mask, row_mask, qp_mask, qn_mask, pn_mask,
     _) = _chunk_program(chunk_seq_ptr, seq_ptr, chunk_ptr, heads, head_dim, n_state, BLOCK_Q, BLOCK_P, BLOCK_N)
    first_head = slot * heads_per_program
    group = first_head // heads_per_group
    B = tl.load(B_ptr + row * s_B_l + group * s_B_g + _tile(offs_q, offs_n, s_B_l, s_B_n), mask=qn_mask,
                other=0.0).to(DOT)  # (Q, N)
    C = tl.load(C_ptr + row * s_C_l + group * s_C_g + _tile(offs_q, offs_n, s_C_l, s_C_n), mask=qn_mask,
                other=0.0).to(DOT)  # (Q, N)
    x_offs, dy_offs = _tile(offs_q, offs_p, s_x_l, s_x_p), _tile(offs_q, offs_p, s_dy_l, s_dy_p)
    z_offs, o_tile = _tile(offs_q, offs_p, s_z_l, s_z_p), _tile(offs_q, offs_p, s_o_l, s_o_p)
    state_tile = _tile(offs_p, offs_n, n_state, 1)
    # State side: dC_t = H_tᵀ gy_t, dB_s = Δ_s g_sᵀ x_s, summed over the program's heads
    pairs_dt = tl.zeros((BLOCK_Q, BLOCK_Q), dtype=ACC)  # W[t, s] = Σ_heads L[t, s] gy_t · x_s Δ_s
    dC = tl.zeros((BLOCK_Q, BLOCK_N), dtype=ACC)  # Σ_heads exp(Λ_t) gy_t H, then + W B
    dB = tl.zeros((BLOCK_Q, BLOCK_N), dtype=ACC)  # Σ_heads Δ_s exp(Λ_Q − Λ_s) x_s G, then + Wᵀ C
    for i in range(heads_per_program):
        head = first_head + i
        A, entering, adjoint, dt, raw, log_decay, x, dy, gy, z, gate = _head_tiles(
            x_ptr, dt_ptr, A_ptr, z_ptr, bias_ptr, dy_ptr, states_ptr, adjoints_ptr, head, chunk, row, heads,
            head_dim, n_state, offs_q, row_mask, qp_mask, pn_mask, state_tile, x_offs, dy_offs, z_offs, s_x_l,
            s_x_h, s_dt_l, s_dt_h, s_z_l, s_z_h, s_dy_l, s_dy_h, ACC, DOT, HAS_Z, HAS_BIAS, SOFTPLUS)
        D = _skip(D_ptr, head, offs_p, p_mask, s_D_h, s_D_p, BLOCK_P, ACC, HAS_D)
        chunk_decay = tl.sum(dt * A, axis=0)  # Λ_Q
        from_start = tl.exp(log_decay)  # exp(Λ_t)                                           (Q,)
        to_end = tl.exp(chunk_decay - log_decay)  # exp(Λ_Q − Λ_s)                            (Q,)
        through_both = tl.exp(chunk_decay) * tl.sum(tl.sum(adjoint.to(ACC) * entering.to(ACC), axis=1), axis=0)
        mask = _decay_mask(log_decay, offs_q)  # L                                            (Q, Q)
        scored = tl.dot(C, tl.trans(B), input_precision=PRECISION, out_dtype=ACC) * mask  # L ∘ C Bᵀ (Q, Q)
        o_offs = row * s_o_l + head * s_o_h + o_tile
        # Three parts, each sum taken near its last operand, in the order that spills least: 0.91 of the time of
        # the order before (output side, input side, pair steps, every sum last), and 0.95-0.96 with `reads` after
        # y rather than before (one H100, benchmarks/notes/ssd.md)
        # Output side: y = y_in + (L ∘ C Bᵀ) Δ x recomputed for dz, y_in = exp(Λ_t) C_t H the entering state's part
        y_in = from_start[:, None] * tl.dot(C, tl.trans(entering), input_precision=PRECISION, out_dtype=ACC)
        # The in-chunk pairs' operands, rounded once to the product dtype (~) for y, g B and both pair sums below
        scores, x_dt, gy_dot = scored.to(DOT), (x.to(ACC) * dt[:, None]).to(DOT), gy.to(DOT)
        y_pairs = tl.dot(scores, x_dt, input_precision=PRECISION, out_dtype=ACC)  # (L ∘ C Bᵀ)~ (Δ x)~   (Q, P)
        pair_rows = tl.sum(gy_dot.to(ACC) * y_pairs, axis=1)  # Σ_s inner[t, s]                          (Q,)
        y = y_in + y_pairs  # y^ssm
        reads = tl.sum(gy * y_in, axis=1)  # (Q,)
        x_acc = x.to(ACC)
        skip_sums = tl.sum(gy * x_acc, axis=0)  # Σ_t gy_t ∘ x_t                                            (P,)
        if HAS_Z:
            dz = dy * (y + D[None, :] * x_acc) * gate * (1.0 + z * (1.0 - gate))  # ∂ silu(z) = σ (1 + z (1 − σ))
            tl.store(dz_ptr + o_offs, dz.to(dz_ptr.dtype.element_ty), mask=qp_mask)
        # Input side: g_s B_s = Σ_{t ≥ s} L[t, s] (C_t · B_s) gy_t + exp(Λ_Q − Λ_s) G B_s
        leaving = to_end[:, None] * tl.dot(B, tl.trans(adjoint), input_precision=PRECISION, out_dtype=ACC)
        leaving_sums = tl.sum(x_acc * leaving, axis=1)  # x_s · exp(Λ_Q − Λ_s) G B_s                      (Q,)
        writes = dt * leaving_sums
        gB_pairs = tl.dot(tl.trans(scores), gy_dot, input_precision=PRECISION, out_dtype=ACC)  # (L ∘ C Bᵀ)~ᵀ gy~
        pair_sums = tl.sum(x_acc * gB_pairs, axis=1)  # (Q,)
        gB = leaving + gB_pairs
        input_sums = leaving_sums + pair_sums  # x_s · g_s B_s                                              (Q,)
        # ∂loss/∂ℓ_k, ℓ = Δ A (docs/math.md), from the (source s, sink t) pairs with s < k ≤ t: both in the chunk
        # (Σ_{t ≥ k} of inner's row sums minus its column sums: the pairs with k ≤ s ≤ t are in both; one
        # bilinear form of the same rounded operands, so they cancel to float32's precision), sources before it
        # read here (reads_t = gy_t · y_in_t), sources here read after it (writes_s = Δ_s x_s · exp(Λ_Q − Λ_s)
        # G B_s), sources before read after (through_both)
        pair_columns = tl.sum(x_dt.to(ACC) * gB_pairs, axis=1)  # Σ_t inner[t, s]                        (Q,)
        pair_steps = tl.cumsum(pair_rows - pair_columns, axis=0, reverse=True)  # (Q,)
        tl.store(dx_ptr + o_offs, (dt[:, None] * gB + D[None, :] * gy).to(dx_ptr.dtype.element_ty), mask=qp_mask)
        d_step = pair_steps + tl.cumsum(reads, axis=0, reverse=True)
        d_step += tl.cumsum(writes, axis=0) - writes + through_both  # (Q,)
        ddt = input_sums + A * d_step  # x_s · g_s B_s + A ∂loss/∂ℓ_s
        if SOFTPLUS:
            ddt *= sigmoid(raw)
        tl.store(ddt_ptr + ((row + offs_q) * heads + head) * p_blocks + pblock, ddt, mask=row_mask)
        tl.store(dA_ptr + (chunk * heads + head) * p_blocks + pblock, tl.sum(d_step * dt, axis=0))
        tl.store(dD_ptr + (chunk * heads + head) * head_dim + offs_p, skip_sums, mask=p_mask)
        if ONE_PASS:
            gx = tl.dot(gy_dot, tl.trans(x.to(DOT)), input_precision=PRECISION, out_dtype=ACC)  # gy_t · x_s (Q, Q)
            pairs_dt, dC, dB = _add_state_side(pairs_dt, dC, dB, gx, mask, dt, log_decay, to_end, gy, x, entering,
                                               adjoint, DOT, PRECISION, ACC)
    if not STATE_SIDE:
        return  # dB and dC come from ssd_chunk_state_side_kernel (SSDConfig.state_side "kernel")
    if not ONE_PASS:
        for i in range(heads_per_program):
            pairs_dt, dC, dB = _reread_state_side(
                pairs_dt, dC, dB, x_ptr, dt_ptr, A_ptr, z_ptr, bias_ptr, dy_ptr, states_ptr, adjoints_ptr,
                first_head + i, chunk, row, heads, head_dim, n_state, offs_q, row_mask, qp_mask, pn_mask, state_tile,
                x_offs, dy_offs, z_offs, s_x_l, s_x_h, s_dt_l, s_dt_h, s_z_l, s_z_h, s_dy_l, s_dy_h, ACC, DOT,
                PRECISION, HAS_Z, HAS_BIAS, SOFTPLUS)
    dC, dB = _close_state_side(pairs_dt, dC, dB, B, C, ACC, DOT, PRECISION)  # (Q, N) each
    _add_to_group(dC, dB, dC_ptr, dB_ptr, row, group, groups, n_state, offs_q, offs_n, qn_mask, False)


@triton.jit(do_not_specialize=["heads_per_program"])
def ssd_chunk_state_side_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, z_ptr, bias_ptr, dy_ptr, seq_ptr, chunk_ptr, chunk_seq_ptr,
    states_ptr, adjoints_ptr, dB_ptr, dC_ptr,
    s_x_l, s_x_h, s_x_p, s_dt_l, s_dt_h, s_B_l, s_B_g, s_B_n, s_C_l, s_C_g, s_C_n,
    s_z_l, s_z_h, s_z_p, s_dy_l, s_dy_h, s_dy_p,
    heads, groups, heads_per_group, heads_per_program, head_dim, n_state,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
    PRECISION: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SOLE: tl.constexpr,
):
    """dB and dC of one chunk and channel block for `heads_per_program` consecutive heads of one group (grid:
    chunks × heads / heads_per_program × channel blocks): the second head loop of ssd_chunk_backward_kernel
    (STATE_SIDE) as a kernel of its own, its registers free of the first loop's tiles (SSDConfig.state_side
    "kernel"). Adds into dB, dC as that kernel does, or (SOLE: one channel block and a whole group per program)
    stores them in their dtype."""
    (chunk, slot, _pblock, row, offs_q, offs_p, offs_n, _p_mask, row_mask, qp_mask, qn_mask, pn_mask,
     _) = _chunk_program(chunk_seq_ptr, seq_ptr, chunk_ptr, heads, head_dim, n_state, BLOCK_Q, BLOCK_P, BLOCK_N)
    first_head = slot * heads_per_program
    group = first_head // heads_per_group
    x_offs, dy_offs = _tile(offs_q, offs_p, s_x_l, s_x_p), _tile(offs_q, offs_p, s_dy_l, s_dy_p)
    z_offs, state_tile = _tile(offs_q, offs_p, s_z_l, s_z_p), _tile(offs_p, offs_n, n_state, 1)
    pairs_dt = tl.zeros((BLOCK_Q, BLOCK_Q), dtype=ACC)  # W (Q, Q)
    dC = tl.zeros((BLOCK_Q, BLOCK_N), dtype=ACC)
    dB = tl.zeros((BLOCK_Q, BLOCK_N), dtype=ACC)
    for i in range(heads_per_program):
        pairs_dt, dC, dB = _reread_state_side(
            pairs_dt, dC, dB, x_ptr, dt_ptr, A_ptr, z_ptr, bias_ptr, dy_ptr, states_ptr, adjoints_ptr,
            first_head + i, chunk, row, heads, head_dim, n_state, offs_q, row_mask, qp_mask, pn_mask, state_tile,
            x_offs, dy_offs, z_offs, s_x_l, s_x_h, s_dt_l, s_dt_h, s_z_l, s_z_h, s_dy_l, s_dy_h, ACC, DOT,
            PRECISION, HAS_Z, HAS_BIAS, SOFTPLUS)
    B = tl.load(B_ptr + row * s_B_l + group * s_B_g + _tile(offs_q, offs_n, s_B_l, s_B_n), mask=qn_mask,
                other=0.0).to(DOT)  # (Q, N)
    C = tl.load(C_ptr + row * s_C_l + group * s_C_g + _tile(offs_q, offs_n, s_C_l, s_C_n), mask=qn_mask,
                other=0.0).to(DOT)  # (Q, N)
    dC, dB = _close_state_side(pairs_dt, dC, dB, B, C, ACC, DOT, PRECISION)
    _add_to_group(dC, dB, dC_ptr, dB_ptr, row, group, groups, n_state, offs_q, offs_n, qn_mask, SOLE)


@triton.jit
def ssd_step_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, idx_ptr, y_ptr,
    s_st_b, s_st_h, s_st_p, s_st_n, s_x_b, s_x_h, s_x_p, s_dt_b, s_dt_h, s_B_b, s_B_g, s_B_n,
    s_C_b, s_C_g, s_C_n, s_D_h, s_D_p, s_z_b, s_z_h, s_z_p, s_y_b, s_y_h, s_y_p,
    heads_per_group, head_dim, n_state,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_IDX: tl.constexpr, A_IS_LOG: tl.constexpr,
):
    """One decode step for (batch row, head, block of channels): H ← exp(Δ A) H + Δ x ⊗ B (in place, in the
    state's slot: state_batch_indices[row] or the row), y = H · C + D x, y · silu(z). With A_IS_LOG, A_ptr holds
    log(−A) (a mixer's A_log) and A = −exp of it."""
    row, head, pblock = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    slot = row
    if HAS_IDX:
        slot = tl.load(idx_ptr + row).to(tl.int64)
    group = head // heads_per_group
    offs_p = pblock * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    p_mask, n_mask = offs_p < head_dim, offs_n < n_state
    pn_mask = p_mask[:, None] & n_mask[None, :]
    dt = tl.load(dt_ptr + row * s_dt_b + head * s_dt_h).to(ACC)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + head).to(ACC)
    if SOFTPLUS:
        dt = _softplus(dt, ACC)
    A = tl.load(A_ptr + head).to(ACC)
    if A_IS_LOG:
        A = -tl.exp(A)
    decay = tl.exp(dt * A)  # exp(Δ A)
    x = tl.load(x_ptr + row * s_x_b + head * s_x_h + offs_p * s_x_p, mask=p_mask, other=0.0).to(ACC)  # (P,)
    B = tl.load(B_ptr + row * s_B_b + group * s_B_g + offs_n * s_B_n, mask=n_mask, other=0.0).to(ACC)  # (N,)
    C = tl.load(C_ptr + row * s_C_b + group * s_C_g + offs_n * s_C_n, mask=n_mask, other=0.0).to(ACC)  # (N,)
    st_ptrs = state_ptr + slot * s_st_b + head * s_st_h + offs_p[:, None] * s_st_p + offs_n[None, :] * s_st_n
    state = tl.load(st_ptrs, mask=pn_mask, other=0.0).to(ACC)  # (P, N)
    state = decay * state + (dt * x)[:, None] * B[None, :]
    tl.store(st_ptrs, state.to(state_ptr.dtype.element_ty), mask=pn_mask)
    y = tl.sum(state * C[None, :], axis=1)  # H · C                                           (P,)
    if HAS_D:
        y += tl.load(D_ptr + head * s_D_h + offs_p * s_D_p, mask=p_mask, other=0.0).to(ACC) * x
    if HAS_Z:
        z = tl.load(z_ptr + row * s_z_b + head * s_z_h + offs_p * s_z_p, mask=p_mask, other=0.0).to(ACC)
        y *= z * sigmoid(z)
    tl.store(y_ptr + row * s_y_b + head * s_y_h + offs_p * s_y_p, y.to(y_ptr.dtype.element_ty), mask=p_mask)
