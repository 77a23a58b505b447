"""SSD in its dual, "attention" form: y = (L ∘ C Bᵀ) · (Δ x), one (l, l) matrix per head.

Same signature and semantics as reference.py (read its glossary first). Unrolling the recurrence,

    y_t = Σ_{s ≤ t} exp(Λ_t − Λ_s) (C_t · B_s) Δ_s x_s  +  exp(Λ_t) C_t · H_0,     Λ_t = Σ_{k ≤ t} Δ_k A,

so with the 1-semiseparable decay mask L[t, s] = exp(Λ_t − Λ_s) for t ≥ s (0 above the diagonal) the output
is masked linear attention: queries C, keys B, values Δ x. The final state is the same sum read at t = l:
H_l = Σ_s exp(Λ_l − Λ_s) Δ_s x_s ⊗ B_s + exp(Λ_l) H_0. Cost O(l² (n + p)) per head: for short sequences
and for teaching; the chunked backends apply this form inside chunks only.
"""

from __future__ import annotations

import torch

from mambalab.ops.ssd.common import expand_groups, run_ssd


def ssd_quadratic(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None,
                  return_final_state=False, cu_seqlens=None, chunk_size=64):
    """The whole sequence as one masked matrix product (chunk_size is ignored)."""
    return run_ssd(_dual_form, x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, return_final_state,
                   cu_seqlens)


def decay_mask(log_decay):
    """L[..., t, s] = exp(Λ_t − Λ_s) for t ≥ s, else 0, from log_decay = Λ (..., l) (non-increasing)."""
    length = log_decay.shape[-1]
    diff = log_decay[..., :, None] - log_decay[..., None, :]  # Λ_t − Λ_s          (..., l, l)
    causal = torch.ones(length, length, dtype=torch.bool, device=log_decay.device).tril()
    return torch.exp(diff.masked_fill(~causal, float("-inf")))  # exp(-inf) = 0 above the diagonal


def _dual_form(x, dt, A, B, C, state):
    heads = x.shape[2]
    B, C = expand_groups(B, heads), expand_groups(C, heads)  # (b, l, h, n)
    log_decay = torch.cumsum(dt * A, dim=1).transpose(1, 2)  # Λ_t                 (b, h, l)
    mask = decay_mask(log_decay)  # L                                                (b, h, l, l)
    scores = torch.einsum("bthn,bshn->bhts", C, B) * mask  # L ∘ C Bᵀ                (b, h, l, l)
    values = dt[..., None] * x  # Δ x                                                 (b, l, h, p)
    y = torch.einsum("bhts,bshp->bthp", scores, values)  # (b, l, h, p)
    decay_from_start = torch.exp(log_decay).transpose(1, 2)  # exp(Λ_t)               (b, l, h)
    y = y + decay_from_start[..., None] * torch.einsum("bthn,bhpn->bthp", C, state)
    if x.shape[1] == 0:
        return y, state
    to_end = torch.exp(log_decay[..., -1:] - log_decay)  # exp(Λ_l − Λ_s)            (b, h, l)
    final = torch.einsum("bhs,bshp,bshn->bhpn", to_end, values, B)  # (b, h, p, n)
    final = final + torch.exp(log_decay[..., -1])[..., None, None] * state
    return y, final
