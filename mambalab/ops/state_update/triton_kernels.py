"""Fused one-token decode kernels: the selective SSM state update, the causal-conv window update, and the
Mamba mixer's step (the conv window update with x_proj, then dt_proj with the state update), which share their
window and state-advance code: so they live in one module.

Each is one launch per layer and token (the torch versions take ~10 small ops). An optional
`state_batch_indices` (b,) maps batch row i to state slot indices[i], so a server can keep a pool of
states and decode any subset of it without gathering/scattering states.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mambalab.ops.triton import common
from mambalab.ops.triton.common import INTERPRETED, LOG2E, sigmoid, softplus

__all__ = ["INTERPRETED", "conv_update", "mixer_step", "state_update"]


@triton.jit
def _program_rows(idx_ptr, dim, BLOCK_D: tl.constexpr, HAS_IDX: tl.constexpr):
    """This program's batch row (program axis 1), its state slot (state_batch_indices[row], or the row), its
    channels (a BLOCK_D block along program axis 0) and their mask."""
    row = tl.program_id(1).to(tl.int64)
    slot = row
    if HAS_IDX:
        slot = tl.load(idx_ptr + row).to(tl.int64)
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BD,)
    return row, slot, offs_d, offs_d < dim


@triton.jit
def _advance(h, x, dt, A2, B):
    """h ← exp(Δ A) h + Δ B x on a (BD, NP) block of states; A2 = A log2(e) (BD, NP), x and Δ (BD,), B (BD|1, NP)."""
    return tl.exp2(dt[:, None] * A2) * h + (dt * x)[:, None] * B


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
    row, slot, offs_d, mask_d = _program_rows(idx_ptr, dim, BLOCK_D, HAS_IDX)
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

    h = _advance(h, x, dt, A.to(tl.float32) * LOG2E, B.to(tl.float32))  # h = Ā h + Δ B x
    tl.store(st_ptrs, h.to(state_ptr.dtype.element_ty), mask=mask_dn)
    y = tl.sum(h * C.to(tl.float32), axis=1)  # C · h                                         (BD,)
    if HAS_D:
        y += tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32) * x
    if HAS_Z:
        z = tl.load(z_ptr + row * s_z_b + offs_d * s_z_d, mask=mask_d, other=0.0).to(tl.float32)
        y *= z * sigmoid(z)
    tl.store(y_ptr + row * dim + offs_d, y.to(y_ptr.dtype.element_ty), mask=mask_d)


@triton.jit
def _conv_window_step(x, st_base, w_ptr, bias_ptr, offs_d, mask_d, s_st_d, s_st_w, s_w_d, s_w_w,
                      WIDTH: tl.constexpr, WP: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr):
    """Shift x (BD,) into the conv windows at st_base (channels offs_d; oldest first) in place; return
    act(bias + Σ_k w[:, k] · window[:, k]) (BD,) float32, act SiLU or none."""
    offs_w = tl.arange(0, WP)
    st_base = st_base + offs_d[:, None] * s_st_d
    # New window: the old window shifted left by one, then x_t in the last column.
    shifted = (offs_w + 1 < WIDTH)[None, :] & mask_d[:, None]
    window = tl.load(st_base + (offs_w[None, :] + 1) * s_st_w, mask=shifted, other=0.0)  # (BD, WP)
    window = tl.where((offs_w == WIDTH - 1)[None, :], x[:, None].to(window.dtype), window)
    in_window = (offs_w < WIDTH)[None, :] & mask_d[:, None]
    tl.store(st_base + offs_w[None, :] * s_st_w, window, mask=in_window)
    w = tl.load(w_ptr + offs_d[:, None] * s_w_d + offs_w[None, :] * s_w_w, mask=in_window, other=0.0)
    y = tl.sum(window.to(tl.float32) * w.to(tl.float32), axis=1)
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SILU:
        y = y * sigmoid(y)
    return y


@triton.jit
def _conv_update_kernel(
    x_ptr, state_ptr, w_ptr, bias_ptr, idx_ptr, y_ptr,
    dim, s_x_b, s_x_d, s_st_b, s_st_d, s_st_w, s_w_d, s_w_w,
    WIDTH: tl.constexpr, WP: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, HAS_IDX: tl.constexpr,
):
    row, slot, offs_d, mask_d = _program_rows(idx_ptr, dim, BLOCK_D, HAS_IDX)
    x = tl.load(x_ptr + row * s_x_b + offs_d * s_x_d, mask=mask_d, other=0.0)  # (BD,)
    y = _conv_window_step(x, state_ptr + slot * s_st_b, w_ptr, bias_ptr, offs_d, mask_d, s_st_d, s_st_w, s_w_d,
                          s_w_w, WIDTH, WP, HAS_BIAS, SILU)  # (BD,)
    tl.store(y_ptr + row * dim + offs_d, y.to(y_ptr.dtype.element_ty), mask=mask_d)


@triton.jit
def _mixer_conv_xproj_kernel(
    x_ptr, conv_ptr, cw_ptr, cb_ptr, wx_ptr, idx_ptr, xc_ptr, part_ptr,
    dim, n_blk, s_x_b, s_x_d, s_cv_b, s_cv_d, s_cv_w, s_cw_d, s_cw_w, s_wx_j, s_wx_d,
    J: tl.constexpr, JP: tl.constexpr, WIDTH: tl.constexpr, WP: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_CB: tl.constexpr, HAS_IDX: tl.constexpr,
):
    """The mixer step's first half, per channel block: the conv window update, xc = SiLU(conv) (stored, float32
    (b, d)), and this block's share of x_proj(xc): Σ_c W[j, c] xc[c] for the J = r + 2n outputs (b, n_blk, JP)."""
    row, slot, offs_d, mask_d = _program_rows(idx_ptr, dim, BLOCK_D, HAS_IDX)
    x = tl.load(x_ptr + row * s_x_b + offs_d * s_x_d, mask=mask_d, other=0.0)  # (BD,)
    xc = _conv_window_step(x, conv_ptr + slot * s_cv_b, cw_ptr, cb_ptr, offs_d, mask_d, s_cv_d, s_cv_w, s_cw_d,
                           s_cw_w, WIDTH, WP, HAS_CB, True)  # SiLU(conv)                     (BD,)
    tl.store(xc_ptr + row * dim + offs_d, xc, mask=mask_d)
    offs_j = tl.arange(0, JP)
    wx = tl.load(wx_ptr + offs_j[:, None] * s_wx_j + offs_d[None, :] * s_wx_d,
                 mask=(offs_j < J)[:, None] & mask_d[None, :], other=0.0)  # (JP, BD)
    part = tl.sum(wx.to(tl.float32) * xc[None, :], axis=1)  # (JP,)
    tl.store(part_ptr + (row * n_blk + tl.program_id(0)) * JP + offs_j, part)


@triton.jit
def _projection(part_base, blocks, offs, mask, JP: tl.constexpr):
    """Entries offs of x_proj's output, summed over the channel blocks' shares (NBP, ·) -> (len(offs),)."""
    return tl.sum(tl.load(part_base + blocks[:, None] * JP + offs[None, :], mask=mask, other=0.0), axis=0)


@triton.jit
def _mixer_ssm_kernel(
    part_ptr, xc_ptr, z_ptr, state_ptr, wdt_ptr, bias_ptr, A_log_ptr, D_ptr, idx_ptr, y_ptr,
    dim, n_blk, rank, s_z_b, s_z_d, s_st_b, s_st_d, s_st_n, s_wdt_d, s_wdt_r, s_A_d, s_A_n,
    N: tl.constexpr, NP: tl.constexpr, RP: tl.constexpr, JP: tl.constexpr, NBP: tl.constexpr,
    BLOCK_D: tl.constexpr, HAS_D: tl.constexpr, HAS_IDX: tl.constexpr,
):
    """The mixer step's second half, per channel block: x_proj's output (Δ low-rank, B, C) from the shares,
    Δ = softplus(dt_proj(Δ low-rank) + bias), A = -exp(A_log), the state update, y = (C·h + D xc) · SiLU(z)."""
    row, slot, offs_d, mask_d = _program_rows(idx_ptr, dim, BLOCK_D, HAS_IDX)
    offs_n = tl.arange(0, NP)
    mask_dn = mask_d[:, None] & (offs_n < N)[None, :]
    offs_r = tl.arange(0, RP)
    blocks = tl.arange(0, NBP)
    part_base = part_ptr + row * n_blk * JP
    in_blk = (blocks < n_blk)[:, None]
    dt_low = _projection(part_base, blocks, offs_r, in_blk & (offs_r < rank)[None, :], JP)  # (RP,)
    B = _projection(part_base, blocks, rank + offs_n, in_blk & (offs_n < N)[None, :], JP)  # (NP,)
    C = _projection(part_base, blocks, rank + N + offs_n, in_blk & (offs_n < N)[None, :], JP)  # (NP,)
    wdt = tl.load(wdt_ptr + offs_d[:, None] * s_wdt_d + offs_r[None, :] * s_wdt_r,
                  mask=mask_d[:, None] & (offs_r < rank)[None, :], other=0.0)  # (BD, RP)
    dt = tl.sum(wdt.to(tl.float32) * dt_low[None, :], axis=1)  # (BD,)
    dt = softplus(dt + tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32))  # Δ
    A_log = tl.load(A_log_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0)
    A2 = -tl.exp2(A_log.to(tl.float32) * LOG2E) * LOG2E  # A log2(e), A = -exp(A_log)          (BD, NP)
    xc = tl.load(xc_ptr + row * dim + offs_d, mask=mask_d, other=0.0)  # (BD,)
    st_ptrs = state_ptr + slot * s_st_b + offs_d[:, None] * s_st_d + offs_n[None, :] * s_st_n
    h = _advance(tl.load(st_ptrs, mask=mask_dn, other=0.0).to(tl.float32), xc, dt, A2, B[None, :])  # (BD, NP)
    tl.store(st_ptrs, h.to(state_ptr.dtype.element_ty), mask=mask_dn)
    y = tl.sum(h * C[None, :], axis=1)  # C · h                                                (BD,)
    if HAS_D:
        y += tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32) * xc
    z = tl.load(z_ptr + row * s_z_b + offs_d * s_z_d, mask=mask_d, other=0.0).to(tl.float32)
    y *= z * sigmoid(z)
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


def mixer_step(x_t, z_t, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
               dt_proj_bias, A_log, D, state_batch_indices):
    """Launch the Mamba mixer's recurrent step between in_proj and out_proj as two kernels (see
    mambalab/ops/state_update/reference.py `mixer_step_reference`); updates both states in place, returns y (b, d) in x_t's dtype."""
    batch, dim = x_t.shape
    n, rank = A_log.shape[1], dt_proj_weight.shape[1]
    width, j = conv_weight.shape[1], x_proj_weight.shape[0]
    n_blk, jp = triton.cdiv(dim, _BLOCK_D), triton.next_power_of_2(j)
    f32 = {"device": x_t.device, "dtype": torch.float32}
    xc = common.empty(batch, dim, **f32)  # SiLU(conv(x))                                       (b, d)
    part = common.empty(batch, n_blk, jp, **f32)  # x_proj's output, per channel block       (b, n_blk, JP)
    dummy = x_t.new_empty(1)
    idx = state_batch_indices if state_batch_indices is not None else dummy
    grid = (n_blk, batch)
    _mixer_conv_xproj_kernel[grid](
        x_t, conv_state, conv_weight, conv_bias if conv_bias is not None else dummy, x_proj_weight, idx, xc, part,
        dim, n_blk, *x_t.stride(), *conv_state.stride(), *conv_weight.stride(), *x_proj_weight.stride(),
        J=j, JP=jp, WIDTH=width, WP=triton.next_power_of_2(width), BLOCK_D=_BLOCK_D,
        HAS_CB=conv_bias is not None, HAS_IDX=state_batch_indices is not None, num_warps=4,
    )
    y = common.empty(batch, dim, device=x_t.device, dtype=x_t.dtype)  # (b, d)
    _mixer_ssm_kernel[grid](
        part, xc, z_t, ssm_state, dt_proj_weight, dt_proj_bias, A_log, D if D is not None else dummy, idx, y,
        dim, n_blk, rank, *z_t.stride(), *ssm_state.stride(), *dt_proj_weight.stride(), *A_log.stride(),
        N=n, NP=triton.next_power_of_2(n), RP=triton.next_power_of_2(rank), JP=jp,
        NBP=triton.next_power_of_2(n_blk), BLOCK_D=_BLOCK_D, HAS_D=D is not None,
        HAS_IDX=state_batch_indices is not None, num_warps=4,
    )
    return y
