"""Selective scan as a parallel, chunked computation in pure PyTorch, with a hand-written backward.

Same signature and semantics as reference.py (read its glossary first). The recurrence, per (b, d, n),

    h_t = a_t h_{t-1} + β_t,   a_t = exp(Δ_t A) ∈ (0, 1],   β_t = Δ_t B_t x_t,   y_t = C_t · h_t,

is linear in h, so a block of positions can be scanned from a zero state and fixed up afterwards with the
decay of the whole block. The sequence is cut into chunks of `chunk_len` positions, scanned one after the
other (the state is carried between them, so memory holds a few (b, chunk_len, n, d) work tensors and one
state per sub-chunk, never a (b, l, d, n) tensor);
each chunk is cut into m sub-chunks of `sub_len` positions, and all m sub-chunks advance together:

    1. local end states   e_k = Σ_j (Π_{i>j} a_{k,i}) β_{k,j}        sub_len steps, each over all k at once
    2. carry              s_{k+1} = p_k s_k + e_k,  p_k = exp(A Σ_j Δ_{k,j})    m small steps
    3. states and output  h_{k,j} = a_{k,j} h_{k,j-1} + β_{k,j} from s_k;  y = C · h   sub_len + n steps

Only a handful of Python-level steps run per chunk (2·sub_len + m), each over a large tensor, instead of one
per position. Every exponential has a non-positive argument (Δ ≥ 0, A < 0): a_t and p_k lie in (0, 1], so
nothing overflows however long the sequence, and no ratio of decays (exp of a positive number) is ever
formed. exp(Δ A) is computed as exp2(Δ · A log2 e), which is faster on CPU.

The backward runs the chunks in reverse. It recomputes a, β and the states of one chunk from the saved
sub-chunk start states, then solves the adjoint recurrence g_t = C_t dy_t + a_{t+1} g_{t+1} with the same
three-step scheme run right to left, and reads every gradient off g:
dβ = g; d(ΔA) = g ⊙ a_t h_{t-1}; dC = Σ_d dy h; dh_0 = a_1 g_1.

Inside the scan, tensors are laid out (b, t, n, d): channels last, so every elementwise op runs along the
long contiguous channel axis, and sums over n add whole rows.

A length that is not a multiple of `sub_len` is padded at the end with Δ = 0, x = 0 (a = 1, β = 0): these
steps leave the state exactly unchanged and their outputs are dropped.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

# Picked by measurement on the 2-core CPU, b=2, d=512, n=16, L=4096, float32 forward+backward: with one thread
# (benchmarks/scan_cpu.py --tune --threads 1, results/scan_cpu_tune.json) chunks of 64-256 in sub-chunks of 16
# cost about the same CPU time; with two threads 256/16 was fastest (3.2-3.7 s against 4.4-22 s for 64/16 and
# 5.9-7.8 s for 512/32 on a loaded machine): larger steps amortise the threads' per-op synchronisation.
CHUNK_LEN = 256
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
    batch, dim, _ = u.shape
    u, delta, A = u.to(compute), delta.to(compute), A.to(compute)

    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[None, :, None]  # (b, d, l)
    if delta_softplus:
        delta = F.softplus(delta)  # Δ                                                     (b, d, l)
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)  # (b, 1, n, l)
    # Layout inside the scan: time, then state index, then channels last, so that every elementwise op runs
    # along the long contiguous channel axis and every sum over n adds whole rows.
    dt = delta.transpose(1, 2)  # Δ                                                      (b, l, d)
    x = (delta * u).transpose(1, 2)  # Δ x                                               (b, l, d)
    B = B.to(compute).permute(0, 3, 2, 1)  # (b, l, n, g)
    C = C.to(compute).permute(0, 3, 2, 1)  # (b, l, n, g)
    if initial_state is None:
        rows = batch if cu_seqlens is None else cu_seqlens.numel() - 1
        h0 = u.new_zeros(rows, A.shape[1], dim)  # (b, n, d)
    else:
        h0 = initial_state.to(compute).transpose(1, 2)  # (b, n, d)

    def scan(sl, h):  # one independent sequence: positions `sl`, initial state h
        return _ChunkedScan.apply(dt[:, sl], x[:, sl], A, B[:, sl], C[:, sl], h, chunk_len, sub_len)

    if cu_seqlens is None:
        y, final_state = scan(slice(None), h0)  # (b, l, d), (b, n, d)
    else:
        bounds = [int(c) for c in cu_seqlens]
        parts = [scan(slice(s, e), h0[i : i + 1]) for i, (s, e) in enumerate(itertools.pairwise(bounds))]
        y = torch.cat([p[0] for p in parts], dim=1)  # (1, l, d)
        final_state = torch.cat([p[1] for p in parts])  # (num_seqs, n, d)

    y = y.transpose(1, 2)  # (b, d, l)
    if D is not None:
        y = y + D.to(compute)[None, :, None] * u  # y += D x
    if z is not None:
        y = y * F.silu(z.to(compute))  # y *= silu(z)
    y = y.to(out_dtype)
    if not return_final_state:
        return y
    return y, final_state.transpose(1, 2).contiguous()  # (b, d, n)


def _decay(dt, A2, out):
    """a = exp(Δ A) = exp2(Δ · A log2 e), every exponent ≤ 0.   dt (b, t, d), A2 (n, d) -> (b, t, n, d)."""
    return torch.mul(dt[:, :, None, :], A2, out=out).exp2_()


def _outer(v, W, out):
    """v_d W_n for each channel d and its group's W.   v (b, t, d), W (b, t, n, g) -> (b, t, n, d)."""
    b, t, d = v.shape
    n, g = W.shape[2:]
    torch.mul(v.view(b, t, 1, g, d // g), W[..., None], out=out.view(b, t, n, g, d // g))
    return out


def _dot_n(H, W, out):
    """out = Σ_n H[.., n, d] W[.., n, group(d)], accumulated over n (one read of H, no (b, t, n, d) temporary).

    H (b, t, n, d); W (b, t, n, g), or (n, d) for a per-channel weight; out (b, t, d).
    """
    b, t, n, d = H.shape
    if W.dim() == 2:  # (n, d): weight per state index and channel
        terms = [(H[:, :, k], W[k]) for k in range(n)]
    else:
        g = W.shape[3]
        out = out.view(b, t, g, d // g)
        terms = [(H[:, :, k].view(b, t, g, d // g), W[:, :, k, :, None]) for k in range(n)]
    torch.mul(*terms[0], out=out)
    for h_k, w_k in terms[1:]:
        out.addcmul_(h_k, w_k)


def _dot_d(v, H, out):
    """out = Σ_{d in group} v[.., d] H[.., n, d].   v (b, t, d), H (b, t, n, d) -> out (b, t, n, g)."""
    b, t, n, d = H.shape
    g = out.shape[3]
    prod = torch.matmul(H.view(b, t, n, g, d // g).transpose(2, 3), v.reshape(b, t, g, d // g, 1))  # (b, t, g, n, 1)
    out.copy_(prod.squeeze(-1).transpose(2, 3))


def _pad(t, length):
    """Zero-pad dim 1 of t to `length` (padded steps have Δ = 0, x = 0: the state is unchanged)."""
    if t.shape[1] == length:
        return t.contiguous()
    return torch.cat([t, t.new_zeros(t.shape[0], length - t.shape[1], *t.shape[2:])], dim=1)


class _Workspace:
    """Chunk-sized scratch tensors, allocated once per call and reused by every chunk: on CPU, touching
    freshly allocated large tensors costs about as much as the arithmetic done in them."""

    def __init__(self, count, batch, chunk_len, n, dim, like):
        self.flat = [like.new_empty(batch * chunk_len * n * dim) for _ in range(count)]
        self.n, self.dim = n, dim

    def get(self, i, batch, t):
        """Buffer i as a contiguous (b, t, n, d) tensor."""
        return self.flat[i][: batch * t * self.n * self.dim].view(batch, t, self.n, self.dim)


class _ChunkedScan(torch.autograd.Function):
    """(Δ, Δx, A, B, C, h_0) -> (C·h_t for every t, h_L). Δ, Δx (b, l, d); A (d, n); B, C (b, l, n, g);
    h (b, n, d). See _chunk_forward / _chunk_backward."""

    @staticmethod
    def forward(ctx, dt, x, A, B, C, h0, chunk_len, sub_len):
        batch, length, dim = dt.shape
        n = A.shape[1]
        padded = -(-length // sub_len) * sub_len
        dt, x, B, C = (_pad(t, padded) for t in (dt, x, B, C))  # (b, l', d), (b, l', n, g)
        A2 = (A * LOG2E).t().contiguous()  # A log2 e                                          (n, d)
        y = dt.new_empty(batch, padded, dim)  # (b, l', d)
        starts = dt.new_empty(batch, padded // sub_len, n, dim)  # state before each sub-chunk
        work = _Workspace(2, batch, min(chunk_len, padded), n, dim, dt)
        h = h0.contiguous()
        for c0 in range(0, padded, chunk_len):
            c1 = min(c0 + chunk_len, padded)
            h = _chunk_forward(
                h, dt[:, c0:c1], x[:, c0:c1], A2, B[:, c0:c1], C[:, c0:c1], sub_len,
                starts[:, c0 // sub_len : c1 // sub_len], y[:, c0:c1], work,
            )
        ctx.save_for_backward(dt, x, A, B, C, starts)
        ctx.chunk_len, ctx.sub_len, ctx.length = chunk_len, sub_len, length
        return y[:, :length], h

    @staticmethod
    def backward(ctx, dy, dh_last):
        dt, x, A, B, C, starts = ctx.saved_tensors
        chunk_len, sub_len, padded = ctx.chunk_len, ctx.sub_len, dt.shape[1]
        batch, _, dim = dt.shape
        n = A.shape[1]
        dy = _pad(dy, padded)  # (b, l', d)
        A2 = (A * LOG2E).t().contiguous()  # (n, d)
        AT = A.t().contiguous()  # (n, d)
        grads = {k: torch.empty_like(v) for k, v in (("dt", dt), ("x", x), ("B", B), ("C", C))}
        dA = torch.zeros_like(AT)  # (n, d)
        work = _Workspace(4, batch, min(chunk_len, padded), n, dim, dt)
        g_next = torch.zeros_like(starts[:, 0]) if dh_last is None else dh_last.contiguous()  # (b, n, d)
        for c0 in reversed(range(0, padded, chunk_len)):
            c1 = min(c0 + chunk_len, padded)
            sl = slice(c0, c1)
            g_next = _chunk_backward(
                g_next, dt[:, sl], x[:, sl], AT, A2, B[:, sl], C[:, sl], starts[:, c0 // sub_len : c1 // sub_len],
                dy[:, sl], sub_len, {k: v[:, sl] for k, v in grads.items()}, dA, work,
            )
        length = ctx.length
        return (
            grads["dt"][:, :length], grads["x"][:, :length], dA.t(), grads["B"][:, :length],
            grads["C"][:, :length], g_next, None, None,
        )


def _chunk_forward(h, dt, x, A2, B, C, sub_len, starts_out, y_out, work):
    """Scan one chunk from state h (b, n, d); write sub-chunk start states and outputs; return the end state.

    dt, x: (b, t, d); B, C: (b, t, n, g); starts_out: (b, t/sub_len, n, d); y_out: (b, t, d).
    """
    batch, t, dim = dt.shape
    n, s = A2.shape[0], sub_len
    m = t // s
    a = _decay(dt, A2, work.get(0, batch, t))  # a = exp(Δ A)                            (b, t, n, d)
    H = _outer(x, B, work.get(1, batch, t))  # β = Δ B x, overwritten with h below         (b, t, n, d)
    a5, H5 = a.view(batch, m, s, n, dim), H.view(batch, m, s, n, dim)
    # 1. end state of every sub-chunk but the last, started from zero, all at once
    e = H5[:, : m - 1, 0].clone()  # (b, m-1, n, d)
    for j in range(1, s):
        torch.addcmul(H5[:, : m - 1, j], a5[:, : m - 1, j], e, out=e)
    p = (dt.view(batch, m, s, dim)[:, : m - 1].sum(2)[:, :, None, :] * A2).exp2_()  # decay over a sub-chunk
    # 2. carry the true state across sub-chunks
    starts_out[:, 0] = h
    for k in range(m - 1):
        torch.addcmul(e[:, k], p[:, k], starts_out[:, k], out=starts_out[:, k + 1])  # (b, n, d)
    # 3. every state from its sub-chunk's true start, in place over β; then y = C · h
    cur = starts_out
    for j in range(s):
        cur = H5[:, :, j].addcmul_(a5[:, :, j], cur)  # h_j = a_j h_{j-1} + β_j          (b, m, n, d)
    _dot_n(H, C, y_out)  # y = C · h                                                  (b, t, d)
    return H[:, -1].clone()


def _chunk_backward(g_next, dt, x, AT, A2, B, C, starts, dy, sub_len, grads, dA, work):
    """Gradients of one chunk. g_next (b, n, d): ∂L/∂h at the chunk's last position from outside the chunk.

    Writes grads["dt"|"x"] (b, t, d), grads["B"|"C"] (b, t, n, g), adds to dA (n, d); returns ∂L/∂h before
    the chunk.
    """
    batch, t, dim = dt.shape
    n, s = AT.shape[0], sub_len
    m = t // s
    a = _decay(dt, A2, work.get(0, batch, t))  # (b, t, n, d)
    H = _outer(x, B, work.get(1, batch, t))  # β, overwritten with h below             (b, t, n, d)
    ah = work.get(2, batch, t)  # a_t h_{t-1}                                             (b, t, n, d)
    a5, H5, ah5 = (v.view(batch, m, s, n, dim) for v in (a, H, ah))
    cur = starts
    for j in range(s):
        torch.mul(a5[:, :, j], cur, out=ah5[:, :, j])
        cur = H5[:, :, j].add_(ah5[:, :, j])  # h_j = a_j h_{j-1} + β_j
    _dot_d(dy, H, grads["C"])  # ∂C = Σ_d dy h

    G = _outer(dy, C, work.get(3, batch, t))  # C dy, becomes g = ∂L/∂h below         (b, t, n, d)
    G5 = G.view(batch, m, s, n, dim)
    # 1. g at each sub-chunk's first position (but the first's) with nothing from its right, times a there
    e = G5[:, 1:, s - 1].clone()  # (b, m-1, n, d)
    for j in range(s - 2, -1, -1):
        torch.addcmul(G5[:, 1:, j], a5[:, 1:, j + 1], e, out=e)
    e.mul_(a5[:, 1:, 0])
    p = (dt.view(batch, m, s, dim)[:, 1:].sum(2)[:, :, None, :] * A2).exp2_()  # decay over a sub-chunk
    # 2. carry right to left: what each sub-chunk's last position receives from its right
    incoming = torch.empty_like(starts)  # (b, m, n, d)
    incoming[:, m - 1] = g_next
    for k in range(m - 2, -1, -1):
        torch.addcmul(e[:, k], p[:, k], incoming[:, k + 1], out=incoming[:, k])  # (b, n, d)
    # 3. g everywhere, in place over C dy
    cur = G5[:, :, s - 1].add_(incoming)
    for j in range(s - 2, -1, -1):
        cur = G5[:, :, j].addcmul_(a5[:, :, j + 1], cur)  # g_j = C_j dy_j + a_{j+1} g_{j+1}

    _dot_n(G, B, grads["x"])  # ∂(Δx) = Σ_n g B
    _dot_d(x, G, grads["B"])  # ∂B = Σ_d g Δx
    q = ah.mul_(G)  # ∂L/∂(ΔA) = g a h_{t-1}                                              (b, t, n, d)
    _dot_n(q, AT, grads["dt"])  # ∂Δ = Σ_n q A
    dA += q.mul_(dt[:, :, None, :]).sum((0, 1))  # ∂A = Σ_{b,t} q Δ
    return a[:, 0] * G[:, 0]
