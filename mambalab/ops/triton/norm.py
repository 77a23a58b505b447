"""RMSNorm forward in one Triton launch (inference: prefill and decode), the composition of `RMSNorm.forward`.

Per row of x (…, d): optionally round x to the weight's dtype (the blocks normalise their float32 residual
stream in the weights' dtype), r = 1 / sqrt(mean(x²) + eps) in float32, x̂ = x · r rounded to x's dtype, and
y = weight · x̂ in float32, rounded to torch's result dtype of that product. The torch composition takes 6-9
kernels (casts, pow, mean, rsqrt, two products); at decode batch sizes each is launch- and latency-bound.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mambalab.ops.triton import common
from mambalab.ops.triton.common import INTERPRETED

__all__ = ["INTERPRETED", "rms_norm"]


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, y_ptr, s_x, s_y, dim, eps, ROUND_INPUT: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_D)
    mask = offs < dim
    x = tl.load(x_ptr + row * s_x + offs, mask=mask, other=0.0)
    if ROUND_INPUT:
        x = x.to(w_ptr.dtype.element_ty)
    xf = x.to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / dim + eps)
    x_hat = (xf * r).to(x.dtype).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * s_y + offs, (w * x_hat).to(y_ptr.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, round_input: bool) -> torch.Tensor:
    """x (…, d), weight (d,) -> y (…, d) in promote(weight dtype, normalised dtype); see the module docstring."""
    dim = x.shape[-1]
    rows = x.reshape(-1, dim)  # (r, d), a view where x allows one
    if rows.numel() and rows.stride(-1) != 1:
        rows = rows.contiguous()
    normalised = weight.dtype if round_input else x.dtype
    y = common.empty(rows.shape[0], dim, device=x.device, dtype=torch.promote_types(weight.dtype, normalised))
    if rows.numel():
        block = triton.next_power_of_2(dim)
        _rms_norm_kernel[(rows.shape[0],)](rows, weight, y, rows.stride(0), y.stride(0), dim, eps,
                                           ROUND_INPUT=round_input, BLOCK_D=block,
                                           num_warps=4 if block <= 4096 else 8)
    return y.view(*x.shape[:-1], dim)
