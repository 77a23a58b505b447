"""Fused causal depthwise conv1d over a whole sequence (training, prefill): forward and backward kernels.

y[b, i, t] = act(bias[i] + Σ_k w[i, k] · x[b, i, t - (W-1) + k]), inputs before position 0 read from the
initial state h0 (b, d, W) (the last W inputs, oldest first: position -p is column W - p). act is SiLU or
none. Same semantics as `causal_conv1d_reference` (reference.py, the oracle).

One program owns BLOCK_L positions × BLOCK_D channels of one batch row; every input tile is read W times
(shifted by one step each time; the re-reads hit L1/L2), so HBM sees x once and y once. Tiles are (BLOCK_L,
BLOCK_D): with channels-last x (the mixer's in_proj output, channel stride 1) the loads run along channels,
with contiguous x along time; Triton picks the layout from the strides it specialises on.

Backward, with g = dy · act'(p) (p the pre-activation, recomputed): dx[t] = Σ_j w[W-1-j] g[t+j],
dh0[column W-p] = the same sum at position -p, dw[i, k] = Σ_{b,t} g[t] x[t-(W-1)+k], dbias = Σ_{b,t} g. Two
passes: the first writes g (float32) with per-program partial sums of dw and dbias (summed by the caller),
the second reads g W times (shifted) for dx and dh0. (One pass recomputing g at t .. t+W-1 needs W² shifted
loads of x per tile: far slower, benchmarks/notes/scan.md.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mambalab.ops.triton import common
from mambalab.ops.triton.common import INTERPRETED, sigmoid

__all__ = ["INTERPRETED", "conv_backward", "conv_forward"]

BLOCK_L = 64
BLOCK_D = 64


@triton.jit
def _inputs(x_base, h0_base, t, mask_d, length, s_x_l, s_h_w, WIDTH: tl.constexpr, HAS_H0: tl.constexpr):
    """x at positions t (BL,) for the channels of x_base / h0_base (1, BD), float32 (BL, BD): from x for
    0 <= t < length, from the initial state for -WIDTH < t < 0, else 0."""
    in_x = (t >= 0) & (t < length)
    v = tl.load(x_base + t[:, None] * s_x_l, mask=in_x[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    if HAS_H0:
        in_h = (t < 0) & (t > -WIDTH)
        v += tl.load(h0_base + (t[:, None] + WIDTH) * s_h_w, mask=in_h[:, None] & mask_d[None, :],
                     other=0.0).to(tl.float32)
    return v


@triton.jit
def _pre_activation(x_base, h0_base, w_base, bias, t, mask_d, length, s_x_l, s_h_w, s_w_w,
                    WIDTH: tl.constexpr, HAS_H0: tl.constexpr):
    """p[t] = bias + Σ_k w[k] x[t - (WIDTH-1) + k] at positions t (BL,): (BL, BD) float32."""
    p = tl.zeros([t.shape[0], bias.shape[0]], dtype=tl.float32) + bias[None, :]
    for k in tl.static_range(WIDTH):
        w_k = tl.load(w_base + k * s_w_w, mask=mask_d, other=0.0).to(tl.float32)  # (BD,)
        p += w_k[None, :] * _inputs(x_base, h0_base, t - (WIDTH - 1) + k, mask_d, length, s_x_l, s_h_w, WIDTH,
                                    HAS_H0)
    return p


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, h0_ptr, y_ptr,
    dim, length, s_x_b, s_x_d, s_x_l, s_w_d, s_w_w, s_h_b, s_h_d, s_h_w, s_y_b, s_y_d, s_y_l,
    WIDTH: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr, SILU: tl.constexpr,
):
    pid_l, pid_d, row = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BD + tl.arange(0, BD)  # (BD,)
    mask_d = offs_d < dim
    t = pid_l * BL + tl.arange(0, BL)  # (BL,)
    bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    x_base = x_ptr + row * s_x_b + offs_d[None, :] * s_x_d  # (1, BD)
    h0_base = h0_ptr + row * s_h_b + offs_d[None, :] * s_h_d
    p = _pre_activation(x_base, h0_base, w_ptr + offs_d * s_w_d, bias, t, mask_d, length, s_x_l, s_h_w, s_w_w,
                        WIDTH, HAS_H0)  # (BL, BD)
    if SILU:
        p = p * sigmoid(p)
    y_ptrs = y_ptr + row * s_y_b + offs_d[None, :] * s_y_d + t[:, None] * s_y_l  # (BL, BD)
    tl.store(y_ptrs, p.to(y_ptr.dtype.element_ty), mask=(t < length)[:, None] & mask_d[None, :])


@triton.jit
def _conv_grad_out_kernel(
    x_ptr, w_ptr, bias_ptr, h0_ptr, dy_ptr, g_ptr, dw_ptr, dbias_ptr,
    dim, length, n_lblk, s_x_b, s_x_d, s_x_l, s_w_d, s_w_w, s_h_b, s_h_d, s_h_w, s_dy_b, s_dy_d, s_dy_l,
    WIDTH: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr, SILU: tl.constexpr,
):
    """Backward, first pass: g = dy · act'(p) (b, d, l) float32 contiguous, and this program's partial sums of
    dw (b · n_lblk, d, WIDTH) and dbias (b · n_lblk, d)."""
    pid_l, pid_d, row = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BD + tl.arange(0, BD)  # (BD,)
    mask_d = offs_d < dim
    t = pid_l * BL + tl.arange(0, BL)  # (BL,)
    mask_td = (t < length)[:, None] & mask_d[None, :]
    bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    x_base = x_ptr + row * s_x_b + offs_d[None, :] * s_x_d  # (1, BD)
    h0_base = h0_ptr + row * s_h_b + offs_d[None, :] * s_h_d
    g = tl.load(dy_ptr + row * s_dy_b + offs_d[None, :] * s_dy_d + t[:, None] * s_dy_l, mask=mask_td,
                other=0.0).to(tl.float32)  # (BL, BD)
    if SILU:
        p = _pre_activation(x_base, h0_base, w_ptr + offs_d * s_w_d, bias, t, mask_d, length, s_x_l, s_h_w, s_w_w,
                            WIDTH, HAS_H0)
        sig = sigmoid(p)
        g = g * sig * (1.0 + p * (1.0 - sig))
    tl.store(g_ptr + row * dim * length + offs_d[None, :] * length + t[:, None], g, mask=mask_td)
    part = row * n_lblk + pid_l  # this program's slot in the partial sums
    for k in tl.static_range(WIDTH):
        xk = _inputs(x_base, h0_base, t - (WIDTH - 1) + k, mask_d, length, s_x_l, s_h_w, WIDTH, HAS_H0)
        tl.store(dw_ptr + (part * dim + offs_d) * WIDTH + k, tl.sum(g * xk, axis=0), mask=mask_d)
    tl.store(dbias_ptr + part * dim + offs_d, tl.sum(g, axis=0), mask=mask_d)


@triton.jit
def _grad_at(g_base, w_base, t, mask_d, length, s_w_w, WIDTH: tl.constexpr):
    """Σ_j w[WIDTH-1-j] g[t + j] at positions t (BL,): the gradient of the inputs there, (BL, BD) float32."""
    dx = tl.zeros([t.shape[0], mask_d.shape[0]], dtype=tl.float32)
    for j in tl.static_range(WIDTH):
        s = t + j  # the output positions whose window holds input t
        in_y = (s >= 0) & (s < length)
        g = tl.load(g_base + s[:, None], mask=in_y[:, None] & mask_d[None, :], other=0.0)
        w_j = tl.load(w_base + (WIDTH - 1 - j) * s_w_w, mask=mask_d, other=0.0).to(tl.float32)  # (BD,)
        dx += w_j[None, :] * g
    return dx


@triton.jit
def _conv_grad_in_kernel(
    g_ptr, w_ptr, dx_ptr, dh0_ptr, dim, length, s_w_d, s_w_w, s_dx_b, s_dx_d, s_dx_l,
    WIDTH: tl.constexpr, WP: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr, HAS_H0: tl.constexpr,
):
    """Backward, second pass: dx (b, d, l) (any strides) from g; with HAS_H0 the programs of the first block also
    write dh0 (b, d, WIDTH) (column c holds position c - WIDTH; column 0 is outside every window: 0)."""
    pid_l, pid_d, row = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BD + tl.arange(0, BD)  # (BD,)
    mask_d = offs_d < dim
    t = pid_l * BL + tl.arange(0, BL)  # (BL,)
    g_base = g_ptr + row * dim * length + offs_d[None, :] * length  # (1, BD)
    w_base = w_ptr + offs_d * s_w_d
    dx = _grad_at(g_base, w_base, t, mask_d, length, s_w_w, WIDTH)  # (BL, BD)
    tl.store(dx_ptr + row * s_dx_b + offs_d[None, :] * s_dx_d + t[:, None] * s_dx_l, dx.to(dx_ptr.dtype.element_ty),
             mask=(t < length)[:, None] & mask_d[None, :])
    if HAS_H0:  # noqa: SIM102  (compile-time flag, then a run-time test)
        if pid_l == 0:
            cols = tl.arange(0, WP)
            dh = _grad_at(g_base, w_base, cols - WIDTH, mask_d, length, s_w_w, WIDTH)  # (WP, BD)
            tl.store(dh0_ptr + row * dim * WIDTH + offs_d[None, :] * WIDTH + cols[:, None], dh,
                     mask=(cols < WIDTH)[:, None] & mask_d[None, :])


def _grid(batch: int, dim: int, length: int) -> tuple[int, int, int]:
    return triton.cdiv(length, BLOCK_L), triton.cdiv(dim, BLOCK_D), batch


def conv_forward(x, weight, bias, initial_state, silu: bool) -> torch.Tensor:
    """y (b, d, l) in x's dtype and layout (common.empty_like_layout; x may have any strides; weight (d, W);
    initial_state (b, d, W))."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    y = common.empty_like_layout(x)
    h0 = initial_state if initial_state is not None else x
    h0_strides = initial_state.stride() if initial_state is not None else (0, 0, 0)
    _conv_fwd_kernel[_grid(batch, dim, length)](
        x, weight, bias if bias is not None else weight, h0, y,
        dim, length, *x.stride(), *weight.stride(), *h0_strides, *y.stride(),
        WIDTH=width, BL=BLOCK_L, BD=BLOCK_D, HAS_BIAS=bias is not None, HAS_H0=initial_state is not None,
        SILU=silu, num_warps=4,
    )
    return y


def conv_backward(dy, x, weight, bias, initial_state, silu: bool):
    """(dx (b, d, l) in x's dtype and layout, dweight (d, W) float32, dbias (d,) float32, d_initial_state (b, d, W)
    float32 or None) of the forward above, given dy (b, d, l). Two passes: g = dy · act'(p) with the dw/dbias
    partial sums, then dx from g (a float32 (b, d, l) transient)."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    grid = _grid(batch, dim, length)
    f32 = {"device": x.device, "dtype": torch.float32}
    g = common.empty(batch, dim, length, **f32)  # dL/d(pre-activation)                      (b, d, l)
    dw = common.empty(batch * grid[0], dim, width, **f32)  # per-program partial sums
    dbias = common.empty(batch * grid[0], dim, **f32)
    h0 = initial_state if initial_state is not None else x
    h0_strides = initial_state.stride() if initial_state is not None else (0, 0, 0)
    _conv_grad_out_kernel[grid](
        x, weight, bias if bias is not None else weight, h0, dy, g, dw, dbias,
        dim, length, grid[0], *x.stride(), *weight.stride(), *h0_strides, *dy.stride(),
        WIDTH=width, BL=BLOCK_L, BD=BLOCK_D, HAS_BIAS=bias is not None, HAS_H0=initial_state is not None,
        SILU=silu, num_warps=4,
    )
    dx = common.empty_like_layout(x)
    dh0 = common.empty(batch, dim, width, **f32) if initial_state is not None else None
    _conv_grad_in_kernel[grid](
        g, weight, dx, dh0 if dh0 is not None else g, dim, length, *weight.stride(), *dx.stride(),
        WIDTH=width, WP=triton.next_power_of_2(width), BL=BLOCK_L, BD=BLOCK_D, HAS_H0=initial_state is not None,
        num_warps=4,
    )
    return dx, dw.sum(0), dbias.sum(0), dh0
