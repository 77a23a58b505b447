"""Mamba-2's gated RMSNorm forward in one Triton launch (inference: prefill and decode), the composition of
`GatedRMSNorm.forward` (mambalab/layers/mamba2.py).

Per row of y, z (…, d) and per group of `group_size` channels: g = y · SiLU(z) in float32,
r = 1 / sqrt(mean(g²) + eps), ĝ = g · r rounded to y's dtype, and out = weight · ĝ in float32, rounded to
torch's result dtype of that product. The torch composition takes ~10 kernels (casts, sigmoid, products,
mean, rsqrt); at decode batch sizes each is a few µs of launch and latency, in every layer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mambalab.errors import InputError
from mambalab.ops.triton import common
from mambalab.ops.triton.common import INTERPRETED

__all__ = ["INTERPRETED", "gated_rms_norm"]


@triton.jit
def _gated_rms_norm_kernel(y_ptr, z_ptr, w_ptr, out_ptr, s_y, s_z, s_out, group_size, eps,
                           BLOCK_G: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    start = tl.program_id(1) * group_size  # first channel of this group
    offs = tl.arange(0, BLOCK_G)
    mask = offs < group_size
    y = tl.load(y_ptr + row * s_y + start + offs, mask=mask, other=0.0)
    z = tl.load(z_ptr + row * s_z + start + offs, mask=mask, other=0.0).to(tl.float32)
    g = y.to(tl.float32) * z / (1.0 + tl.exp(-z))  # y · SiLU(z)
    r = 1.0 / tl.sqrt(tl.sum(g * g, axis=0) / group_size + eps)
    g_hat = (g * r).to(y.dtype).to(tl.float32)
    w = tl.load(w_ptr + start + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * s_out + start + offs, (w * g_hat).to(out_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    rows = t.reshape(-1, t.shape[-1])  # (r, d), a view where t allows one
    return rows.contiguous() if rows.numel() and rows.stride(-1) != 1 else rows


def gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, group_size: int,
                   eps: float) -> torch.Tensor:
    """y, z (…, d), weight (d,) -> (…, d) in promote(weight dtype, y dtype); see the module docstring."""
    validate(y, z, weight, group_size)
    dim = y.shape[-1]
    y_rows, z_rows = _rows(y), _rows(z)  # (r, d)
    dtype = torch.promote_types(weight.dtype, y.dtype)
    out = common.empty(y_rows.shape[0], dim, device=y.device, dtype=dtype)
    if y_rows.numel():
        block = triton.next_power_of_2(group_size)
        _gated_rms_norm_kernel[(y_rows.shape[0], dim // group_size)](
            y_rows, z_rows, weight, out, y_rows.stride(0), z_rows.stride(0), out.stride(0), group_size, eps,
            BLOCK_G=block, num_warps=4 if block <= 4096 else 8)
    return out.view(*y.shape[:-1], dim)


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
