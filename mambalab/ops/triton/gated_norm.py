"""Mamba-2's gated RMSNorm in Triton, forward and backward: `gated_rms_norm_composition`
(mambalab/layers/mamba2.py) in one launch each way, for inference and training.

Per row of y, z (…, d) and per group of `group_size` channels: g = y · SiLU(z) in float32,
r = 1 / sqrt(mean(g²) + eps), ĝ = g · r rounded to y's dtype, and out = weight · ĝ in float32, rounded to
torch's result dtype of that product (or to `out_dtype`: the layer asks for autocast's dtype under autocast, the
dtype its out_proj casts the output to anyway). The torch composition takes 11 kernels forward and 21 backward, most
reading and writing (…, d) float32 tensors, and autograd keeps four float32 intermediates (counted in
benchmarks/notes/train.md); here the forward reads y, z and writes out (and r, one float32 per row and group),
the backward reads y, z, r and the output's gradient and writes dy, dz.

Backward, per group of G channels (the float32 math; the rounding of ĝ to y's dtype is taken as identity):
  ĝ_i = g_i · r with r = (Σ_j g_j² / G + eps)^(-1/2), so ∂r/∂g_j = −r³ g_j / G and
  ∂ĝ_i/∂g_j = r δ_ij − r³ g_i g_j / G. With dĝ = dout · weight:
  dg_j = Σ_i dĝ_i ∂ĝ_i/∂g_j = r (dĝ_j − ĝ_j · mean_i(dĝ_i ĝ_i)).
  g = y · SiLU(z) with SiLU(z) = z σ(z) and SiLU'(z) = σ(z) (1 + z (1 − σ(z))):
  dy = dg · SiLU(z), dz = dg · y · SiLU'(z), dweight = Σ_rows dout · ĝ.
Each backward program takes a run of rows of one group and accumulates its dweight in float32 registers; the
per-program partial sums are added by one torch sum.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from mambalab.errors import InputError
from mambalab.ops.backends import records_grad
from mambalab.ops.triton import common
from mambalab.ops.triton.common import INTERPRETED

__all__ = ["INTERPRETED", "gated_rms_norm"]

# Backward programs along the rows (times the groups): about four per SM of an H100 (132 SMs), so that every
# SM streams rows while the dweight partial sums stay small (ROW_PROGRAMS × d floats).
ROW_PROGRAMS = 512


@triton.jit
def _gated_rms_norm_kernel(y_ptr, z_ptr, w_ptr, out_ptr, r_ptr, s_y, s_z, s_out, group_size, eps,
                           STORE_R: tl.constexpr, BLOCK_G: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    group = tl.program_id(1)
    start = group * group_size  # first channel of this group
    offs = tl.arange(0, BLOCK_G)
    mask = offs < group_size
    y = tl.load(y_ptr + row * s_y + start + offs, mask=mask, other=0.0)
    z = tl.load(z_ptr + row * s_z + start + offs, mask=mask, other=0.0).to(tl.float32)
    g = y.to(tl.float32) * z * common.sigmoid(z)  # y · SiLU(z)
    r = 1.0 / tl.sqrt(tl.sum(g * g, axis=0) / group_size + eps)
    if STORE_R:
        tl.store(r_ptr + row * tl.num_programs(1) + group, r)
    g_hat = (g * r).to(y.dtype).to(tl.float32)
    w = tl.load(w_ptr + start + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * s_out + start + offs, (w * g_hat).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_rms_norm_backward_kernel(y_ptr, z_ptr, w_ptr, r_ptr, dout_ptr, dy_ptr, dz_ptr, dw_ptr,
                                    s_y, s_z, s_dout, s_dy, s_dz, n_rows, rows_per_program, group_size,
                                    BLOCK_G: tl.constexpr):
    group = tl.program_id(1)
    n_groups = tl.num_programs(1)
    start = group * group_size  # first channel of this group
    offs = tl.arange(0, BLOCK_G)
    mask = offs < group_size
    w = tl.load(w_ptr + start + offs, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_G], dtype=tl.float32)
    first = tl.program_id(0).to(tl.int64) * rows_per_program
    for i in range(rows_per_program):
        row = first + i
        inside = row < n_rows
        m = offs < tl.where(inside, group_size, 0)  # rows past the end load zeros: they add nothing to dw
        y = tl.load(y_ptr + row * s_y + start + offs, mask=m, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + row * s_z + start + offs, mask=m, other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + row * s_dout + start + offs, mask=m, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + row * n_groups + group, mask=inside, other=0.0)
        sig = common.sigmoid(z)
        silu = z * sig
        g_hat = y * silu * r
        d_g_hat = dout * w
        dg = r * (d_g_hat - g_hat * (tl.sum(d_g_hat * g_hat, axis=0) / group_size))
        tl.store(dy_ptr + row * s_dy + start + offs, (dg * silu).to(dy_ptr.dtype.element_ty), mask=m)
        dz = dg * y * sig * (1.0 + z * (1.0 - sig))  # dg · y · SiLU'(z)
        tl.store(dz_ptr + row * s_dz + start + offs, dz.to(dz_ptr.dtype.element_ty), mask=m)
        dw += dout * g_hat
    tl.store(dw_ptr + tl.program_id(0) * (n_groups * group_size) + start + offs, dw, mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    rows = t.reshape(-1, t.shape[-1])  # (r, d), a view where t allows one
    return rows.contiguous() if rows.numel() and rows.stride(-1) != 1 else rows


def _forward(y_rows: torch.Tensor, z_rows: torch.Tensor, weight: torch.Tensor, group_size: int, eps: float,
             store_r: bool, out_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """y, z (r, d) -> out (r, d) in out_dtype (None: promote(weight dtype, y dtype)), and r (r, d / group_size)
    float32 if asked."""
    n_rows, dim = y_rows.shape
    out_dtype = out_dtype or torch.promote_types(weight.dtype, y_rows.dtype)
    out = common.empty(n_rows, dim, device=y_rows.device, dtype=out_dtype)
    r = common.empty(n_rows, dim // group_size, device=y_rows.device, dtype=torch.float32) if store_r else None
    if n_rows and dim:
        block = triton.next_power_of_2(group_size)
        _gated_rms_norm_kernel[(n_rows, dim // group_size)](
            y_rows, z_rows, weight, out, out if r is None else r,  # out: a placeholder r, never written
            y_rows.stride(0), z_rows.stride(0), out.stride(0), group_size, eps, STORE_R=store_r, BLOCK_G=block,
            num_warps=4 if block <= 4096 else 8)
    return out, r


def _backward(dout: torch.Tensor, y_rows: torch.Tensor, z_rows: torch.Tensor, weight: torch.Tensor,
              r: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dout, y, z (r, d), r (r, d / group_size) -> dy (y's dtype), dz (z's dtype), dweight (weight's dtype)."""
    n_rows, dim = y_rows.shape
    dy = common.empty(n_rows, dim, device=y_rows.device, dtype=y_rows.dtype)
    dz = common.empty(n_rows, dim, device=z_rows.device, dtype=z_rows.dtype)
    if not (n_rows and dim):
        return dy, dz, torch.zeros_like(weight)
    rows_per_program = triton.cdiv(n_rows, min(n_rows, ROW_PROGRAMS))
    programs = triton.cdiv(n_rows, rows_per_program)
    dw_partial = common.empty(programs, dim, device=y_rows.device, dtype=torch.float32)
    block = triton.next_power_of_2(group_size)
    _gated_rms_norm_backward_kernel[(programs, dim // group_size)](
        y_rows, z_rows, weight, r, dout, dy, dz, dw_partial, y_rows.stride(0), z_rows.stride(0), dout.stride(0),
        dy.stride(0), dz.stride(0), n_rows, rows_per_program, group_size, BLOCK_G=block,
        num_warps=4 if block < 2048 else 8)  # ~10 float32 values live per channel: 8 warps from 2048 channels
    return dy, dz, dw_partial.sum(0).to(weight.dtype)


class _GatedRMSNormFunction(torch.autograd.Function):
    """out = gated_rms_norm(y, z, weight) with the backward kernel; group_size and eps are constants."""

    @staticmethod
    def forward(ctx, y, z, weight, group_size, eps, out_dtype):
        y_rows, z_rows = _rows(y), _rows(z)  # (r, d)
        out, r = _forward(y_rows, z_rows, weight, group_size, eps, store_r=True, out_dtype=out_dtype)
        ctx.save_for_backward(y_rows, z_rows, weight, r)
        ctx.group_size, ctx.shape = group_size, y.shape
        return out.view(y.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        y_rows, z_rows, weight, r = ctx.saved_tensors
        dy, dz, dweight = _backward(_rows(dout), y_rows, z_rows, weight, r, ctx.group_size)
        wanted = ctx.needs_input_grad
        return (dy.view(ctx.shape) if wanted[0] else None, dz.view(ctx.shape) if wanted[1] else None,
                dweight if wanted[2] else None, None, None, None)


def gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, group_size: int,
                   eps: float, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """y, z (…, d), weight (d,) -> (…, d) in out_dtype (None: promote(weight dtype, y dtype)); see the module
    docstring. Differentiable in y, z and weight (the backward kernel) where autograd records; otherwise the
    forward kernel alone, without autograd's per-call host cost."""
    validate(y, z, weight, group_size)
    if records_grad(y, z, weight):
        return _GatedRMSNormFunction.apply(y, z, weight, group_size, eps, out_dtype)
    out, _ = _forward(_rows(y), _rows(z), weight, group_size, eps, store_r=False, out_dtype=out_dtype)
    return out.view(y.shape)


def validate(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, group_size: int) -> None:
    """InputError naming the bad argument unless y and z are (…, d) alike, weight is (d,), and group_size
    divides d."""
    _expect(y.dim() >= 1, "y must be (..., d), got a scalar")
    dim = y.shape[-1]
    _expect(tuple(z.shape) == tuple(y.shape), f"z must have y's shape {tuple(y.shape)}, got {tuple(z.shape)}")
    _expect(tuple(weight.shape) == (dim,), f"weight must be (d={dim},), got {tuple(weight.shape)}")
    _expect(isinstance(group_size, int) and group_size > 0 and dim % group_size == 0,
            f"group_size must be a positive int dividing d={dim}, got {group_size!r}")


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise InputError(f"gated_rms_norm: {message}")
