"""Causal depthwise 1-D convolution (the short conv in front of the Mamba SSM) and its one-step update.

x: (b, d, l); weight: (d, w) (w = d_conv); bias: (d,). Output position t sees inputs t-w+1 .. t.
The conv state is the last w inputs, (b, d, w), oldest first: exactly the window the next step needs.
"""

# ruff: noqa: UP045  (typing.Optional: torch.library infers the custom ops' schemas from these annotations)

from typing import Optional

import torch
import torch.nn.functional as F

from mambalab.ops.backends import records_grad

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


def _check_sequence(op, x, weight, bias, activation, initial_state):
    _check_activation(op, activation)
    if x.dim() != 3:
        raise ValueError(f"{op}: x must be (batch, dim, L), got shape {tuple(x.shape)}")
    batch, dim, _ = x.shape
    _check_weight(op, weight, bias, dim)
    width = weight.shape[1]
    if initial_state is not None and tuple(initial_state.shape) != (batch, dim, width):
        raise ValueError(f"{op}: initial_state must be ({batch}, {dim}, {width}), got {tuple(initial_state.shape)}")


def _final_state(x, history, width):
    """The last w inputs (b, d, w), reaching back into history (b, d, w; zeros if None) when l < w. A copy,
    so that a kept state does not hold on to the whole sequence."""
    length = x.shape[-1]
    if length >= width:
        return x[:, :, length - width :].clone(memory_format=torch.contiguous_format)
    if history is None:
        history = x.new_zeros(*x.shape[:2], width)
    return torch.cat([history[:, :, length:], x], dim=-1)


def causal_conv1d(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False):
    """y[:, i, t] = act(bias[i] + Σ_k weight[i, k] · x[:, i, t - (w-1) + k]); inputs before 0 come from
    initial_state (b, d, w) (its last w-1 columns), zeros if None. Returns y (b, d, l) [, final_state (b, d, w):
    the last w inputs, reaching back into initial_state when l < w]."""
    _check_sequence("causal_conv1d", x, weight, bias, activation, initial_state)
    batch, dim, length = x.shape
    width = weight.shape[1]
    history = x.new_zeros(batch, dim, width) if initial_state is None else initial_state.to(x.dtype)  # (b, d, w)
    padded = torch.cat([history, x], dim=-1)  # (b, d, w+l)
    if length == 0:  # F.conv1d rejects an input shorter than the kernel
        y = x.new_empty(batch, dim, 0)  # (b, d, 0)
    else:  # the oldest history column is outside every window: the conv reads the last w-1+l columns
        bias = None if bias is None else bias.to(x.dtype)
        y = _activate(F.conv1d(padded[:, :, 1:], weight.unsqueeze(1).to(x.dtype), bias, groups=dim), activation)  # (b, d, l)
    if not return_final_state:
        return y
    return y, _final_state(x, history, width)  # (b, d, w)


def causal_conv1d_fused(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False):
    """`causal_conv1d` through the Triton kernels (mambalab/ops/triton/conv.py): one pass over x forward, one
    backward, on CUDA tensors or on CPU under Triton's interpreter. Same signature and semantics; x may have
    any strides (the mixer's channels-last in_proj output is read in place); y is contiguous (b, d, l)."""
    _check_sequence("causal_conv1d_fused", x, weight, bias, activation, initial_state)
    from mambalab.ops import triton as kernels

    kernels.check_device("causal_conv1d_fused", x)
    history = None if initial_state is None else initial_state.to(x.dtype)
    if x.shape[-1] == 0:
        y = x.new_empty(x.shape)
    elif records_grad(x, weight, bias, history) or torch.compiler.is_compiling():  # the op: autograd, or tracing
        y = _conv_fwd_op(x, weight, bias, history, activation is not None)
    else:  # inference: the kernel without the op's dispatch
        from mambalab.ops.triton.conv import conv_forward

        y = conv_forward(x, weight, bias, history, activation is not None)
    if not return_final_state:
        return y
    return y, _final_state(x, history, weight.shape[1])


# The ops' annotations are real types: torch.library infers their schemas from them.
@torch.library.custom_op("mambalab::causal_conv1d_fwd", mutates_args=())
def _conv_fwd_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 initial_state: Optional[torch.Tensor], silu: bool) -> torch.Tensor:
    from mambalab.ops.triton.conv import conv_forward

    return conv_forward(x, weight, bias, initial_state, silu)


@_conv_fwd_op.register_fake
def _conv_fwd_fake(x, weight, bias, initial_state, silu):
    return x.new_empty(x.shape)


@torch.library.custom_op("mambalab::causal_conv1d_bwd", mutates_args=())
def _conv_bwd_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 initial_state: Optional[torch.Tensor], silu: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias, d_initial_state) in the inputs' dtypes; empty for absent inputs."""
    from mambalab.ops.triton.conv import conv_backward

    dx, dw, dbias, dh0 = conv_backward(dy, x, weight, bias, initial_state, silu)
    return (dx, dw.to(weight.dtype), dbias.to(bias.dtype) if bias is not None else x.new_empty(0),
            dh0.to(initial_state.dtype) if initial_state is not None else x.new_empty(0))


@_conv_bwd_op.register_fake
def _conv_bwd_fake(dy, x, weight, bias, initial_state, silu):
    like = lambda t: t.new_empty(t.shape) if t is not None else x.new_empty(0)  # contiguous
    return like(x), like(weight), like(bias), like(initial_state)


def _conv_setup_context(ctx, inputs, output):
    x, weight, bias, initial_state, silu = inputs
    ctx.save_for_backward(x, weight, bias, initial_state)
    ctx.silu = silu


def _conv_backward(ctx, dy):
    x, weight, bias, initial_state = ctx.saved_tensors
    dx, dw, dbias, dh0 = _conv_bwd_op(dy, x, weight, bias, initial_state, ctx.silu)
    return (dx, dw, dbias if bias is not None else None, dh0 if initial_state is not None else None, None)


_conv_fwd_op.register_autograd(_conv_backward, setup_context=_conv_setup_context)


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
