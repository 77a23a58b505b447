"""Fused one-token decode kernels: the selective SSM state update and the causal-conv window update.

Each is one launch per layer and token (the torch versions take ~10 small ops). An optional
`state_batch_indices` (b,) maps batch row i to state slot indices[i], so a server can keep a pool of
states and decode any subset of it without gathering/scattering states.
"""

from __future__ import annotations

import triton
import triton.language as tl

from mambalab.ops.triton import common
from mambalab.ops.triton.common import INTERPRETED, LOG2E, sigmoid, softplus

__all__ = ["INTERPRETED", "conv_update", "state_update"]


@triton.jit
def _state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, idx_ptr, y_ptr,
    dim, dim_per_group,
    s_st_b, s_st_d, s_st_n, s_x_b, s_x_d, s_dt_b, s_dt_d, s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n, s_z_b, s_z_d,
    N: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_IDX: tl.constexpr,
):
    pid_d = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    slot = row
    if HAS_IDX:
        slot = tl.load(idx_ptr + row).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # (BD,)
    mask_d = offs_d < dim
    offs_n = tl.arange(0, NP)
    mask_dn = mask_d[:, None] & (offs_n < N)[None, :]
    grp = offs_d // dim_per_group  # B/C group of each channel

    st_ptrs = state_ptr + slot * s_st_b + offs_d[:, None] * s_st_d + offs_n[None, :] * s_st_n
    h = tl.load(st_ptrs, mask=mask_dn, other=0.0).to(tl.float32)  # (BD, NP)
    x = tl.load(x_ptr + row * s_x_b + offs_d * s_x_d, mask=mask_d, other=0.0).to(tl.float32)  # (BD,)
    dt = tl.load(dt_ptr + row * s_dt_b + offs_d * s_dt_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = softplus(dt)  # Δ                                                                 (BD,)
    A = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0)
    B = tl.load(B_ptr + row * s_B_b + grp[:, None] * s_B_g + offs_n[None, :] * s_B_n, mask=mask_dn, other=0.0)
    C = tl.load(C_ptr + row * s_C_b + grp[:, None] * s_C_g + offs_n[None, :] * s_C_n, mask=mask_dn, other=0.0)

    dA = tl.exp2(dt[:, None] * A.to(tl.float32) * LOG2E)  # Ā = exp(Δ A)                         (BD, NP)
    h = dA * h + (dt * x)[:, None] * B.to(tl.float32)  # h = Ā h + Δ B x
    tl.store(st_ptrs, h.to(state_ptr.dtype.element_ty), mask=mask_dn)
    y = tl.sum(h * C.to(tl.float32), axis=1)  # C · h                                         (BD,)
    if HAS_D:
        y += tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32) * x
    if HAS_Z:
        z = tl.load(z_ptr + row * s_z_b + offs_d * s_z_d, mask=mask_d, other=0.0).to(tl.float32)
        y *= z * sigmoid(z)
    tl.store(y_ptr + row * dim + offs_d, y.to(y_ptr.dtype.element_ty), mask=mask_d)


@triton.jit
def _conv_update_kernel(
    x_ptr, state_ptr, w_ptr, bias_ptr, idx_ptr, y_ptr,
    dim, s_x_b, s_x_d, s_st_b, s_st_d, s_st_w, s_w_d, s_w_w,
    WIDTH: tl.constexpr, WP: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, HAS_IDX: tl.constexpr,
):
    pid_d = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    slot = row
    if HAS_IDX:
        slot = tl.load(idx_ptr + row).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # (BD,)
    mask_d = offs_d < dim
    offs_w = tl.arange(0, WP)
    st_base = state_ptr + slot * s_st_b + offs_d[:, None] * s_st_d
    # New window: the old window shifted left by one, then x_t in the last column.
    shifted = (offs_w + 1 < WIDTH)[None, :] & mask_d[:, None]
    window = tl.load(st_base + (offs_w[None, :] + 1) * s_st_w, mask=shifted, other=0.0)  # (BD, WP)
    x = tl.load(x_ptr + row * s_x_b + offs_d * s_x_d, mask=mask_d, other=0.0)  # (BD,)
    window = tl.where((offs_w == WIDTH - 1)[None, :], x[:, None].to(window.dtype), window)
    in_window = (offs_w < WIDTH)[None, :] & mask_d[:, None]
    tl.store(st_base + offs_w[None, :] * s_st_w, window, mask=in_window)
    w = tl.load(w_ptr + offs_d[:, None] * s_w_d + offs_w[None, :] * s_w_w, mask=in_window, other=0.0)
    y = tl.sum(window.to(tl.float32) * w.to(tl.float32), axis=1)  # (BD,)
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SILU:
        y = y * sigmoid(y)
    tl.store(y_ptr + row * dim + offs_d, y.to(y_ptr.dtype.element_ty), mask=mask_d)


_BLOCK_D = 64


def state_update(state, x_t, dt_t, A, B_t, C_t, D, z_t, dt_bias, dt_softplus, state_batch_indices):
    """Launch the SSM step; updates `state` (slots, d, n) in place, returns y (b, d) in x_t's dtype."""
    batch, dim = x_t.shape
    n = A.shape[1]
    B3 = B_t.unsqueeze(1) if B_t.dim() == 2 else B_t  # (b, G, n)
    C3 = C_t.unsqueeze(1) if C_t.dim() == 2 else C_t
    y = common.empty(batch, dim, device=x_t.device, dtype=x_t.dtype)  # (b, d)
    z_ = z_t if z_t is not None else x_t
    dummy = x_t.new_empty(1)
    grid = (triton.cdiv(dim, _BLOCK_D), batch)
    _state_update_kernel[grid](
        state, x_t, dt_t, A, B3, C3, D if D is not None else dummy, z_, dt_bias if dt_bias is not None else dummy,
        state_batch_indices if state_batch_indices is not None else dummy, y,
        dim, dim // B3.shape[1],
        *state.stride(), *x_t.stride(), *dt_t.stride(), *A.stride(), *B3.stride(), *C3.stride(), *z_.stride(),
        N=n, NP=triton.next_power_of_2(n), BLOCK_D=_BLOCK_D,
        HAS_D=D is not None, HAS_Z=z_t is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
        HAS_IDX=state_batch_indices is not None,
        num_warps=4,
    )
    return y


def conv_update(x_t, conv_state, weight, bias, silu, state_batch_indices):
    """Launch the conv step; shifts x_t into `conv_state` (slots, d, w) in place, returns y (b, d)."""
    batch, dim = x_t.shape
    width = weight.shape[1]
    y = common.empty(batch, dim, device=x_t.device, dtype=x_t.dtype)  # (b, d)
    dummy = x_t.new_empty(1)
    grid = (triton.cdiv(dim, _BLOCK_D), batch)
    _conv_update_kernel[grid](
        x_t, conv_state, weight, bias if bias is not None else dummy,
        state_batch_indices if state_batch_indices is not None else dummy, y,
        dim, *x_t.stride(), *conv_state.stride(), *weight.stride(),
        WIDTH=width, WP=triton.next_power_of_2(width), BLOCK_D=_BLOCK_D,
        HAS_BIAS=bias is not None, SILU=silu, HAS_IDX=state_batch_indices is not None,
        num_warps=4,
    )
    return y
