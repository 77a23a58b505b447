"""Selective scan as a parallel, chunked computation in pure PyTorch, with a hand-written backward.

Same signature and semantics as reference.py (read its glossary first). The recurrence, per (b, d, n),

    h_t = a_t h_{t-1} + β_t,   a_t = exp(Δ_t A) ∈ (0, 1],   β_t = Δ_t B_t x_t,   y_t = C_t · h_t,

is linear in h, so a block of positions can be scanned from a zero state and fixed up afterwards with the
decay of the whole block. The sequence is cut into chunks of `chunk_len` positions, scanned one after the
other (the state is carried between them, so memory holds a few (b, chunk_len, n, d) work tensors and one
state per sub-chunk, never a (b, l, d, n) tensor); each chunk is cut into m sub-chunks of `sub_len`
positions, and all m sub-chunks advance together:

    1. local end states   e_k = Σ_j (Π_{i>j} a_{k,i}) β_{k,j}        sub_len steps, each over all k at once
    2. carry              s_{k+1} = p_k s_k + e_k,  p_k = exp(A Σ_j Δ_{k,j})    m small steps
    3. states and output  h_{k,j} = a_{k,j} h_{k,j-1} + β_{k,j} from s_k;  y = C · h   sub_len steps + a bmm

Only a handful of Python-level steps run per chunk (2·sub_len + m), each over a large tensor, instead of one
per position. Every exponential has a non-positive argument (Δ ≥ 0, A < 0): a_t and p_k lie in (0, 1], so
nothing overflows however long the sequence, and no ratio of decays (exp of a positive number) is ever
formed. exp(Δ A) is computed as exp2(Δ · A log2 e): on CPU torch's exp2 is several times faster than exp.

The backward runs the chunks in reverse. It recomputes a, β and the states of one chunk from the saved
sub-chunk start states, then solves the adjoint recurrence g_t = C_t dy_t + a_{t+1} g_{t+1} with the same
three-step scheme run right to left, and reads every gradient off g:
dβ = g; d(ΔA) = q = (a_t g_t) ⊙ h_{t-1}; dC = Σ_d dy h; dh_0 = a_1 g_1.

One autograd Function covers the whole op (bias, softplus, Δx, D and the SiLU(z) gate included), so the
backward runs no autograd graph of small ops and allocates each (b, d, l) gradient once. Inside the scan,
tensors are laid out (b, t, n, d): channels last, so every elementwise op runs along the long contiguous
channel axis; the sums over n and over the channels of a group are batched matrix products.

A chunk whose length is not a multiple of `sub_len` (the end of a sequence) is padded in the work tensors
with a = 1, β = 0: these steps leave the state exactly unchanged, and their outputs are never read.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

# Picked by measurement on the 2-core CPU, b=2, d=512, n=16, L=4096, float32, two threads: chunks of 64 in
# sub-chunks of 16 or 8 were fastest (0.70-0.72 s forward+backward against 0.82-0.85 s for 32/8, 128/16 and
# 256/16; benchmarks/notes/scan_cpu.md): each work tensor stays at 4 MB, so the backward's three fit in L3.
CHUNK_LEN = 64
SUB_LEN = 16
LOG2E = 1.0 / math.log(2.0)


def selective_scan_torch(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    initial_state=None, return_final_state=False, cu_seqlens=None,
):
    """Chunked parallel selective scan; see the module docstring and reference.py."""
    return chunked_selective_scan(
        u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
        initial_state=initial_state, return_final_state=return_final_state, cu_seqlens=cu_seqlens,
    )


def chunked_selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    initial_state=None, return_final_state=False, cu_seqlens=None,
    chunk_len: int = CHUNK_LEN, sub_len: int = SUB_LEN,
):
    """`selective_scan_torch` with the chunk sizes exposed (chunk_len must be a multiple of sub_len)."""
    if chunk_len % sub_len != 0:
        raise ValueError(f"chunk_len={chunk_len} must be a multiple of sub_len={sub_len}")
    out_dtype = u.dtype
    compute = torch.float64 if torch.float64 in (u.dtype, delta.dtype, A.dtype) else torch.float32
    batch, _, length = u.shape
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)  # (b, 1, n, l)
    if cu_seqlens is None:
        segments = [(0, length)]  # every batch row is one sequence
    else:
        segments = list(itertools.pairwise(int(c) for c in cu_seqlens))  # batch is 1
    if initial_state is None:
        initial_state = u.new_zeros(len(segments) if cu_seqlens is not None else batch, u.shape[1], A.shape[1],
                                    dtype=compute)
    cast = [None if t is None else t.to(compute) for t in (u, delta, A, B, C, D, z, delta_bias, initial_state)]
    y, final_state = _SelectiveScan.apply(
        *cast, delta_softplus, segments, cu_seqlens is not None, chunk_len, sub_len
    )
    y = y.to(out_dtype)
    return (y, final_state) if return_final_state else y


def _transposed(t):
    """(b, x, y) -> contiguous (b, y, x)."""
    return t.transpose(1, 2).contiguous()


class _SelectiveScan(torch.autograd.Function):
    """The whole op: (u, Δ, A, B, C, D, z, bias, h_0) -> (y, h_L). u, delta, z (b, d, l); A (d, n);
    B, C (b, g, n, l); D, bias (d,); h_0 (rows, d, n) with one row per batch row or per packed sequence."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, bias, h0, softplus, segments, packed, chunk_len, sub_len):
        raw = delta if bias is None else delta + bias[:, None]  # Δ before softplus                 (b, d, l)
        dt = F.softplus(raw) if softplus else raw  # Δ                                              (b, d, l)
        dt_t = _transposed(dt)  # (b, l, d)
        # Δ x, written over Δ + bias when softplus gave Δ its own buffer                            (b, d, l)
        x = torch.mul(dt, u, out=raw) if raw is not delta and raw is not dt else dt * u
        x_t = _transposed(x)  # (b, l, d)
        b_t = B.permute(0, 3, 2, 1).contiguous()  # (b, l, n, g)
        c_t = C.permute(0, 3, 2, 1).contiguous()  # (b, l, n, g)
        a2 = (A * LOG2E).t().contiguous()  # A log2 e                                                (n, d)
        grad = any(ctx.needs_input_grad)
        batch, length, dim = dt_t.shape
        n = A.shape[1]
        subs = [-(-(e - s) // sub_len) for s, e in segments]  # sub-chunks per segment
        # the state before every sub-chunk, kept for the backward (one per sub_len positions)
        starts = dt_t.new_empty(batch, sum(subs), n, dim) if grad else None
        y_t = dt_t.new_empty(batch, length, dim)  # (b, l, d)
        final = h0.new_empty(h0.shape[0], n, dim)  # (rows, n, d)
        work = _Workspace(2, batch, min(chunk_len, -(-length // sub_len) * sub_len), n, dim, dt_t,
                          keep_starts=not grad, sub_len=sub_len)
        h0_t = h0.transpose(1, 2)  # (rows, n, d)
        for i, ((s, e), k0) in enumerate(zip(segments, itertools.accumulate([0, *subs]))):
            rows = slice(i, i + 1) if packed else slice(None)
            final[rows] = _scan_forward(
                h0_t[rows], dt_t[:, s:e], x_t[:, s:e], a2, b_t[:, s:e], c_t[:, s:e], y_t[:, s:e],
                None if starts is None else starts[:, k0 : k0 + subs[i]], chunk_len, sub_len, work,
            )
        y = _transposed(y_t)  # C · h                                                                (b, d, l)
        if D is not None:
            y.addcmul_(u, D[:, None])  # y += D x
        out = y if z is None else F.silu(z).mul_(y)  # y *= silu(z)
        if grad:
            ctx.save_for_backward(u, delta, A, D, z, bias, dt, dt_t, x_t, b_t, c_t, starts,
                                  y if z is not None else None)
            ctx.softplus, ctx.segments, ctx.packed, ctx.subs = softplus, segments, packed, subs
            ctx.chunk_len, ctx.sub_len = chunk_len, sub_len
        return out, final.transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, dout, dfinal):
        u, delta, A, D, z, bias, dt, dt_t, x_t, b_t, c_t, starts, y = ctx.saved_tensors
        batch, _, dim = dt_t.shape
        n = A.shape[1]
        dy, dz = dout, None
        if z is not None:
            sig = torch.sigmoid(z)  # σ(z)                                                          (b, d, l)
            silu = z * sig  # (b, d, l)
            dy = dout * silu  # ∂y before the gate
            # silu'(z) = σ (1 + z (1 - σ)) = σ (1 + z - silu)
            dz = silu.neg_().add_(z).add_(1).mul_(sig).mul_(y).mul_(dout)  # (b, d, l)
        du = dy * D[:, None] if D is not None else None  # (b, d, l)
        dD = (dy * u).sum((0, 2)) if D is not None else None
        dy_t = _transposed(dy)  # (b, l, d)
        d_dt, d_x = torch.empty_like(dt_t), torch.empty_like(x_t)  # ∂Δ (from the decay), ∂(Δx)   (b, l, d)
        d_b, d_c = torch.empty_like(b_t), torch.empty_like(c_t)  # (b, l, n, g)
        d_a = dt_t.new_zeros(n, dim)  # ∂A                                                            (n, d)
        a2 = (A * LOG2E).t().contiguous()  # (n, d)
        a_nd = A.t().contiguous()  # (n, d)
        rows = len(ctx.segments) if ctx.packed else batch
        dh0 = dt_t.new_empty(rows, n, dim)  # (rows, n, d)
        g_last = dfinal.transpose(1, 2) if dfinal is not None else dt_t.new_zeros(rows, n, dim)  # (rows, n, d)
        work = _Workspace(3, batch, min(ctx.chunk_len, starts.shape[1] * ctx.sub_len), n, dim, dt_t)
        offsets = itertools.accumulate([0, *ctx.subs])
        for i, ((s, e), k0) in enumerate(zip(ctx.segments, offsets)):
            r = slice(i, i + 1) if ctx.packed else slice(None)
            sl = slice(s, e)
            dh0[r] = _scan_backward(
                g_last[r], dt_t[:, sl], x_t[:, sl], a_nd, a2, b_t[:, sl], c_t[:, sl],
                starts[:, k0 : k0 + ctx.subs[i]], dy_t[:, sl], ctx.chunk_len, ctx.sub_len,
                d_dt[:, sl], d_x[:, sl], d_b[:, sl], d_c[:, sl], d_a, work,
            )
        d_x = _transposed(d_x)  # ∂(Δx)                                                              (b, d, l)
        d_dt = _transposed(d_dt).addcmul_(d_x, u)  # ∂Δ = (decay part) + ∂(Δx) x                    (b, d, l)
        du = torch.mul(d_x, dt) if du is None else du.addcmul_(d_x, dt)  # ∂x += ∂(Δx) Δ
        if ctx.softplus:
            raw = delta + bias[:, None] if bias is not None else delta.clone()
            d_dt.mul_(raw.sigmoid_())  # softplus' = σ
        d_bias = d_dt.sum((0, 2)) if bias is not None else None
        return (
            du, d_dt, d_a.t(), d_b.permute(0, 3, 2, 1), d_c.permute(0, 3, 2, 1), dD, dz, d_bias,
            dh0.transpose(1, 2), None, None, None, None, None,
        )


class _Workspace:
    """Chunk-sized scratch tensors, allocated once per call and reused by every chunk: on CPU, touching
    freshly allocated large tensors costs about as much as the arithmetic done in them."""

    def __init__(self, count, batch, chunk_len, n, dim, like, keep_starts=False, sub_len=1):
        self.flat = [like.new_empty(batch * chunk_len * n * dim) for _ in range(count)]
        self.n, self.dim = n, dim
        # sub-chunk start states of one chunk, when the caller keeps none (no backward will run)
        self.starts = like.new_empty(batch, chunk_len // sub_len, n, dim) if keep_starts else None

    def get(self, i, batch, t):
        """Buffer i as a contiguous (b, t, n, d) tensor."""
        return self.flat[i][: batch * t * self.n * self.dim].view(batch, t, self.n, self.dim)


def _decay(dt, A2, out):
    """a = exp(Δ A) = exp2(Δ · A log2 e), every exponent ≤ 0.   dt (b, t, d), A2 (n, d) -> (b, t, n, d)."""
    return torch.mul(dt[:, :, None, :], A2, out=out).exp2_()


def _outer(v, W, out):
    """v_d W_n for each channel d and its group's W.   v (b, t, d), W (b, t, n, g) -> (b, t, n, d)."""
    b, t, d = v.shape
    n, g = W.shape[2:]
    torch.mul(v.view(b, t, 1, g, d // g), W[..., None], out=out.view(b, t, n, g, d // g))
    return out


def _bmm_into(out, x, y):
    """out = x @ y[:, :, :] batched, written in place when out is contiguous (else through a copy).
    x (t, 1, k), y (t, k, c), out (t, c)."""
    if out.is_contiguous():
        torch.bmm(x, y, out=out.unsqueeze(1))
    else:
        out.copy_(torch.bmm(x, y)[:, 0])


def _dot_n(H, W, out):
    """out = Σ_n W[.., n, group(d)] H[.., n, d], one small matrix product per (row, position, group).

    H (b, t, n, d); W (b, t, n, g); out (b, t, d).
    """
    d, g = H.shape[3], W.shape[3]
    dg = d // g
    for i, k in itertools.product(range(H.shape[0]), range(g)):
        ch = slice(k * dg, (k + 1) * dg)
        _bmm_into(out[i, :, ch], W[i, :, None, :, k], H[i, :, :, ch])  # (t, 1, n) @ (t, n, dg)


def _dot_d(v, H, out):
    """out = Σ_{d in group} v[.., d] H[.., n, d].   v (b, t, d), H (b, t, n, d) -> out (b, t, n, g)."""
    d, g = H.shape[3], out.shape[3]
    dg = d // g
    for i, k in itertools.product(range(H.shape[0]), range(g)):
        ch = slice(k * dg, (k + 1) * dg)
        _bmm_into(out[i, :, :, k], v[i, :, None, ch], H[i, :, :, ch].transpose(1, 2))  # (t, 1, dg) @ (t, dg, n)


def _chunks(length, chunk_len, sub_len):
    """(start, length, padded length) of each chunk of a sequence of `length` positions."""
    for c0 in range(0, length, chunk_len):
        t = min(chunk_len, length - c0)
        yield c0, t, -(-t // sub_len) * sub_len


def _fill_chunk(a, H, dt, x, A2, B, t):
    """a = exp(Δ A), H = β = Δ x B for the t real positions; a = 1, β = 0 on the padding after them."""
    _decay(dt, A2, a[:, :t])
    _outer(x, B, H[:, :t])
    if t < a.shape[1]:
        a[:, t:] = 1
        H[:, t:] = 0


def _sub_sums(dt, t, tp, sub_len):
    """Σ Δ over each sub-chunk of a chunk (Δ = 0 on the padding).   dt (b, t, d) -> (b, tp/sub_len, d)."""
    if t < tp:
        dt = torch.cat([dt, dt.new_zeros(dt.shape[0], tp - t, dt.shape[2])], dim=1)
    return dt.reshape(dt.shape[0], tp // sub_len, sub_len, dt.shape[2]).sum(2)


def _scan_forward(h, dt, x, A2, B, C, y_out, starts, chunk_len, sub_len, work):
    """Scan one sequence from state h (b, n, d); write y_out (b, l, d) and, when `starts` is given, the state
    before each sub-chunk into it (b, ⌈l/sub_len⌉, n, d). Returns the final state (b, n, d).

    dt, x: (b, l, d); B, C: (b, l, n, g)."""
    batch, length, dim = dt.shape
    n, s = A2.shape[0], sub_len
    h = h.contiguous()
    for c0, t, tp in _chunks(length, chunk_len, sub_len):
        m = tp // s
        a, H = work.get(0, batch, tp), work.get(1, batch, tp)  # (b, tp, n, d)
        _fill_chunk(a, H, dt[:, c0 : c0 + t], x[:, c0 : c0 + t], A2, B[:, c0 : c0 + t], t)
        a5, H5 = a.view(batch, m, s, n, dim), H.view(batch, m, s, n, dim)
        st = work.starts[:, :m] if starts is None else starts[:, c0 // s : c0 // s + m]  # (b, m, n, d)
        st[:, 0] = h
        if m > 1:
            # 1. end state of every sub-chunk but the last, started from zero, all at once
            a_head, h_head = a5[:, : m - 1].unbind(2), H5[:, : m - 1].unbind(2)  # s × (b, m-1, n, d)
            e = h_head[0].clone()  # (b, m-1, n, d)
            for j in range(1, s):
                torch.addcmul(h_head[j], a_head[j], e, out=e)
            p = (_sub_sums(dt[:, c0 : c0 + t], t, tp, s)[:, : m - 1, None, :] * A2).exp2_()  # (b, m-1, n, d)
            # 2. carry the true state across sub-chunks
            st_k, e_k, p_k = st.unbind(1), e.unbind(1), p.unbind(1)  # (b, n, d) each
            for k in range(m - 1):
                torch.addcmul(e_k[k], p_k[k], st_k[k], out=st_k[k + 1])
        # 3. every state from its sub-chunk's true start, in place over β; then y = C · h
        cur = st
        for a_j, h_j in zip(a5.unbind(2), H5.unbind(2)):
            cur = h_j.addcmul_(a_j, cur)  # h_j = a_j h_{j-1} + β_j                              (b, m, n, d)
        _dot_n(H[:, :t], C[:, c0 : c0 + t], y_out[:, c0 : c0 + t])  # y = C · h                    (b, t, d)
        h = H[:, tp - 1].clone()  # (b, n, d)
    return h


def _scan_backward(g_last, dt, x, A, A2, B, C, starts, dy, chunk_len, sub_len, d_dt, d_x, d_b, d_c, d_a, work):
    """Gradients of one sequence, chunks in reverse. g_last (b, n, d): ∂L/∂(final state).

    Writes d_dt (∂Δ through the decay) and d_x (∂(Δx)), both (b, l, d), d_b and d_c (b, l, n, g); adds to
    d_a (n, d); returns ∂L/∂h_0 (b, n, d).
    """
    batch, length, dim = dt.shape
    n, s = A.shape[0], sub_len
    g_next = g_last.contiguous()
    for c0, t, tp in reversed(list(_chunks(length, chunk_len, sub_len))):
        m = tp // s
        sl = slice(c0, c0 + t)
        a, H, G = (work.get(i, batch, tp) for i in range(3))  # (b, tp, n, d)
        _fill_chunk(a, H, dt[:, sl], x[:, sl], A2, B[:, sl], t)
        a5, H5, G5 = (v.view(batch, m, s, n, dim) for v in (a, H, G))
        a_j, G_j = a5.unbind(2), G5.unbind(2)  # s × (b, m, n, d)
        st = starts[:, c0 // s : c0 // s + m]  # (b, m, n, d)
        cur = st
        for a_s, h_s in zip(a_j, H5.unbind(2)):
            cur = h_s.addcmul_(a_s, cur)  # h_j = a_j h_{j-1} + β_j
        _dot_d(dy[:, sl], H[:, :t], d_c[:, sl])  # ∂C = Σ_d dy h

        _outer(dy[:, sl], C[:, sl], G[:, :t])  # C dy, becomes g = ∂L/∂h below                      (b, tp, n, d)
        if t < tp:
            G[:, t:] = 0
        incoming = torch.empty_like(st)  # what each sub-chunk's last position receives from its right
        incoming[:, m - 1] = g_next
        if m > 1:
            # 1. g at each sub-chunk's first position (but the first's) with nothing from its right, times a
            a_tail, g_tail = a5[:, 1:].unbind(2), G5[:, 1:].unbind(2)  # s × (b, m-1, n, d)
            e = g_tail[s - 1].clone()  # (b, m-1, n, d)
            for j in range(s - 2, -1, -1):
                torch.addcmul(g_tail[j], a_tail[j + 1], e, out=e)
            e.mul_(a_tail[0])
            p = (_sub_sums(dt[:, sl], t, tp, s)[:, 1:, None, :] * A2).exp2_()  # decay over a sub-chunk
            # 2. carry right to left
            in_k, e_k, p_k = incoming.unbind(1), e.unbind(1), p.unbind(1)  # (b, n, d) each
            for k in range(m - 2, -1, -1):
                torch.addcmul(e_k[k], p_k[k], in_k[k + 1], out=in_k[k])
        # 3. g everywhere, in place over C dy
        cur = G_j[s - 1].add_(incoming)
        for j in range(s - 2, -1, -1):
            cur = G_j[j].addcmul_(a_j[j + 1], cur)  # g_j = C_j dy_j + a_{j+1} g_{j+1}

        _dot_n(G[:, :t], B[:, sl], d_x[:, sl])  # ∂(Δx) = Σ_n g B
        _dot_d(x[:, sl], G[:, :t], d_b[:, sl])  # ∂B = Σ_d g Δx
        q = a.mul_(G)  # a_t g_t, then times h_{t-1}: q = ∂L/∂(ΔA)                                  (b, tp, n, d)
        g_next = q[:, 0].clone()  # ∂L/∂h before the chunk = a_1 g_1
        q[:, 1:t].mul_(H[:, : t - 1])
        q[:, 0].mul_(st[:, 0])
        q = q[:, :t]
        d_a += torch.mul(q, dt[:, sl, None, :], out=G[:, :t]).sum((0, 1))  # ∂A = Σ_{b,t} q Δ
        torch.sum(q.mul_(A), 2, out=d_dt[:, sl])  # ∂Δ = Σ_n q A
    return g_next
