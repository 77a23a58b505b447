"""SwiGLU feed-forward (Shazeer 2020, arXiv 2002.05202; Transformer++ / LLaMA): down_proj(SiLU(gate_proj(x)) ·
up_proj(x)), no biases."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mambalab.config import ModelConfig


def swiglu_width(d_model: int, d_intermediate: int | None, multiple_of: int) -> int:
    """The hidden width: `d_intermediate`, or the LLaMA rule 8/3·d_model rounded up to `multiple_of`
    (which keeps 3·d·d_int ≈ the 8·d² parameters of a 4·d GELU MLP)."""
    if d_intermediate is not None:
        return d_intermediate
    return math.ceil(8 * d_model / 3 / multiple_of) * multiple_of


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_intermediate, bias=False)
        self.up_proj = nn.Linear(d_model, d_intermediate, bias=False)
        self.down_proj = nn.Linear(d_intermediate, d_model, bias=False)

    @classmethod
    def from_config(cls, config: ModelConfig, layer_idx: int) -> SwiGLU:
        return cls(config.d_model, swiglu_width(config.d_model, config.mlp.d_intermediate, config.mlp.multiple_of))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., d_model) -> (..., d_model)."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def forward(self, x: torch.Tensor):
        """FFN protocol: x (..., d_model) -> (y, None) (no auxiliary loss)."""
        return self.mlp(x), None
