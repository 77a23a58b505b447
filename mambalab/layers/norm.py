"""RMSNorm (Zhang & Sennrich 2019, arXiv 1910.07467; as in Mamba and LLaMA): x / rms(x) · weight, computed in
float32."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor, round_to_weight_dtype: bool = False) -> torch.Tensor:  # (..., d) -> (..., d)
        """With round_to_weight_dtype, x is first rounded to the weight's dtype (the blocks normalise their
        float32 residual stream so). Where no gradient is recorded and the Triton kernels run (CUDA), one
        fused launch (mambalab/ops/triton/norm.py) instead of the several kernels below; under torch.compile the
        composition, which inductor fuses with its neighbours."""
        if self._fused(x):
            from mambalab.ops.triton.norm import rms_norm

            return rms_norm(x, self.weight, self.eps, round_to_weight_dtype)
        if round_to_weight_dtype:
            x = x.to(self.weight.dtype)
        dtype = x.dtype
        x32 = x.float() if dtype != torch.float64 else x
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)

    def _fused(self, x: torch.Tensor) -> bool:
        if not x.is_cuda or torch.float64 in (x.dtype, self.weight.dtype) or torch.compiler.is_compiling():
            return False
        from mambalab.ops import triton as kernels
        from mambalab.ops.backends import records_grad

        return not records_grad(x, self.weight) and kernels.runs_on(x.device)
