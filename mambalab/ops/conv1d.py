"""Causal depthwise 1-D convolution (the short conv in front of the Mamba SSM) and its one-step update.

x: (b, d, l); weight: (d, w) (w = d_conv); bias: (d,). Output position t sees inputs t-w+1 .. t.
The conv state is the last w inputs, (b, d, w), oldest first: exactly the window the next step needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_ACTIVATIONS = (None, "silu", "swish")


def _activate(x, activation):
    if activation not in _ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be one of {_ACTIVATIONS}, got {activation!r}")
    return F.silu(x) if activation in ("silu", "swish") else x


def causal_conv1d(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False):
    """y[:, i, t] = act(bias[i] + Σ_k weight[i, k] · x[:, i, t - (w-1) + k]); inputs before 0 come from
    initial_state (b, d, w) (its last w-1 columns), zeros if None. Returns y (b, d, l) [, final_state (b, d, w)]."""
    batch, dim, length = x.shape
    if weight.dim() != 2 or weight.shape[0] != dim:
        raise ValueError(f"causal_conv1d: weight must be (dim={dim}, width), got {tuple(weight.shape)}")
    width = weight.shape[1]
    if initial_state is None:
        history = x.new_zeros(batch, dim, width - 1)  # (b, d, w-1)
    else:
        if tuple(initial_state.shape) != (batch, dim, width):
            raise ValueError(
                f"causal_conv1d: initial_state must be ({batch}, {dim}, {width}), got {tuple(initial_state.shape)}"
            )
        history = initial_state[:, :, 1:].to(x.dtype)  # (b, d, w-1)
    padded = torch.cat([history, x], dim=-1)  # (b, d, w-1+l)
    y = F.conv1d(padded, weight.unsqueeze(1).to(x.dtype), None if bias is None else bias.to(x.dtype), groups=dim)
    y = _activate(y, activation)  # (b, d, l)
    if not return_final_state:
        return y
    final_state = torch.cat([x.new_zeros(batch, dim, 1), padded], dim=-1)[:, :, -width:]  # (b, d, w)
    return y, final_state


def causal_conv1d_update(x_t, conv_state, weight, bias=None, activation=None):
    """One decode step: shift x_t (b, d) into conv_state (b, d, w) in place; return act(conv) (b, d)."""
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x_t
    y = (conv_state * weight.to(conv_state.dtype)).sum(-1)  # (b, d)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return _activate(y, activation).to(x_t.dtype)


def causal_conv1d_update_fused(x_t, conv_state, weight, bias=None, activation=None, state_batch_indices=None):
    """`causal_conv1d_update` as one Triton launch (CUDA tensors, or CPU under Triton's interpreter).

    state_batch_indices: optional (b,) integer tensor; row i shifts x_t[i] into conv_state[state_batch_indices[i]].
    """
    from mambalab.ops import triton as kernels

    _activate(x_t[:0], activation)  # validates the activation name
    kernels.check_step_inputs("causal_conv1d_update_fused", x_t, state_batch_indices)
    from mambalab.ops.triton.step import conv_update

    return conv_update(x_t, conv_state, weight, bias, activation is not None, state_batch_indices)
