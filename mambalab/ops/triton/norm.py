"""RMSNorm forward in one Triton launch (inference: prefill and decode), the composition of `RMSNorm.forward`.

Per row of x (…, d): optionally round x to the weight's dtype (the blocks normalise their float32 residual
stream in the weights' dtype), r = 1 / sqrt(mean(x²) + eps) in float32, x̂ = x · r rounded to x's dtype, and
y = weight · x̂ in float32, rounded to torch's result dtype of that product. The torch composition takes 6-9
kernels (casts, pow, mean, rsqrt, two products); at decode batch sizes each is launch- and latency-bound.

`add_rms_norm` first adds a block's pending branch output to its residual stream in the same launch (the sum in
float32, rounded once to the residual's dtype, as torch's `residual + branch` rounds it), stores that sum and
normalises it: a decode step's residual add then costs no launch of its own.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mambalab.ops.triton import common
from mambalab.ops.triton.common import INTERPRETED

__all__ = ["INTERPRETED", "add_rms_norm", "rms_norm"]


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, y_ptr, branch_ptr, sum_ptr, s_x, s_y, s_branch, s_sum, dim, eps,
                     ROUND_INPUT: tl.constexpr, ADD: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_D)
    mask = offs < dim
    x = tl.load(x_ptr + row * s_x + offs, mask=mask, other=0.0)
    if ADD:  # x = residual + branch in the residual's dtype, stored: the block's residual stream after the add
        branch = tl.load(branch_ptr + row * s_branch + offs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + branch.to(tl.float32)).to(x.dtype)
        tl.store(sum_ptr + row * s_sum + offs, x, mask=mask)
    if ROUND_INPUT:
        x = x.to(w_ptr.dtype.element_ty)
    xf = x.to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / dim + eps)
    x_hat = (xf * r).to(x.dtype).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * s_y + offs, (w * x_hat).to(y_ptr.dtype.element_ty), mask=mask)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x (…, d) as (r, d) with a unit last stride: a view where x allows one."""
    rows = x.reshape(-1, x.shape[-1])
    return rows.contiguous() if rows.numel() and rows.stride(-1) != 1 else rows


def _launch(rows, weight, eps, round_input, branch=None, total=None) -> torch.Tensor:
    """The normalised rows (r, d) of `rows`, or of rows + branch (then stored into `total`)."""
    dim = rows.shape[-1]
    normalised = weight.dtype if round_input else rows.dtype
    y = common.empty(rows.shape[0], dim, device=rows.device, dtype=torch.promote_types(weight.dtype, normalised))
    if rows.numel():
        add = branch is not None
        block = triton.next_power_of_2(dim)
        _rms_norm_kernel[(rows.shape[0],)](
            rows, weight, y, branch if add else rows, total if add else rows, rows.stride(0), y.stride(0),
            branch.stride(0) if add else 0, total.stride(0) if add else 0, dim, eps,
            ROUND_INPUT=round_input, ADD=add, BLOCK_D=block, num_warps=4 if block <= 4096 else 8)
    return y


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, round_input: bool) -> torch.Tensor:
    """x (…, d), weight (d,) -> y (…, d) in promote(weight dtype, normalised dtype); see the module docstring."""
    return _launch(_rows(x), weight, eps, round_input).view(x.shape)


def add_rms_norm(residual: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, eps: float,
                 round_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """residual, branch (…, d) with promote(residual dtype, branch dtype) = residual's, weight (d,) ->
    (total = residual + branch in residual's dtype, rms_norm(total, weight, eps, round_input)), in one launch."""
    if branch.shape != residual.shape or torch.promote_types(residual.dtype, branch.dtype) != residual.dtype:
        raise ValueError(f"add_rms_norm: branch {tuple(branch.shape)} {branch.dtype} must have the residual's shape "
                         f"{tuple(residual.shape)} and a dtype that promotes to its {residual.dtype}")
    rows = _rows(residual)
    total = common.empty(*rows.shape, device=rows.device, dtype=rows.dtype)
    y = _launch(rows, weight, eps, round_input, _rows(branch), total)
    return total.view(residual.shape), y.view(residual.shape)
