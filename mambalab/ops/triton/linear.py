"""y = x @ weight.T (optionally + residual) for a few rows (decode batch sizes) in one Triton launch.

At batch 1-4 a projection is a matrix-vector product: it must read the weight once and does almost no
arithmetic, and cuBLAS's GEMM tiles for it run several times its memory floor. Here each program reads
BLOCK_N whole weight rows, BLOCK_K columns at a time, and keeps the M ≤ BLOCK_M rows of x it multiplies in
registers: acc (m, n) += Σ_k x (m, k) · w (n, k), in float32; many small programs keep every SM streaming.
With a residual (the block's float32 stream), y = residual + acc rounded to x's dtype, as the unfused
`residual + F.linear(x, weight)` rounds it: the block's add is one launch fewer.
Faster than cuBLAS for out_proj (d_inner -> d_model), not for in_proj (benchmarks/skinny_linear.py,
benchmarks/notes/decode.md), so only out_proj uses it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mambalab.ops.triton import common
from mambalab.ops.triton.common import INTERPRETED

__all__ = ["INTERPRETED", "MAX_ROWS", "skinny_linear"]

MAX_ROWS = 4  # rows of x one launch takes (BLOCK_M)


@triton.jit
def _skinny_linear_kernel(x_ptr, w_ptr, r_ptr, y_ptr, rows, n_out, n_in, s_xm, s_wn, s_rm, s_ym,
                          HAS_RESIDUAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr):
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m, mask_n = offs_m < rows, offs_n < n_out
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, n_in, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < n_in
        x = tl.load(x_ptr + offs_m[:, None] * s_xm + offs_k[None, :], mask=mask_m[:, None] & mask_k[None, :],
                    other=0.0).to(tl.float32)  # (BLOCK_M, BLOCK_K)
        w = tl.load(w_ptr + offs_n[:, None].to(tl.int64) * s_wn + offs_k[None, :],
                    mask=mask_n[:, None] & mask_k[None, :], other=0.0).to(tl.float32)  # (BLOCK_N, BLOCK_K)
        acc += tl.sum(x[:, None, :] * w[None, :, :], axis=2)
    mask = mask_m[:, None] & mask_n[None, :]
    out = acc.to(x_ptr.dtype.element_ty)
    if HAS_RESIDUAL:
        out = out.to(tl.float32) + tl.load(r_ptr + offs_m[:, None] * s_rm + offs_n[None, :], mask=mask).to(tl.float32)
    tl.store(y_ptr + offs_m[:, None] * s_ym + offs_n[None, :], out.to(y_ptr.dtype.element_ty), mask=mask)


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None = None, block_n: int = 4,
                  block_k: int = 512, num_warps: int = 2) -> torch.Tensor:
    """x (m, k) with m ≤ MAX_ROWS and a contiguous last dimension, weight (n, k) contiguous -> y (m, n) in
    x's dtype (float32 accumulation, as cuBLAS); with residual (m, n) (unit last stride, a dtype x's promotes
    to), residual + y in residual's dtype. The default blocks are the sweep's best for out_proj."""
    rows, n_in = x.shape
    n_out = weight.shape[0]
    if rows > MAX_ROWS or weight.shape[1] != n_in or x.stride(-1) != 1 or not weight.is_contiguous():
        raise ValueError(f"skinny_linear: x must be (m ≤ {MAX_ROWS}, k) with unit last stride and weight (n, k) "
                         f"contiguous; got x {tuple(x.shape)} strides {x.stride()}, weight {tuple(weight.shape)}")
    if residual is not None and (tuple(residual.shape) != (rows, n_out) or residual.stride(-1) != 1
                                 or torch.promote_types(x.dtype, residual.dtype) != residual.dtype):
        raise ValueError(f"skinny_linear: residual must be ({rows}, {n_out}) with unit last stride in a dtype "
                         f"{x.dtype} promotes to; got {tuple(residual.shape)} {residual.dtype}")
    y = common.empty(rows, n_out, device=x.device, dtype=x.dtype if residual is None else residual.dtype)
    if rows:
        _skinny_linear_kernel[(triton.cdiv(n_out, block_n),)](
            x, weight, y if residual is None else residual, y, rows, n_out, n_in, x.stride(0), weight.stride(0),
            0 if residual is None else residual.stride(0), y.stride(0), HAS_RESIDUAL=residual is not None,
            BLOCK_M=triton.next_power_of_2(rows), BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps)
    return y
