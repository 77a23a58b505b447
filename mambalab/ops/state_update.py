"""One recurrent (RNN-mode) step of the selective SSM: the decode-time counterpart of selective_scan.

state: (b, d, n) float32, updated in place; x_t, dt_t, z_t: (b, d); A: (d, n); B_t, C_t: (b, n) or
(b, g, n); D, dt_bias: (d,). Same math as one iteration of reference.py's loop.
"""

from __future__ import annotations

import torch.nn.functional as F


def selective_state_update(state, x_t, dt_t, A, B_t, C_t, D=None, z_t=None, dt_bias=None, dt_softplus=False):
    """h ← exp(Δ A) h + Δ B x; returns y = (C·h + D x) · silu(z)  (b, d) in x_t's dtype."""
    _validate(state, x_t, dt_t, A, B_t, C_t, D, z_t, dt_bias)
    dim = state.shape[1]
    dt = dt_t.to(state.dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(state.dtype)
    if dt_softplus:
        dt = F.softplus(dt)  # Δ                                                      (b, d)
    if B_t.dim() == 3:  # groups: channel i reads group i // (d/g)
        B_t = B_t.repeat_interleave(dim // B_t.shape[1], dim=1)  # (b, d, n)
        C_t = C_t.repeat_interleave(dim // C_t.shape[1], dim=1)
    else:
        B_t, C_t = B_t[:, None, :], C_t[:, None, :]  # (b, 1, n)
    x = x_t.to(state.dtype)
    dA = (dt[..., None] * A).exp()  # Ā = exp(Δ A)                                    (b, d, n)
    dBx = dt[..., None] * B_t.to(state.dtype) * x[..., None]  # B̄ x = Δ B x             (b, d, n)
    state.copy_(dA * state + dBx)  # h_t = Ā h_{t-1} + B̄ x_t
    y = (state * C_t.to(state.dtype)).sum(-1)  # C_t · h_t                              (b, d)
    if D is not None:
        y = y + D.to(state.dtype) * x
    if z_t is not None:
        y = y * F.silu(z_t.to(state.dtype))
    return y.to(x_t.dtype)


def selective_state_update_fused(
    state, x_t, dt_t, A, B_t, C_t, D=None, z_t=None, dt_bias=None, dt_softplus=False, state_batch_indices=None
):
    """`selective_state_update` as one Triton launch (CUDA tensors, or CPU under Triton's interpreter).

    state_batch_indices: optional (b,) integer tensor; row i reads and updates state[state_batch_indices[i]]
    (state then holds any number of slots, (slots, d, n)), so a server decodes a subset of its state pool in place.
    """
    from mambalab.ops import triton as kernels

    kernels.check_step_inputs("selective_state_update_fused", x_t, state_batch_indices)
    from mambalab.ops.triton.step import state_update

    return state_update(state, x_t, dt_t, A, B_t, C_t, D, z_t, dt_bias, dt_softplus, state_batch_indices)


def _validate(state, x_t, dt_t, A, B_t, C_t, D, z_t, dt_bias):
    def expect(cond, message):
        if not cond:
            raise ValueError(f"selective_state_update: {message}")

    expect(state.dim() == 3, f"state must be (batch, dim, N), got shape {tuple(state.shape)}")
    batch, dim, n = state.shape
    for name, t in (("x_t", x_t), ("dt_t", dt_t), ("z_t", z_t)):
        expect(t is None or tuple(t.shape) == (batch, dim), f"{name} must be ({batch}, {dim}), got {_shape(t)}")
    expect(tuple(A.shape) == (dim, n), f"A must be ({dim}, {n}), got {tuple(A.shape)}")
    groups = B_t.shape[1] if B_t.dim() == 3 else 1
    expected = (batch, n) if B_t.dim() == 2 else (batch, groups, n)
    expect(tuple(B_t.shape) == expected and dim % groups == 0,
           f"B_t must be ({batch}, {n}) or ({batch}, G, {n}) with G dividing {dim}, got {tuple(B_t.shape)}")
    expect(C_t.shape == B_t.shape, f"C_t must have B_t's shape {tuple(B_t.shape)}, got {tuple(C_t.shape)}")
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        expect(t is None or tuple(t.shape) == (dim,), f"{name} must be ({dim},), got {_shape(t)}")


def _shape(t):
    return None if t is None else tuple(t.shape)
