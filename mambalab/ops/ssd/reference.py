"""Mamba-2's SSD layer written as a for-loop over time: the oracle every other backend is tested against.

Glossary (code name ↔ paper symbol ↔ shape), after "Transformers are SSMs" (Dao & Gu, 2024, arXiv 2405.21060):

    b        batch size
    l        sequence length / time index t                   T
    h        heads (the state is per head; not the state h_t)  H
    p        head dimension                                   P
    n        state size                                       N
    g        groups of B/C heads: head i reads group i // (h / g)  (like grouped-query attention)
    x        input sequence                                   X       (b, l, h, p)
    dt       step size before bias/softplus                   Δ       (b, l, h)
    A        scalar decay per head, negative                  A       (h,)
    B        input projection, input-dependent                B_t     (b, l, g, n)
    C        output projection, input-dependent               C_t     (b, l, g, n)
    D        skip connection                                  D       (h,) or (h, p)
    z        gate branch (y is multiplied by SiLU(z))                 (b, l, h, p)
    state    hidden state per head                            H_t     (b, h, p, n)
    a_t = exp(Δ_t A)   the decay: a scalar per head and step, where Mamba-1 has a (d, n) matrix

The recurrence, for every batch row and head:

    Δ_t = softplus(dt_t + dt_bias)   (or dt_t + dt_bias without softplus)
    H_t = exp(Δ_t A) · H_{t-1} + Δ_t · x_t ⊗ B_t          (p, n)
    y_t = H_t · C_t + D x_t                              (p,)
    y_t = y_t · silu(z_t)

"State space duality": because the decay is a scalar per head, unrolling the recurrence gives
y = (L ∘ C Bᵀ) · (Δ x) with the 1-semiseparable mask L[t, s] = exp(Σ_{s<k≤t} Δ_k A) for t ≥ s, else 0:
masked linear attention with C as queries, B as keys and Δ x as values (quadratic.py), and the chunked
algorithm (torch_ssd.py, triton_ssd.py) mixes the two forms.

`cu_seqlens` ((num_seqs + 1,) integer, batch 1) packs sequences along l: the state restarts from that
sequence's initial state at each boundary, and a final state is returned per sequence.
"""

from __future__ import annotations

import torch

from mambalab.ops.ssd.common import expand_groups, run_ssd


def ssd_reference(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None,
                  return_final_state=False, cu_seqlens=None, chunk_size=64):
    """One step per position (chunk_size is ignored: there are no chunks here)."""
    return run_ssd(_recurrence, x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, return_final_state,
                   cu_seqlens)


def _recurrence(x, dt, A, B, C, state):
    """H_t = exp(Δ_t A) H_{t-1} + Δ_t x_t ⊗ B_t;  y_t = H_t · C_t, for all positions in turn."""
    heads = x.shape[2]
    B, C = expand_groups(B, heads), expand_groups(C, heads)  # (b, l, h, n)
    ys = []
    for x_t, dt_t, B_t, C_t in zip(x.unbind(1), dt.unbind(1), B.unbind(1), C.unbind(1), strict=True):
        decay = torch.exp(dt_t * A)[:, :, None, None]  # a_t = exp(Δ_t A)        (b, h, 1, 1)
        inp = (dt_t[:, :, None] * x_t)[..., None] * B_t[:, :, None, :]  # Δ_t x_t ⊗ B_t  (b, h, p, n)
        state = decay * state + inp  # H_t                                         (b, h, p, n)
        ys.append((state * C_t[:, :, None, :]).sum(-1))  # y_t = H_t · C_t           (b, h, p)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(x.shape)  # (b, l, h, p)
    return y, state
