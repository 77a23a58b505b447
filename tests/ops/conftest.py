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
