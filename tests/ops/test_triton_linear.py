"""The few-row projection kernel (mambalab/ops/triton/linear.py) against a float64 matmul: 1-4 rows, odd sizes
(partial blocks of outputs and of the reduction), every block shape the decode benchmark sweeps; outputs
poisoned with NaN first. On CPU the kernel runs in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import rel_error
from tests.ops.conftest import TRITON_DEVICE

pytestmark = pytest.mark.usefixtures("triton_kernels", "poisoned_kernel_outputs")


@pytest.mark.parametrize("rows", [1, 2, 3, 4])
@pytest.mark.parametrize(("n_out", "n_in"), [(37, 300), (64, 256)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_a_float64_matmul(rows, n_out, n_in, dtype):
    from mambalab.ops.triton.linear import skinny_linear

    x = torch.randn(rows, n_in).to(device=TRITON_DEVICE, dtype=dtype)
    w = (torch.randn(n_out, n_in) / n_in**0.5).to(device=TRITON_DEVICE, dtype=dtype)
    y = skinny_linear(x, w)
    exact = x.double() @ w.double().T
    assert y.dtype == dtype
    assert rel_error(y, exact) <= (1e-6 if dtype == torch.float32 else 4e-3)  # one rounding of the output


@pytest.mark.parametrize(("block_n", "block_k"), [(4, 128), (16, 512)])
def test_block_shapes(block_n, block_k):
    from mambalab.ops.triton.linear import skinny_linear

    x, w = torch.randn(1, 200, device=TRITON_DEVICE), torch.randn(50, 200, device=TRITON_DEVICE)
    assert rel_error(skinny_linear(x, w, block_n=block_n, block_k=block_k), x.double() @ w.double().T) <= 1e-6


@pytest.mark.parametrize("rows", [1, 3])
def test_residual_add_rounds_the_product_first(rows):
    """residual (float32) + x @ w.T (bf16): the product is rounded to bf16 before the add, as in the unfused
    `residual + F.linear(x, w)`; the residual is not modified."""
    from mambalab.ops.triton.linear import skinny_linear

    x = torch.randn(rows, 96).to(device=TRITON_DEVICE, dtype=torch.bfloat16)
    w = (torch.randn(40, 96) / 10).to(device=TRITON_DEVICE, dtype=torch.bfloat16)
    residual = torch.randn(rows, 40, device=TRITON_DEVICE) * 100
    before = residual.clone()
    y = skinny_linear(x, w, residual)
    product = (x.double() @ w.double().T).to(torch.bfloat16).double()
    assert y.dtype == torch.float32 and torch.equal(residual, before)
    assert rel_error(y - residual, product) <= 8e-3  # one bf16 rounding (a truncation under the interpreter)
    with pytest.raises(ValueError, match="residual"):
        skinny_linear(x, w, torch.randn(rows, 40, device=TRITON_DEVICE).to(torch.bfloat16)[:, :39])


def test_strided_rows_and_bad_shapes():
    from mambalab.ops.triton.linear import skinny_linear

    xz = torch.randn(2, 64, device=TRITON_DEVICE)
    x = xz[:, :32]  # a half of in_proj's output: row stride 64
    w = torch.randn(16, 32, device=TRITON_DEVICE)
    assert rel_error(skinny_linear(x, w), x.double() @ w.double().T) <= 1e-6
    with pytest.raises(ValueError, match="m ≤ 4"):
        skinny_linear(torch.randn(5, 32, device=TRITON_DEVICE), w)
    with pytest.raises(ValueError, match="weight"):
        skinny_linear(torch.randn(1, 31, device=TRITON_DEVICE), w)
