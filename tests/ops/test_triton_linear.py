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


@pytest.mark.parametrize("family", ["mamba", "mamba2"])
@pytest.mark.parametrize("rows", [1, 3, 5])
def test_mixer_step_deferred_equals_step_plus_residual(family, rows, monkeypatch):
    """A decode step's out_proj + residual add as one skinny_linear launch (up to 4 rows; 5 returns the
    product with the add left to the caller) gives the step's output plus the residual, for Mamba and Mamba-2
    alike."""
    from mambalab.config import Mamba2Config, SSMConfig
    from mambalab.layers.mamba import Mamba
    from mambalab.layers.mamba2 import Mamba2
    from mambalab.layers.residual import add_residual
    from mambalab.ops.triton import linear

    torch.manual_seed(rows)
    mixer = (Mamba(32, SSMConfig(d_state=8, scan_backend="triton")) if family == "mamba"
             else Mamba2(32, Mamba2Config(d_state=8, head_dim=16, n_groups=2, ssd_backend="triton")))
    mixer = mixer.to(TRITON_DEVICE).eval()
    calls, original = [], linear.skinny_linear
    monkeypatch.setattr(linear, "skinny_linear", lambda *a, **k: calls.append(1) or original(*a, **k))
    state = {k: torch.randn_like(v) for k, v in mixer.allocate_state(rows, TRITON_DEVICE).items()}
    hidden, residual = torch.randn(rows, 32, device=TRITON_DEVICE), torch.randn(rows, 32, device=TRITON_DEVICE)
    with torch.no_grad():
        separate_state = {k: v.clone() for k, v in state.items()}
        expected = add_residual(residual, mixer.step(hidden, separate_state))
        total, pending = mixer.step_deferred(hidden, state, None, residual)
    assert len(calls) == (rows <= 4) and (pending is None) == (rows <= 4)
    fused = total if pending is None else add_residual(total, pending)
    assert rel_error(fused, expected) <= 1e-6
    for key, value in state.items():
        assert torch.equal(value, separate_state[key]), key
