"""The reference recurrent (RNN-mode) steps: one token of the selective SSM (`selective_state_update_reference`)
and of the Mamba mixer between in_proj and out_proj (`mixer_step_reference`, the composition of the single ops).

The oracles of the Triton backend (triton_step.py); arguments are validated by `mambalab.ops.state_update`.
The math is one iteration of mambalab/ops/selective_scan/reference.py's loop (arXiv 2312.00752, Algorithm 2
in recurrent mode; the official step is `selective_state_update` in state-spaces/mamba).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mambalab.ops.causal_conv1d.reference import causal_conv1d_update_reference


def selective_state_update_reference(state, x_t, dt_t, A, B_t, C_t, D=None, z_t=None, dt_bias=None,
                                     dt_softplus=False, state_batch_indices=None):
    """h ← exp(Δ A) h + Δ B x; returns y = (C·h + D x) · silu(z)  (b, d) in x_t's dtype. Row i's state is
    state[i], or state[state_batch_indices[i]]."""
    if state_batch_indices is not None:  # gather the rows' states, step them, scatter them back
        rows = state[state_batch_indices]  # (b, d, n)
        y = selective_state_update_reference(rows, x_t, dt_t, A, B_t, C_t, D, z_t, dt_bias, dt_softplus)
        state[state_batch_indices] = rows
        return y
    dim = state.shape[1]
    compute = torch.float64 if torch.float64 in (state.dtype, x_t.dtype) else torch.float32  # a 16-bit state too
    dt = dt_t.to(compute)
    if dt_bias is not None:
        dt = dt + dt_bias.to(compute)
    if dt_softplus:
        dt = F.softplus(dt)  # Δ                                                      (b, d)
    if B_t.dim() == 3:  # groups: channel i reads group i // (d/g)
        B_t = B_t.repeat_interleave(dim // B_t.shape[1], dim=1)  # (b, d, n)
        C_t = C_t.repeat_interleave(dim // C_t.shape[1], dim=1)
    else:
        B_t, C_t = B_t[:, None, :], C_t[:, None, :]  # (b, 1, n)
    x = x_t.to(compute)
    dA = (dt[..., None] * A.to(compute)).exp()  # Ā = exp(Δ A)                         (b, d, n)
    dBx = dt[..., None] * B_t.to(compute) * x[..., None]  # B̄ x = Δ B x                 (b, d, n)
    h = dA * state.to(compute) + dBx  # h_t = Ā h_{t-1} + B̄ x_t                        (b, d, n)
    state.copy_(h)  # rounded to the state's dtype; y reads h unrounded, as the Triton kernel
    y = (h * C_t.to(compute)).sum(-1)  # C_t · h_t                                      (b, d)
    if D is not None:
        y = y + D.to(compute) * x
    if z_t is not None:
        y = y * F.silu(z_t.to(compute))
    return y.to(x_t.dtype)


def mixer_step_reference(x_t, z_t, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                         dt_proj_bias, A_log, D=None, state_batch_indices=None):
    """The mixer's step as the composition of the single ops: conv window update, SiLU, x_proj (Δ low-rank,
    B, C), dt_proj, the selective state update with the gate."""
    rank, n = dt_proj_weight.shape[1], A_log.shape[1]
    x = causal_conv1d_update_reference(x_t, conv_state, conv_weight, conv_bias, "silu", state_batch_indices)  # (b, d)
    dt, B, C = F.linear(x, x_proj_weight).split([rank, n, n], dim=-1)  # (b, r), (b, n), (b, n)
    dt = F.linear(dt, dt_proj_weight)  # Δ before bias and softplus                           (b, d)
    A = -torch.exp(A_log.float() if A_log.dtype != torch.float64 else A_log)  # (d, n)
    return selective_state_update_reference(ssm_state, x, dt, A, B, C, D, z_t, dt_bias=dt_proj_bias,
                                            dt_softplus=True, state_batch_indices=state_batch_indices)
