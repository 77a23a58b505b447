"""The reference causal depthwise conv1d (torch's `F.conv1d`) and its one-step window update.

The oracle of the Triton backend (triton_conv.py); arguments are validated by `mambalab.ops.causal_conv1d`.
Semantics as the official `causal_conv1d_fn` / `causal_conv1d_update` of Dao-AILab/causal-conv1d, which the
Mamba block (arXiv 2312.00752, Figure 3) runs before its SSM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def activate(x: torch.Tensor, activation: str | None) -> torch.Tensor:
    return F.silu(x) if activation in ("silu", "swish") else x


def final_state(x: torch.Tensor, history: torch.Tensor | None, width: int) -> torch.Tensor:
    """The last w inputs (b, d, w), reaching back into history (b, d, w; zeros if None) when l < w. A copy,
    so that a kept state does not hold on to the whole sequence."""
    length = x.shape[-1]
    if length >= width:
        return x[:, :, length - width :].clone(memory_format=torch.contiguous_format)
    if history is None:
        history = x.new_zeros(*x.shape[:2], width)
    return torch.cat([history[:, :, length:], x], dim=-1)


def causal_conv1d_reference(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False):
    """y[:, i, t] = act(bias[i] + Σ_k weight[i, k] · x[:, i, t - (w-1) + k]), through one grouped F.conv1d."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    history = x.new_zeros(batch, dim, width) if initial_state is None else initial_state.to(x.dtype)  # (b, d, w)
    padded = torch.cat([history, x], dim=-1)  # (b, d, w+l)
    if length == 0:  # F.conv1d rejects an input shorter than the kernel
        y = x.new_empty(batch, dim, 0)  # (b, d, 0)
    else:  # the oldest history column is outside every window: the conv reads the last w-1+l columns
        bias = None if bias is None else bias.to(x.dtype)
        y = activate(F.conv1d(padded[:, :, 1:], weight.unsqueeze(1).to(x.dtype), bias, groups=dim), activation)  # (b, d, l)
    if not return_final_state:
        return y
    return y, final_state(x, history, width)  # (b, d, w)


def causal_conv1d_update_reference(x_t, conv_state, weight, bias=None, activation=None, state_batch_indices=None):
    """Shift x_t (b, d) into its window of conv_state in place (row i's window is conv_state[i], or
    conv_state[state_batch_indices[i]]); return act(window · weight + bias) (b, d) in x_t's dtype."""
    if state_batch_indices is not None:  # gather the rows' windows, step them, scatter them back
        windows = conv_state[state_batch_indices]  # (b, d, w)
        y = causal_conv1d_update_reference(x_t, windows, weight, bias, activation)
        conv_state[state_batch_indices] = windows
        return y
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x_t
    y = (conv_state * weight.to(conv_state.dtype)).sum(-1)  # (b, d)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return activate(y, activation).to(x_t.dtype)
