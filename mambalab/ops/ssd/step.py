"""One decode step of SSD in PyTorch (the reference of the fused step kernel):

    Δ = softplus(dt_t + dt_bias) (or dt_t + dt_bias);  H ← exp(Δ A) H + Δ x_t ⊗ B_t;  y_t = H · C_t + D x_t;
    y_t · silu(z_t).

The state is updated in place (rows `state_batch_indices` of a slot pool when given): read, upcast to float32
(float64), advanced, rounded to its own dtype on store; y_t is read from the unrounded state.
"""

from __future__ import annotations

from mambalab.ops.ssd.common import compute_dtype, discretize_dt, expand_groups, skip_and_gate


def ssd_state_update_reference(state, x_t, dt_t, A, B_t, C_t, D=None, z_t=None, dt_bias=None, dt_softplus=False,
                               state_batch_indices=None):
    """y_t (b, h, p) in x_t's dtype; `state` advanced by one step."""
    compute = compute_dtype(state, x_t, dt_t, A, B_t, C_t)
    heads = x_t.shape[1]
    rows = state if state_batch_indices is None else state[state_batch_indices.long()]
    h = rows.to(compute)  # (b, h, p, n)
    x = x_t.to(compute)  # (b, h, p)
    dt = discretize_dt(dt_t.to(compute), dt_bias, dt_softplus)  # Δ  (b, h)
    B = expand_groups(B_t.to(compute)[:, None], heads)[:, 0]  # (b, h, n)
    C = expand_groups(C_t.to(compute)[:, None], heads)[:, 0]  # (b, h, n)
    decay = (dt * A.to(compute)).exp()[..., None, None]  # exp(Δ A)          (b, h, 1, 1)
    h = decay * h + (dt[..., None] * x)[..., None] * B[:, :, None, :]  # (b, h, p, n)
    y = (h * C[:, :, None, :]).sum(-1)  # H · C_t                             (b, h, p)
    if state_batch_indices is None:
        state.copy_(h)
    else:
        state[state_batch_indices.long()] = h.to(state.dtype)
    return skip_and_gate(y[:, None], x[:, None], D, None if z_t is None else z_t[:, None])[:, 0].to(x_t.dtype)
