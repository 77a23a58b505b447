"""Causal depthwise 1-D convolution (the short conv in front of the Mamba SSM) and its one-step update.

x: (b, d, l); weight: (d, w) (w = d_conv); bias: (d,). Output position t sees inputs t-w+1 .. t.
The conv state is the last w inputs, (b, d, w), oldest first: exactly the window the next step needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_ACTIVATIONS = (None, "silu", "swish")


def _check_activation(op, activation):
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of {_ACTIVATIONS}, got {activation!r}")


def _activate(x, activation):
    return F.silu(x) if activation in ("silu", "swish") else x


def _check_weight(op, weight, bias, dim):
    if weight.dim() != 2 or weight.shape[0] != dim:
        raise ValueError(f"{op}: weight must be (dim={dim}, width), got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (dim,):
        raise ValueError(f"{op}: bias must be (dim={dim},), got {tuple(bias.shape)}")


def causal_conv1d(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False):
    """y[:, i, t] = act(bias[i] + Σ_k weight[i, k] · x[:, i, t - (w-1) + k]); inputs before 0 come from
    initial_state (b, d, w) (its last w-1 columns), zeros if None. Returns y (b, d, l) [, final_state (b, d, w):
    the last w inputs, reaching back into initial_state when l < w]."""
    op = "causal_conv1d"
    _check_activation(op, activation)
    if x.dim() != 3:
        raise ValueError(f"{op}: x must be (batch, dim, L), got shape {tuple(x.shape)}")
    batch, dim, length = x.shape
    _check_weight(op, weight, bias, dim)
    width = weight.shape[1]
    if initial_state is None:
        history = x.new_zeros(batch, dim, width)  # (b, d, w)
    else:
        if tuple(initial_state.shape) != (batch, dim, width):
            raise ValueError(
                f"{op}: initial_state must be ({batch}, {dim}, {width}), got {tuple(initial_state.shape)}"
            )
        history = initial_state.to(x.dtype)  # (b, d, w)
    padded = torch.cat([history, x], dim=-1)  # (b, d, w+l)
    if length == 0:  # F.conv1d rejects an input shorter than the kernel
        y = x.new_empty(batch, dim, 0)  # (b, d, 0)
    else:  # the oldest history column is outside every window: the conv reads the last w-1+l columns
        bias = None if bias is None else bias.to(x.dtype)
        y = _activate(F.conv1d(padded[:, :, 1:], weight.unsqueeze(1).to(x.dtype), bias, groups=dim), activation)  # (b, d, l)
    if not return_final_state:
        return y
    return y, padded[:, :, -width:]  # (b, d, w)


def causal_conv1d_update(x_t, conv_state, weight, bias=None, activation=None):
    """One decode step: shift x_t (b, d) into conv_state (b, d, w) in place; return act(conv) (b, d)."""
    op = "causal_conv1d_update"
    _check_activation(op, activation)
    if conv_state.dim() != 3:
        raise ValueError(f"{op}: conv_state must be (batch, dim, width), got shape {tuple(conv_state.shape)}")
    batch, dim, width = conv_state.shape
    if tuple(x_t.shape) != (batch, dim):
        raise ValueError(f"{op}: x_t must be ({batch}, {dim}) like conv_state, got {tuple(x_t.shape)}")
    _check_weight(op, weight, bias, dim)
    if weight.shape[1] != width:
        raise ValueError(f"{op}: weight must be ({dim}, width={width}) like conv_state, got {tuple(weight.shape)}")
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

    _check_activation("causal_conv1d_update_fused", activation)
    kernels.check_step_inputs("causal_conv1d_update_fused", x_t, state_batch_indices)
    from mambalab.ops.triton.step import conv_update

    return conv_update(x_t, conv_state, weight, bias, activation is not None, state_batch_indices)
