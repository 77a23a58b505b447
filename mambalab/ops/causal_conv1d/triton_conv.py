"""`backend="triton"` of the causal conv: the kernels of triton_kernels.py (sequence, forward and backward) and
of mambalab/ops/state_update/triton_kernels.py (the one-step window update, which shares its window code with
the fused mixer step) as differentiable torch ops.

Two torch.library custom ops, `mambalab::causal_conv1d_fwd` and `mambalab::causal_conv1d_bwd`, with fake
implementations and autograd, so `torch.compile` traces a mixer using them without graph breaks. CUDA tensors,
or CPU tensors under Triton's interpreter. Arguments are validated by `mambalab.ops.causal_conv1d`. The bias
goes to the kernels contiguous (`dense`): they read it without a stride.
"""

# ruff: noqa: UP045  (typing.Optional: torch.library infers the custom ops' schemas from these annotations)

from typing import Optional

import torch

from mambalab.ops.backends import records_grad
from mambalab.ops.causal_conv1d.reference import final_state
from mambalab.ops.triton import dense


def causal_conv1d_triton(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False):
    """`causal_conv1d` in one pass over x forward, one backward. x may have any strides (the mixer's
    channels-last in_proj output is read in place); y (and dx) take x's layout: channels-last stays channels-last
    (mambalab.ops.triton.common.empty_like_layout), so x_proj reads the conv's output without a copy."""
    from mambalab.ops import triton as kernels

    kernels.check_device("causal_conv1d", x)
    history = None if initial_state is None else initial_state.to(x.dtype)
    if x.shape[-1] == 0:
        y = x.new_empty(x.shape)
    elif records_grad(x, weight, bias, history) or torch.compiler.is_compiling():  # the op: autograd, or tracing
        y = _conv_fwd_op(x, weight, bias, history, activation is not None)
    else:  # inference: the kernel without the op's dispatch
        y = _forward(x, weight, bias, history, activation is not None)
    if not return_final_state:
        return y
    return y, final_state(x, history, weight.shape[1])


def causal_conv1d_update_triton(x_t, conv_state, weight, bias=None, activation=None, state_batch_indices=None):
    """`causal_conv1d_update` as one Triton launch."""
    from mambalab.ops import triton as kernels

    kernels.check_device("causal_conv1d_update", x_t)
    from mambalab.ops.state_update.triton_kernels import conv_update

    return conv_update(x_t, conv_state, weight, dense(bias), activation is not None, state_batch_indices)


# The ops' annotations are real types: torch.library infers their schemas from them.
@torch.library.custom_op("mambalab::causal_conv1d_fwd", mutates_args=())
def _conv_fwd_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 initial_state: Optional[torch.Tensor], silu: bool) -> torch.Tensor:
    return _forward(x, weight, bias, initial_state, silu)


def _forward(x, weight, bias, initial_state, silu):
    from mambalab.ops.causal_conv1d.triton_kernels import conv_forward

    return conv_forward(x, weight, dense(bias), initial_state, silu)


@_conv_fwd_op.register_fake
def _conv_fwd_fake(x, weight, bias, initial_state, silu):
    from mambalab.ops.triton import common

    return common.empty_like_layout(x)


@torch.library.custom_op("mambalab::causal_conv1d_bwd", mutates_args=())
def _conv_bwd_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 initial_state: Optional[torch.Tensor], silu: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias, d_initial_state) in the inputs' dtypes; empty for absent inputs."""
    from mambalab.ops.causal_conv1d.triton_kernels import conv_backward

    dx, dw, dbias, dh0 = conv_backward(dy, x, weight, dense(bias), initial_state, silu)
    return (dx, dw.to(weight.dtype), dbias.to(bias.dtype) if bias is not None else x.new_empty(0),
            dh0.to(initial_state.dtype) if initial_state is not None else x.new_empty(0))


@_conv_bwd_op.register_fake
def _conv_bwd_fake(dy, x, weight, bias, initial_state, silu):
    from mambalab.ops.triton import common

    like = lambda t: t.new_empty(t.shape) if t is not None else x.new_empty(0)  # contiguous
    return common.empty_like_layout(x), like(weight), like(bias), like(initial_state)


def _conv_setup_context(ctx, inputs, output):
    x, weight, bias, initial_state, silu = inputs
    ctx.save_for_backward(x, weight, bias, initial_state)
    ctx.silu = silu


def _conv_backward(ctx, dy):
    x, weight, bias, initial_state = ctx.saved_tensors
    dx, dw, dbias, dh0 = _conv_bwd_op(dy, x, weight, bias, initial_state, ctx.silu)
    return (dx, dw, dbias if bias is not None else None, dh0 if initial_state is not None else None, None)


_conv_fwd_op.register_autograd(_conv_backward, setup_context=_conv_setup_context)
