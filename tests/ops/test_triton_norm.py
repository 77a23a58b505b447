"""The fused RMSNorm kernel (mambalab/ops/triton/norm.py) against `RMSNorm`'s torch composition and a float64
oracle: every dtype pairing the blocks and norm_f use, rounding the input or not, odd widths, empty and
strided inputs, with and without the residual add before it; outputs poisoned with NaN first. On CPU the
kernel runs in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

from mambalab.layers.norm import RMSNorm
from tests.conftest import rel_error
from tests.ops.conftest import TRITON_DEVICE

pytestmark = pytest.mark.usefixtures("triton_kernels", "poisoned_kernel_outputs")

# Norm-wise error bound of one rounding to the output dtype (the kernel and torch round at the same places;
# their float32 sums and square roots differ in the last bits, which can flip a rounding).
TOL = {torch.float32: 2e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def torch_norm(x, weight, eps, round_input):
    norm = RMSNorm(weight.shape[0], eps).to(device=weight.device, dtype=weight.dtype)
    norm.weight.data.copy_(weight)
    with torch.no_grad():
        return norm(x, round_to_weight_dtype=round_input)


def oracle(x, weight, eps, round_input):
    x = (x.to(weight.dtype) if round_input else x).double()
    return weight.double() * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("round_input", [False, True])
@pytest.mark.parametrize("shape", [(3, 37), (2, 5, 768)])
def test_matches_the_torch_composition(x_dtype, w_dtype, round_input, shape):
    from mambalab.ops.triton.norm import rms_norm

    x = (torch.randn(shape) * 3).to(device=TRITON_DEVICE, dtype=x_dtype)
    weight = (1 + 0.1 * torch.randn(shape[-1])).to(device=TRITON_DEVICE, dtype=w_dtype)
    y, ref = rms_norm(x, weight, 1e-5, round_input), torch_norm(x, weight, 1e-5, round_input)
    assert y.dtype == ref.dtype and y.shape == ref.shape
    normalised = w_dtype if round_input else x_dtype  # x̂ is rounded to it, y to ref.dtype
    tol = max(TOL[normalised], TOL[ref.dtype])
    assert rel_error(y, ref) <= tol
    exact = oracle(x, weight, 1e-5, round_input)
    # Triton's interpreter (numpy has no bfloat16) truncates float32 -> bfloat16 where the GPU rounds to nearest
    # even: up to twice the rounding error, all of one sign.
    truncates = TRITON_DEVICE == "cpu" and torch.bfloat16 in (normalised, ref.dtype)
    assert rel_error(y, exact) <= (4 if truncates else 1.5) * max(rel_error(ref, exact), tol / 8)


@pytest.mark.parametrize("residual_dtype,branch_dtype", [(torch.float32, torch.bfloat16),
                                                         (torch.float32, torch.float32),
                                                         (torch.bfloat16, torch.bfloat16),
                                                         (torch.float16, torch.float16)])
@pytest.mark.parametrize("round_input", [False, True])
def test_add_then_norm_equals_the_add_then_the_norm(residual_dtype, branch_dtype, round_input):
    """add_rms_norm: the sum equals torch's `residual + branch` bit for bit (one rounding of the float32 sum to
    the residual's dtype; within one bfloat16 ulp in the interpreter), and its norm equals the kernel's norm of
    that sum bit for bit."""
    from mambalab.layers.residual import add_residual
    from mambalab.ops.triton.norm import add_rms_norm, rms_norm

    torch.manual_seed(3)
    residual = (torch.randn(5, 37) * 3).to(device=TRITON_DEVICE, dtype=residual_dtype)
    branch = torch.randn(5, 37).to(device=TRITON_DEVICE, dtype=branch_dtype)
    weight = (1 + 0.1 * torch.randn(37)).to(device=TRITON_DEVICE, dtype=torch.bfloat16)
    total, y = add_rms_norm(residual, branch, weight, 1e-5, round_input)
    expected = add_residual(residual, branch)
    assert total.dtype == residual_dtype
    if TRITON_DEVICE == "cpu" and residual_dtype == torch.bfloat16:  # the interpreter truncates to bfloat16
        assert ((total.float() - expected.float()).abs() <= expected.float().abs() * 2**-7).all()
    else:
        assert torch.equal(total, expected)
    assert torch.equal(y, rms_norm(total, weight, 1e-5, round_input))


def test_add_then_norm_strided_empty_and_refused_inputs():
    from mambalab.ops.triton.norm import add_rms_norm

    weight = torch.rand(40, device=TRITON_DEVICE) + 0.5
    residual = torch.randn(40, 6, device=TRITON_DEVICE).t()  # (6, 40), last dim not contiguous
    branch = torch.randn(6, 80, device=TRITON_DEVICE)[:, ::2]  # (6, 40), strided
    total, y = add_rms_norm(residual, branch, weight, 1e-6, False)
    assert torch.equal(total, residual + branch)
    assert rel_error(y, torch_norm(residual + branch, weight, 1e-6, False)) <= 2e-6
    total, y = add_rms_norm(torch.empty(0, 3, 40, device=TRITON_DEVICE), torch.empty(0, 3, 40, device=TRITON_DEVICE),
                            weight, 1e-6, False)
    assert total.shape == y.shape == (0, 3, 40)
    with pytest.raises(ValueError, match="promotes"):  # a float32 branch onto a bf16 residual is rounded first
        add_rms_norm(residual.bfloat16(), branch, weight, 1e-6, False)
    with pytest.raises(ValueError, match="shape"):
        add_rms_norm(residual, branch[:3], weight, 1e-6, False)


def test_strided_and_empty_inputs():
    from mambalab.ops.triton.norm import rms_norm

    base = torch.randn(40, 6, device=TRITON_DEVICE)
    strided = base.t()  # (6, 40), last dim not contiguous
    weight = torch.rand(40, device=TRITON_DEVICE) + 0.5
    assert rel_error(rms_norm(strided, weight, 1e-6, False), torch_norm(strided, weight, 1e-6, False)) <= 2e-6
    empty = rms_norm(torch.empty(0, 3, 40, device=TRITON_DEVICE), weight, 1e-6, False)
    assert empty.shape == (0, 3, 40)


def test_module_uses_the_kernel_only_where_no_gradient_is_recorded_on_cuda(monkeypatch):
    """CPU: the torch composition. CUDA: the Triton kernel where no gradient is recorded, the compiled
    composition in float32 training, the composition in 16-bit training."""
    from mambalab.layers import norm as norm_module
    from mambalab.ops.triton import norm as kernel_module

    calls = []
    composition = norm_module.rms_norm_composition
    monkeypatch.setattr(kernel_module, "rms_norm", lambda *a: calls.append("triton") or composition(*a))
    fused_add = kernel_module.add_rms_norm
    monkeypatch.setattr(kernel_module, "add_rms_norm", lambda *a: calls.append("add") or fused_add(*a))
    monkeypatch.setattr(norm_module, "_compiled_composition", lambda: lambda *a: calls.append("compiled") or composition(*a))
    norm = RMSNorm(8)
    x = torch.randn(2, 8, requires_grad=True)
    norm(x)
    with torch.no_grad():
        norm(x)
        norm.add_then_norm(x, x)
    assert calls == []  # CPU tensors: the composition
    if torch.cuda.is_available():
        norm, x = norm.cuda(), x.cuda()
        norm(x)  # a gradient is recorded, float32: compiled
        y = norm.to(torch.bfloat16)(x.bfloat16())  # a 16-bit model in training: the composition
        assert y.requires_grad  # the Triton kernel has no backward: it must not take a recorded call
        with torch.no_grad():
            norm(x.bfloat16())
            norm.add_then_norm(x.float(), x.bfloat16())  # float32 residual + bf16 branch: the fused add
        norm.add_then_norm(x.float(), x.bfloat16())  # recorded: the add, then the composition
        assert calls == ["compiled", "triton", "add"]