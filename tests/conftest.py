"""Shared test helpers: relative error that fails on NaN, poisoned outputs, seeded fresh inputs."""

from __future__ import annotations

import os

import pytest
import torch  # does not import triton

# Triton reads TRITON_INTERPRET when it is first imported, and torch's dispatch and compile machinery may
# import it before any kernel test runs: without a GPU, set it first, so the kernels' CPU tests
# (tests/ops/test_triton_*) run in Triton's interpreter whatever the test order. With a GPU they compile.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; NaN or Inf anywhere in `out` gives +inf so any bound fails."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    if out64.shape != ref64.shape:
        raise AssertionError(f"shape mismatch {tuple(out64.shape)} vs {tuple(ref64.shape)}")
    if not torch.isfinite(out64).all():
        return float("inf")
    denom = ref64.norm().item()
    diff = (out64 - ref64).norm().item()
    return diff / denom if denom > 0 else diff


@pytest.fixture
def rel_err():
    return rel_error


@pytest.fixture(autouse=True)
def _one_thread():
    """The tests' models are tiny: intra-op threads gain nothing, and on a busy 2-core machine each parallel
    op waits for a descheduled second thread (many times slower). Restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Each test draws fresh random inputs, but reproducibly: the seed comes from the test's name."""
    seed = abs(hash(request.node.nodeid)) % (2**31) if os.environ.get("MAMBALAB_RANDOM_SEEDS") else (
        sum(map(ord, request.node.nodeid)) % (2**31)
    )
    torch.manual_seed(seed)
    yield
