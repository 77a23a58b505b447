"""Fixtures of the op tests."""

from __future__ import annotations

import pytest
import torch

from mambalab.ops import triton as kernels

TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def triton_kernels():
    """The fused kernels runnable on TRITON_DEVICE: compiled on a GPU, else in Triton's CPU interpreter."""
    if TRITON_DEVICE == "cuda":
        yield
    else:
        with kernels.interpreter():
            yield


@pytest.fixture
def poisoned_kernel_outputs(monkeypatch):
    """Every buffer the Triton kernels allocate (mambalab.ops.triton.common.empty) starts as NaN, so an element
    they fail to write fails the comparison."""
    from mambalab.ops.triton import common

    monkeypatch.setattr(common, "empty", lambda *s, device, dtype: torch.full(s, float("nan"), device=device,
                                                                              dtype=dtype))
