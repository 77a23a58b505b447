"""RMSNorm (Zhang & Sennrich 2019, arXiv 1910.07467; as in Mamba and LLaMA): x / rms(x) · weight, computed in
float32."""

from __future__ import annotations

import functools

import torch
from torch import nn


def rms_norm_composition(x: torch.Tensor, weight: torch.Tensor, eps: float, round_to_weight_dtype: bool):
    """The norm as torch ops: x (..., d) -> (..., d); see `RMSNorm.forward`."""
    if round_to_weight_dtype:
        x = x.to(weight.dtype)
    dtype = x.dtype
    x32 = x.float() if dtype != torch.float64 else x
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


@functools.cache
def _compiled_composition():
    """`rms_norm_composition` through torch.compile: inductor fuses its 6-9 elementwise and reduction kernels
    into one forward and one backward kernel (compiled on the first training step, then reused by every block).
    Shapes are symbolic (dynamic=True), so only a new dtype or flag compiles again; past torch's recompile limit
    it runs eagerly (a warning, never an error)."""
    return torch.compile(rms_norm_composition, dynamic=True)


class RMSNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor, round_to_weight_dtype: bool = False) -> torch.Tensor:  # (..., d) -> (..., d)
        """With round_to_weight_dtype, x is first rounded to the weight's dtype (the blocks normalise their
        float32 residual stream so). On CUDA the composition's 6-9 kernels (casts, pow, mean, rsqrt, two
        products, and twice as many in the backward) become one: where no gradient is recorded, one Triton
        launch (mambalab/ops/triton/norm.py); in training with float32 parameters and residual stream (AMP: the
        norm runs wholly in float32), the composition compiled by torch.compile (forward and backward fused).
        A 16-bit model trains through the plain composition: inductor does not round where the composition
        does, which measured 6.6e-3 (bf16) between a model's training and inference forwards on an H100, over
        the 5e-3 its GPU test allows. Inside an outer torch.compile, the plain composition, which inductor fuses
        with its neighbours."""
        path = self._path(x)
        if path == "compiled":
            return _compiled_composition()(x, self.weight, self.eps, round_to_weight_dtype)
        if path == "triton":
            from mambalab.ops.triton.norm import rms_norm

            return rms_norm(x, self.weight, self.eps, round_to_weight_dtype)
        return rms_norm_composition(x, self.weight, self.eps, round_to_weight_dtype)

    def add_then_norm(self, residual: torch.Tensor, branch: torch.Tensor | None,
                      round_to_weight_dtype: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(residual + branch in residual's dtype, this norm of it): a block's residual add of the previous
        branch's output (None: nothing to add) and its next norm. Where `forward` takes the Triton kernel, one
        launch does both (ops/triton/norm.py `add_rms_norm`)."""
        from mambalab.layers.residual import add_residual

        if branch is None:
            return residual, self(residual, round_to_weight_dtype)
        if (self._path(residual) == "triton" and self._path(branch) == "triton"
                and torch.promote_types(residual.dtype, branch.dtype) == residual.dtype):
            from mambalab.ops.triton.norm import add_rms_norm

            return add_rms_norm(residual, branch, self.weight, self.eps, round_to_weight_dtype)
        total = add_residual(residual, branch)
        return total, self(total, round_to_weight_dtype)

    def _path(self, x: torch.Tensor) -> str:
        """How `forward` computes on x: "triton", "compiled" (the composition through torch.compile) or
        "composition"; see `forward`."""
        if x.is_cuda and torch.float64 not in (x.dtype, self.weight.dtype) and not torch.compiler.is_compiling():
            from mambalab.ops import triton as kernels
            from mambalab.ops.backends import records_grad

            if records_grad(x, self.weight):  # the Triton kernel has no backward
                return "compiled" if x.dtype == self.weight.dtype == torch.float32 else "composition"
            if kernels.runs_on(x.device):
                return "triton"
        return "composition"
