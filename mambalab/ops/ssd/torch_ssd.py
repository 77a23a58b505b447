"""Chunked SSD in pure PyTorch (any device; gradients by autograd).

Same signature and semantics as reference.py (read its glossary first). The sequence is cut into chunks of
`chunk_size` positions (the last one zero-padded: Δ = 0 leaves the state unchanged and adds nothing). With
Λ the cumulative log-decay Σ Δ_k A restarted at each chunk:

    1. intra-chunk output   y_t ← Σ_{s ≤ t in the chunk} exp(Λ_t − Λ_s) (C_t · B_s) Δ_s x_s   (quadratic form)
    2. chunk states         S_c = Σ_s exp(Λ_last − Λ_s) Δ_s x_s ⊗ B_s                    (what chunk c adds)
    3. state passing        H_c = exp(Λ_last) H_{c−1} + S_c, from H_0 = initial_state   (recurrence over chunks)
    4. inter-chunk output   y_t += exp(Λ_t) C_t · H_{c−1}                              (the state entering the chunk)

Cost O(l · chunk_size · (n + p)) for 1 and 4, O(l · p · n) for 2, and l / chunk_size small steps for 3.
Every exponential has a non-positive argument, so nothing overflows. Heads are laid out as (g, h / g) so the
C Bᵀ scores are computed once per group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mambalab.ops.ssd.common import run_ssd
from mambalab.ops.ssd.quadratic import decay_mask


def ssd_torch(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None,
              return_final_state=False, cu_seqlens=None, chunk_size=64):
    """Chunked SSD (see the module docstring)."""
    return run_ssd(_chunked, x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, return_final_state,
                   cu_seqlens, chunk_size=chunk_size)


def _chunked(x, dt, A, B, C, state, chunk_size):
    batch, length, heads, head_dim = x.shape
    groups, n = B.shape[2], B.shape[3]
    per_group = heads // groups
    chunks = -(-length // chunk_size)
    pad = chunks * chunk_size - length
    q = chunk_size

    def chunked(t):  # (b, l, ...) -> (b, c, q, ...), zero-padded at the end
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.reshape(batch, chunks, q, *t.shape[2:])

    xs = chunked(x).reshape(batch, chunks, q, groups, per_group, head_dim)  # (b, c, q, g, r, p)
    dts = chunked(dt)  # (b, c, q, h)
    Bs, Cs = chunked(B), chunked(C)  # (b, c, q, g, n)
    log_decay = torch.cumsum(dts * A, dim=2).permute(0, 3, 1, 2)  # Λ within each chunk   (b, h, c, q)
    log_decay = log_decay.reshape(batch, groups, per_group, chunks, q)  # (b, g, r, c, q)
    values = xs * dts.reshape(batch, chunks, q, groups, per_group)[..., None]  # Δ x     (b, c, q, g, r, p)

    # 1. intra-chunk: (L ∘ C Bᵀ) (Δ x) inside each chunk
    scores = torch.einsum("bcqgn,bckgn->bcgqk", Cs, Bs)  # C_t · B_s                  (b, c, g, q, q)
    mask = decay_mask(log_decay).permute(0, 3, 1, 2, 4, 5)  # L                         (b, c, g, r, q, q)
    y = torch.einsum("bcgrqk,bckgrp->bcqgrp", scores[:, :, :, None] * mask, values)  # (b, c, q, g, r, p)

    # 2. what each chunk adds to the state
    to_end = torch.exp(log_decay[..., -1:] - log_decay)  # exp(Λ_last − Λ_s)           (b, g, r, c, q)
    to_end = to_end.permute(0, 3, 4, 1, 2)[..., None]  # (b, c, q, g, r, 1)
    added = torch.einsum("bcqgrp,bcqgn->bcgrpn", values * to_end, Bs)  # S_c               (b, c, g, r, p, n)

    # 3. pass the state from chunk to chunk
    chunk_decay = torch.exp(log_decay[..., -1])  # exp(Λ_last)                           (b, g, r, c)
    state = state.reshape(batch, groups, per_group, head_dim, n)  # H_0                  (b, g, r, p, n)
    entering = []
    for c in range(chunks):
        entering.append(state)
        state = chunk_decay[..., c, None, None] * state + added[:, c]
    entering = torch.stack(entering, dim=1) if chunks else added  # H_{c-1}             (b, c, g, r, p, n)

    # 4. the entering state's share of each output
    from_start = torch.exp(log_decay).permute(0, 3, 4, 1, 2)  # exp(Λ_t)               (b, c, q, g, r)
    y = y + from_start[..., None] * torch.einsum("bcqgn,bcgrpn->bcqgrp", Cs, entering)
    y = y.reshape(batch, chunks * q, heads, head_dim)[:, :length]  # (b, l, h, p)
    return y, state.reshape(batch, heads, head_dim, n)
