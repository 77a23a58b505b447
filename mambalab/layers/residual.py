"""The residual add of the blocks, shared by Block, RMSNorm.add_then_norm and the mixers that fuse it into their
last kernel."""

from __future__ import annotations

import torch
from torch import nn

from mambalab.ops.backends import records_grad


def add_residual(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + y in x's dtype: one kernel when y's dtype promotes to x's (bf16 onto the float32 residual)."""
    return x + y if torch.promote_types(x.dtype, y.dtype) == x.dtype else x + y.to(x.dtype)


def project_deferred(y: torch.Tensor, linear: nn.Linear, residual: torch.Tensor,
                     triton: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A mixer's out_proj at decode batch sizes: y (b, d_in), residual (b, d_out) -> (residual + linear(y) in
    residual's dtype, None), or (residual, linear(y)) with the add left to the caller (the next norm adds it in
    its own launch: RMSNorm.add_then_norm). With `triton` (the mixer's step ran its Triton kernels), up to
    MAX_ROWS rows, no bias, y in the weight's dtype and no gradient recorded, one `skinny_linear` launch does
    the product and the add (at batch 1 cuBLAS's matrix-vector product is launch-bound: ops/triton/linear.py);
    otherwise the product alone."""
    from mambalab.ops.triton.linear import MAX_ROWS

    weight = linear.weight
    if (triton and y.shape[0] <= MAX_ROWS and linear.bias is None and y.dtype == weight.dtype
            and torch.promote_types(y.dtype, residual.dtype) == residual.dtype and not records_grad(weight, y)):
        from mambalab.ops.triton.linear import skinny_linear

        return skinny_linear(y, weight, residual), None  # (b, d_out)
    return residual, linear(y)
