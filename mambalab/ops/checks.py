"""Argument checks shared by the ops' entry points: each failure an InputError "op: what, got what"."""

from __future__ import annotations

import itertools

import torch

from mambalab.errors import InputError


def expect(cond: bool, op: str, message: str) -> None:
    if not cond:
        raise InputError(f"{op}: {message}")


def check_tensors(op, tensors: dict) -> None:
    """Each of `tensors` (name -> tensor or None) a floating-point torch.Tensor or None, all on one device."""
    for name, t in tensors.items():
        expect(t is None or isinstance(t, torch.Tensor), op, f"{name} must be a torch.Tensor, got {type(t).__name__}")
        expect(t is None or t.is_floating_point(), op, f"{name} must be a floating-point tensor, got {t.dtype if t is not None else None}")
    devices = {t.device for t in tensors.values() if t is not None}
    expect(len(devices) == 1, op, f"all tensors must be on one device, got {sorted(map(str, devices))}")


def check_negative(op, A) -> None:
    """A's entries negative and finite (A = -exp(A_log)); checked only on CPU tensors, whose values are read
    without a host sync (elsewhere a sync per call, or no values at all: meta tensors)."""
    if A.device.type == "cpu" and not torch.compiler.is_compiling():
        expect(bool(((A < 0) & torch.isfinite(A)).all()), op,
                f"A must be negative and finite (A = -exp(A_log)), got max {A.max().item() if A.numel() else None}")


def check_cu_seqlens(op, cu_seqlens, batch, length, device, names=("x", "l")) -> int:
    """cu_seqlens a 1-D integer tensor on `device` of non-decreasing offsets from 0 to `length`, packing
    sequences along the position axis of a batch-1 input; returns the number of sequences. names: the input's
    and its position axis' names in the messages."""
    x_name, axis = names
    expect(isinstance(cu_seqlens, torch.Tensor), op, f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    expect(batch == 1, op, f"cu_seqlens packs sequences along {axis}: batch must be 1, got {batch}")
    expect(cu_seqlens.dim() == 1 and cu_seqlens.numel() >= 2, op,
            f"cu_seqlens must be 1-D with >= 2 entries, got shape {tuple(cu_seqlens.shape)}")
    expect(not cu_seqlens.dtype.is_floating_point and not cu_seqlens.dtype.is_complex
            and cu_seqlens.dtype != torch.bool, op, f"cu_seqlens must be an integer tensor, got {cu_seqlens.dtype}")
    expect(cu_seqlens.device == device, op, f"cu_seqlens must be on {x_name}'s device {device}, got {cu_seqlens.device}")
    offsets = cu_seqlens.tolist()
    expect(offsets[0] == 0 and offsets[-1] == length, op,
            f"cu_seqlens must start at 0 and end at {axis}={length}, got {offsets[0]}..{offsets[-1]}")
    expect(all(a <= b for a, b in itertools.pairwise(offsets)), op, f"cu_seqlens must be non-decreasing, got {offsets}")
    return len(offsets) - 1
