"""The Mamba-1 mixer's recurrent step between in_proj and out_proj (Figure 3, one token): conv window update,
SiLU, x_proj (Δ low-rank, B, C), dt_proj, the selective state update, the gate.

x_t, z_t: (b, d) (the two halves of in_proj's output); conv_state (b, d, w) and ssm_state (b, d, n) float32,
both updated in place; conv_weight (d, w), conv_bias (d,); x_proj_weight (r + 2n, d); dt_proj_weight (d, r),
dt_proj_bias (d,); A_log (d, n) (A = -exp(A_log)); D (d,). Returns y (b, d) in x_t's dtype.

`mixer_step` composes the single ops (the reference); `mixer_step_fused` runs it as two Triton launches (the
torch path takes eight kernels per layer even when compiled: the conv and state updates, three projections,
the exp of A_log and the split; at batch 1 each is launch- and latency-bound, 2-6 µs on an H200).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mambalab.ops.conv1d import causal_conv1d_update
from mambalab.ops.state_update import selective_state_update


def mixer_step(x_t, z_t, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias,
               A_log, D=None):
    """The step as the composition of the single ops (the oracle of `mixer_step_fused`)."""
    rank, n = dt_proj_weight.shape[1], A_log.shape[1]
    x = causal_conv1d_update(x_t, conv_state, conv_weight, conv_bias, "silu")  # (b, d)
    dt, B, C = F.linear(x, x_proj_weight).split([rank, n, n], dim=-1)  # (b, r), (b, n), (b, n)
    dt = F.linear(dt, dt_proj_weight)  # Δ before bias and softplus                           (b, d)
    A = -torch.exp(A_log.float() if A_log.dtype != torch.float64 else A_log)  # (d, n)
    return selective_state_update(ssm_state, x, dt, A, B, C, D, z_t, dt_bias=dt_proj_bias, dt_softplus=True)


def mixer_step_fused(x_t, z_t, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                     dt_proj_bias, A_log, D=None, state_batch_indices=None):
    """`mixer_step` as two Triton launches (CUDA tensors, or CPU under Triton's interpreter). x_proj and dt_proj
    accumulate in float32 (the torch path rounds their outputs to the weights' dtype).

    state_batch_indices: optional (b,) integer tensor; row i reads and updates slot state_batch_indices[i] of
    both states (slots, d, ·), as for `selective_state_update_fused`."""
    from mambalab.ops import triton as kernels

    kernels.check_step_inputs("mixer_step_fused", x_t, state_batch_indices)
    batch, dim = x_t.shape
    rank, n = dt_proj_weight.shape[1], A_log.shape[1]
    expected = {"z_t": (z_t, (batch, dim)), "conv_weight": (conv_weight, (dim, conv_state.shape[-1])),
                "x_proj_weight": (x_proj_weight, (rank + 2 * n, dim)), "dt_proj_weight": (dt_proj_weight, (dim, rank)),
                "dt_proj_bias": (dt_proj_bias, (dim,)), "A_log": (A_log, (dim, n))}
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"mixer_step_fused: {name} must be {shape}, got {tuple(t.shape)}")
    from mambalab.ops.triton.step import mixer_step as launch

    return launch(x_t, z_t, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                  dt_proj_bias, A_log, D, state_batch_indices)
