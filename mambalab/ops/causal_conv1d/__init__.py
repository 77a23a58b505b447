"""`causal_conv1d` and `causal_conv1d_update`: the short causal depthwise conv in front of the Mamba SSM
(arXiv 2312.00752, Figure 3) over a sequence, and its one-step (decode) window update. The arguments are
validated once here, then a named backend runs.

x: (b, d, l); weight: (d, w) (w = d_conv); bias: (d,). Output position t sees inputs t-w+1 .. t. The conv
state is the last w inputs, (b, d, w), oldest first: exactly the window the next step needs.

Backends (ops "causal_conv1d" and "causal_conv1d_update" in `mambalab.ops.backends`): "reference" (torch,
reference.py; the oracle), "triton" (fused kernels, triton_conv.py). "auto": "triton" for CUDA tensors where
the kernels run, else "reference"; float64 always "reference" (the kernels compute in float32).
Official implementation: https://github.com/Dao-AILab/causal-conv1d
"""

from __future__ import annotations

import torch

from mambalab.errors import InputError
from mambalab.ops import backends
from mambalab.ops.checks import check_tensors
from mambalab.ops.triton import auto_chooser, resolve_for

OP = "causal_conv1d"
UPDATE_OP = "causal_conv1d_update"
ACTIVATIONS = (None, "silu", "swish")


def _load_reference():
    from mambalab.ops.causal_conv1d.reference import causal_conv1d_reference

    return causal_conv1d_reference


def _load_update_reference():
    from mambalab.ops.causal_conv1d.reference import causal_conv1d_update_reference

    return causal_conv1d_update_reference


def _load_triton():
    from mambalab.ops import triton as kernels

    kernels.require(OP)
    from mambalab.ops.causal_conv1d.triton_conv import causal_conv1d_triton

    return causal_conv1d_triton


def _load_update_triton():
    from mambalab.ops import triton as kernels

    kernels.require(UPDATE_OP)
    from mambalab.ops.causal_conv1d.triton_conv import causal_conv1d_update_triton

    return causal_conv1d_update_triton


backends.register(OP, "reference", _load_reference)
backends.register(OP, "triton", _load_triton)
backends.set_auto(OP, auto_chooser(OP))
backends.register(UPDATE_OP, "reference", _load_update_reference)
backends.register(UPDATE_OP, "triton", _load_update_triton)
backends.set_auto(UPDATE_OP, auto_chooser(UPDATE_OP))


def resolve_backend(name: str, x: torch.Tensor) -> str:
    """The backend `name` stands for on x's device and dtype (see the module docstring for "auto")."""
    return resolve_for(OP, name, x)


def causal_conv1d(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False,
                  backend="auto"):
    """y[:, i, t] = act(bias[i] + Σ_k weight[i, k] · x[:, i, t - (w-1) + k]); inputs before 0 come from
    initial_state (b, d, w) (its last w-1 columns), zeros if None. Returns y (b, d, l) [, final_state (b, d, w):
    the last w inputs, reaching back into initial_state when l < w]. activation: None, "silu" or "swish"."""
    validate(x, weight, bias, activation, initial_state)
    impl = backends.get(OP, resolve_for(OP, backend, x))
    return impl(x, weight, bias, activation, initial_state, return_final_state)


def causal_conv1d_update(x_t, conv_state, weight, bias=None, activation=None, state_batch_indices=None,
                         backend="auto"):
    """One decode step: shift x_t (b, d) into conv_state (b, d, w) in place; return act(conv) (b, d).

    state_batch_indices: optional (b,) integer tensor; row i shifts x_t[i] into conv_state[state_batch_indices[i]]
    (conv_state then holds any number of slots, (slots, d, w)), so a server steps a subset of its state pool."""
    validate_update(x_t, conv_state, weight, bias, activation, state_batch_indices)
    impl = backends.get(UPDATE_OP, resolve_for(UPDATE_OP, backend, x_t))
    return impl(x_t, conv_state, weight, bias, activation, state_batch_indices)


def _expect(op: str, cond: bool, message: str) -> None:
    if not cond:
        raise InputError(f"{op}: {message}")


def _validate_common(op, dim, weight, bias, activation):
    _expect(op, activation in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    _expect(op, weight.dim() == 2 and weight.shape[0] == dim and weight.shape[1] >= 1,
            f"weight must be (dim={dim}, width >= 1), got {tuple(weight.shape)}")
    _expect(op, bias is None or tuple(bias.shape) == (dim,),
            f"bias must be (dim={dim},), got {None if bias is None else tuple(bias.shape)}")


def validate(x, weight, bias=None, activation=None, initial_state=None) -> None:
    """Check `causal_conv1d`'s arguments against x (batch, dim, L); an InputError names the bad one."""
    check_tensors(OP, {"x": x, "weight": weight, "bias": bias, "initial_state": initial_state})
    _expect(OP, x.dim() == 3, f"x must be (batch, dim, L), got shape {tuple(x.shape)}")
    batch, dim, _ = x.shape
    _validate_common(OP, dim, weight, bias, activation)
    width = weight.shape[1]
    _expect(OP, initial_state is None or tuple(initial_state.shape) == (batch, dim, width),
            f"initial_state must be ({batch}, {dim}, {width}), "
            f"got {None if initial_state is None else tuple(initial_state.shape)}")


def validate_update(x_t, conv_state, weight, bias=None, activation=None, state_batch_indices=None) -> None:
    """Check `causal_conv1d_update`'s arguments against conv_state (slots, dim, width); see `validate`."""
    op = UPDATE_OP
    check_tensors(op, {"x_t": x_t, "conv_state": conv_state, "weight": weight, "bias": bias})
    _expect(op, activation in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    _expect(op, conv_state.dim() == 3, f"conv_state must be (batch, dim, width), got shape {tuple(conv_state.shape)}")
    slots, dim, width = conv_state.shape
    batch = slots if state_batch_indices is None else x_t.shape[0]
    check_state_batch_indices(op, state_batch_indices, x_t)
    _expect(op, tuple(x_t.shape) == (batch, dim), f"x_t must be ({batch}, {dim}) like conv_state, got {tuple(x_t.shape)}")
    _validate_common(op, dim, weight, bias, activation)
    _expect(op, weight.shape[1] == width,
            f"weight must be ({dim}, width={width}) like conv_state, got {tuple(weight.shape)}")


def check_state_batch_indices(op: str, state_batch_indices, x_t) -> None:
    """state_batch_indices is None or a (b,) integer tensor, b = x_t's rows (shared by the decode-step ops)."""
    if state_batch_indices is None:
        return
    rows = x_t.shape[0]
    _expect(op, tuple(state_batch_indices.shape) == (rows,),
            f"state_batch_indices must be ({rows},), got {tuple(state_batch_indices.shape)}")
    _expect(op, not state_batch_indices.dtype.is_floating_point and state_batch_indices.dtype != torch.bool,
            f"state_batch_indices must be an integer tensor, got {state_batch_indices.dtype}")
