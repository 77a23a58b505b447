"""The residual add of the blocks, shared by Block and the mixers that fuse it into their last kernel."""

from __future__ import annotations

import torch


def add_residual(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + y in x's dtype: one kernel when y's dtype promotes to x's (bf16 onto the float32 residual)."""
    return x + y if torch.promote_types(x.dtype, y.dtype) == x.dtype else x + y.to(x.dtype)
