"""Selective scan, written as plain for-loops: the oracle every fast backend is tested against.

"Big scary math symbols are just for-loops." Glossary (code name ↔ paper symbol ↔ shape):

    b        batch size                                   B (batch)
    d        channels of the SSM (d_inner = expand·d_model) D in the paper's shapes (B, L, D)
    l        sequence length / time index t               L
    n        state size per channel                       N
    u        input sequence x_t                           x     (b, d, l)
    delta    step size before softplus/bias              Δ     (b, d, l)
    A        state matrix (diagonal, negative real)       A     (d, n)      float32
    B        input matrix, input-dependent                B_t   (b, n, l) or (b, g, n, l)
    C        output matrix, input-dependent               C_t   (b, n, l) or (b, g, n, l)
    D        skip connection                              D     (d,)
    z        gate branch (multiplied by SiLU(z))                (b, d, l)
    g        groups: channel i uses B/C group i // (d // g)
    h        hidden state                                 h_t   (b, d, n)
    Ā = exp(Δ A)   discretized A (zero-order hold)
    B̄ x = Δ B x    discretized B (Euler, as the official kernel)

The recurrence, for every batch row, channel and state index:

    h_t = exp(Δ_t A) · h_{t-1} + Δ_t B_t u_t
    y_t = Σ_n C_t[n] h_t[n] + D u_t
    y_t = y_t · silu(z_t)

`cu_seqlens` (cumulative sequence lengths, (num_seqs + 1,) int) packs several sequences along l in a
single batch row (batch must be 1): the state is reset to that sequence's initial state at each boundary,
and a final state is returned per sequence. Then initial_state / final_state are (num_seqs, d, n).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_reference(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    initial_state=None, return_final_state=False, cu_seqlens=None,
):
    """One loop over time; each iteration is the recurrence above for all (b, d, n) at once."""
    out_dtype = u.dtype
    # The oracle computes in float64 when any input is float64, else in float32.
    compute = torch.float64 if torch.float64 in (u.dtype, delta.dtype, A.dtype) else torch.float32
    u, delta, A, B, C = (t.to(compute) for t in (u, delta, A, B, C))
    batch, dim, length = u.shape

    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[None, :, None]  # Δ + bias        (b, d, l)
    if delta_softplus:
        delta = F.softplus(delta)  # Δ = softplus(Δ + bias)                      (b, d, l)

    if B.dim() == 3:  # one group: (b, n, l) -> (b, 1, n, l)
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    group_size = dim // B.shape[1]  # channel i reads B/C group i // group_size

    if cu_seqlens is None:
        bounds = [0, length]  # every batch row is one sequence
    else:
        bounds = [int(x) for x in cu_seqlens]  # batch is 1; sequence s is positions bounds[s]:bounds[s+1]
    if initial_state is None:  # h_0 = 0
        initial_state = u.new_zeros(batch if cu_seqlens is None else len(bounds) - 1, dim, A.shape[1])

    # One tensor per time step (unbind keeps the backward linear in l: each step's gradient is written once).
    us, deltas, Bs, Cs = u.unbind(-1), delta.unbind(-1), B.unbind(-1), C.unbind(-1)
    ys, finals = [], []
    for s in range(len(bounds) - 1):
        h = initial_state if cu_seqlens is None else initial_state[s : s + 1]
        h = h.to(compute)  # h_0                                                           (b, d, n)
        for t in range(bounds[s], bounds[s + 1]):
            dt = deltas[t][:, :, None]  # Δ_t                                               (b, d, 1)
            B_t = Bs[t].repeat_interleave(group_size, dim=1)  # B_t for every channel        (b, d, n)
            C_t = Cs[t].repeat_interleave(group_size, dim=1)  # C_t for every channel        (b, d, n)
            dA = torch.exp(dt * A)  # Ā_t = exp(Δ_t A)                                       (b, d, n)
            dBu = dt * B_t * us[t][:, :, None]  # B̄_t x_t = Δ_t B_t x_t                      (b, d, n)
            h = dA * h + dBu  # h_t = Ā_t h_{t-1} + B̄_t x_t                                (b, d, n)
            ys.append((h * C_t).sum(-1))  # y_t = C_t · h_t                                  (b, d)
        finals.append(h)

    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)  # (b, d, l)
    if D is not None:
        y = y + D.to(compute)[None, :, None] * u  # y_t += D x_t
    if z is not None:
        y = y * F.silu(z.to(compute))  # y_t *= silu(z_t)
    y = y.to(out_dtype)
    if not return_final_state:
        return y
    final_state = torch.cat(finals)  # (b, d, n) or (num_seqs, d, n)
    return y, final_state if compute == torch.float64 else final_state.float()
