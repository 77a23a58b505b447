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


def channels_last(t: torch.Tensor) -> bool:
    """Whether a (b, d, l) tensor is a transposed view of (b, l, d) memory (channels the unit-stride axis), as
    the mixer's projections produce. Kernel outputs follow their input's layout, so that the projections on
    either side take them without a transposing copy."""
    return t.dim() == 3 and t.shape[1] > 1 and t.shape[2] > 1 and t.stride(1) == 1


def empty_like_layout(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised (b, d, l) buffer of t's shape: (b, l, d) in memory where t is channels-last, else
    contiguous (also under fake tensors: the custom ops' fakes call it too)."""
    batch, dim, length = t.shape
    if channels_last(t):
        return empty(batch, length, dim, device=t.device, dtype=dtype or t.dtype).transpose(1, 2)
    return empty(batch, dim, length, device=t.device, dtype=dtype or t.dtype)


LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x · log2 e): one multiply folded into A, then the fast ex2


@triton.jit
def softplus(x):
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|): one ex2 and a polynomial for log1p on (0, 1], no log and no
    division (tl.log is a ~20-instruction library routine on sm_90 and the division ~8 more: 43 instructions
    per value in the forward's build under triton 3.6; this one 14).

    log1p(t) = t · q(t), q a degree-9 Chebyshev fit of log1p(t) / t on [0, 1] (relative error ≤ 1.7e-7
    evaluated in float32; the whole softplus ≤ 6e-7 for x in [-10, 40], ≤ 2e-6 down to -40 through the
    float32 exponent of e^-|x|, as for every exp here; benchmarks/notes/scan.md)."""
    t = tl.exp2(-tl.abs(x) * LOG2E)  # e^-|x|, in (0, 1]
    q = t * -0.0032140322 + 0.019649142
    q = q * t - 0.05643497
    q = q * t + 0.1053322
    q = q * t - 0.15251446
    q = q * t + 0.19651489
    q = q * t - 0.24947809
    q = q * t + 0.333291
    q = q * t - 0.4999985
    q = q * t + 1.0
    return tl.maximum(x, 0.0) + t * q


@triton.jit
def sigmoid(x):
    """1 / (1 + e^-x) through ex2 (tl.sigmoid's exp handles denormal results with three extra instructions)."""
    return 1.0 / (1.0 + tl.exp2(-x * LOG2E))


@triton.jit
def affine_combine(a_prev, b_prev, a_next, b_next):
    """Compose h -> a_prev h + b_prev, then h -> a_next h + b_next (the scan's associative operator)."""
    return a_prev * a_next, a_next * b_prev + b_next
