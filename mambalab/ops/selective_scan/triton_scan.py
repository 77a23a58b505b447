"""`backend="triton"`: the fused kernels of mambalab/ops/triton/scan.py as differentiable torch ops.

Two torch.library custom ops, `mambalab::selective_scan_fwd` and `mambalab::selective_scan_bwd`, each with a
fake (meta) implementation, and autograd registered on the forward, so `torch.compile` traces a mixer using
them without graph breaks. The forward stores per-chunk state checkpoints only when a gradient is needed.

Inputs are used in place with their strides (no copies, non-contiguous is fine); outputs are contiguous.
Float64 is not supported here (the kernels keep state in float32): use the torch backend for it.
"""

# ruff: noqa: UP045  (typing.Optional: torch.library infers the ops' schemas from these annotations)

import importlib.util
from typing import Optional

import torch
from torch import Tensor

from mambalab.ops.backends import BackendUnavailable

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def load_triton_scan():
    """The triton `selective_scan`, or BackendUnavailable saying why it cannot run here."""
    if importlib.util.find_spec("triton") is None:
        raise BackendUnavailable("selective_scan backend 'triton' needs the triton package: pip install 'mambalab[triton]'")
    from mambalab.ops import triton as kernels

    where = kernels.device()
    if where is None:
        raise BackendUnavailable(
            "selective_scan backend 'triton' needs a CUDA GPU (none is visible); on CPU, use backend='torch', or run "
            "the kernels in Triton's interpreter (mambalab.ops.triton.interpreter(), or TRITON_INTERPRET=1 set "
            "before mambalab.ops.triton is imported)"
        )
    return selective_scan_triton


def _check_runnable(tensors) -> None:
    from mambalab.ops import triton as kernels

    where = kernels.device()
    for name, t in tensors.items():
        if t is None:
            continue
        if t.device.type != where:
            raise BackendUnavailable(
                f"selective_scan backend 'triton': {name} is on {t.device}, but the kernels run "
                + ("nowhere here (interpreted, and TRITON_INTERPRET is unset)" if where is None else f"on {where} tensors")
            )
        if t.is_floating_point() and t.dtype not in _FLOAT_DTYPES:
            raise BackendUnavailable(
                f"selective_scan backend 'triton': {name} is {t.dtype}; the kernels take float32/float16/bfloat16 "
                "(use backend='torch' for float64)"
            )


def selective_scan_triton(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    initial_state=None, return_final_state=False, cu_seqlens=None,
):
    """Same signature and semantics as `mambalab.ops.selective_scan.selective_scan` (arguments validated there)."""
    _check_runnable({"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias,
                     "initial_state": initial_state})
    if u.shape[-1] == 0:  # nothing to scan: the oracle returns y (b, d, 0) and final = initial state
        from mambalab.ops.selective_scan.reference import selective_scan_reference

        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                        return_final_state, cu_seqlens)
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(device=u.device, dtype=torch.int32)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias, initial_state)
    )
    y, final_state, _ = _scan_fwd_op(
        u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, needs_grad
    )
    return (y, final_state) if return_final_state else y


def _config(u, A, B):
    from mambalab.ops.triton.scan import default_config

    groups = 1 if B.dim() == 3 else B.shape[1]
    return default_config(u.shape[1] // groups, A.shape[1], u.shape[0], groups, u.shape[2])


# The ops' annotations are real types (no `from __future__ import annotations`): torch infers their schemas.
@torch.library.custom_op("mambalab::selective_scan_fwd", mutates_args=())
def _scan_fwd_op(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
    delta_bias: Optional[Tensor], initial_state: Optional[Tensor], cu_seqlens: Optional[Tensor],
    delta_softplus: bool, store_checkpoints: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(y, final_state, checkpoints); checkpoints is empty unless store_checkpoints."""
    from mambalab.ops.triton.scan import scan_forward

    return scan_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus,
                        store_checkpoints, _config(u, A, B))


@_scan_fwd_op.register_fake
def _scan_fwd_fake(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, store_checkpoints):
    from mambalab.ops.triton.scan import checkpoint_slots

    batch, dim, length = u.shape
    rows = batch if cu_seqlens is None else cu_seqlens.shape[0] - 1
    chunk = _config(u, A, B).chunk
    slots = checkpoint_slots(rows, length, chunk, cu_seqlens is not None) if store_checkpoints else 0
    return (
        u.new_empty(batch, dim, length),
        u.new_empty(rows, dim, A.shape[1], dtype=torch.float32),
        u.new_empty(slots, dim, A.shape[1], dtype=torch.float32),
    )


@torch.library.custom_op("mambalab::selective_scan_bwd", mutates_args=())
def _scan_bwd_op(
    dy: Tensor, d_final: Optional[Tensor], u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor], initial_state: Optional[Tensor],
    cu_seqlens: Optional[Tensor], ckpt: Tensor, delta_softplus: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(du, dΔ, dA, dB, dC, dD, dz, dΔ-bias, dh_init) in the inputs' dtypes; empty for absent inputs."""
    from mambalab.ops.triton.scan import scan_backward

    du, ddelta, dz, dA, dB, dC, dD, dbias, dh0 = scan_backward(
        dy, d_final, u, delta, A, B, C, D, z, delta_bias, cu_seqlens, ckpt, delta_softplus, _config(u, A, B)
    )
    return (  # absent inputs get distinct empty tensors (custom-op outputs must not alias)
        du, ddelta, dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
        dD.to(D.dtype) if D is not None else u.new_empty(0),
        dz if z is not None else u.new_empty(0),
        dbias.to(delta_bias.dtype) if delta_bias is not None else u.new_empty(0),
        dh0.to(initial_state.dtype) if initial_state is not None else u.new_empty(0),
    )


@_scan_bwd_op.register_fake
def _scan_bwd_fake(dy, d_final, u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, ckpt, delta_softplus):
    like = lambda t: t.new_empty(t.shape) if t is not None else u.new_empty(0)  # contiguous
    return like(u), like(delta), like(A), like(B), like(C), like(D), like(z), like(delta_bias), like(initial_state)


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, _ = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, output[2])
    ctx.delta_softplus = delta_softplus


def _backward(ctx, dy, d_final, _d_checkpoints):
    u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, ckpt = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(u)
    du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = _scan_bwd_op(
        dy, d_final, u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, ckpt, ctx.delta_softplus
    )
    present = lambda g, t: g if t is not None else None
    return (du, ddelta, dA, dB, dC, present(dD, D), present(dz, z), present(dbias, delta_bias),
            present(dh0, initial_state), None, None, None)


_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)
