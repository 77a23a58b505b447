"""Small @triton.jit helpers shared by the scan and step kernels."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Triton decides at decoration time whether @triton.jit functions are interpreted; record that decision.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")

def empty(*shape, device, dtype) -> torch.Tensor:
    """Uninitialised output buffers of the kernels (tests replace this to poison them with NaN)."""
    return torch.empty(*shape, device=device, dtype=dtype)


LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x · log2 e): one multiply folded into A, then the fast ex2


@triton.jit
def softplus(x):
    """log(1 + e^x) without losing e^x when it is tiny (log1p via the (1+e)-1 correction); x for x > 20."""
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    log1p = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.where(x > 20.0, x, log1p)


@triton.jit
def affine_combine(a_prev, b_prev, a_next, b_next):
    """Compose h -> a_prev h + b_prev, then h -> a_next h + b_next (the scan's associative operator)."""
    return a_prev * a_next, a_next * b_prev + b_next
