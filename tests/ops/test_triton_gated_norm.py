"""The fused gated RMSNorm kernel of Mamba-2 (mambalab/ops/triton/gated_norm.py) against `GatedRMSNorm`'s
torch composition and a float64 oracle: dtype pairings, odd group sizes, strided and empty inputs; outputs
poisoned with NaN first. On CPU the kernel runs in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mambalab.layers.mamba2 import GatedRMSNorm
from tests.conftest import rel_error
from tests.ops.conftest import TRITON_DEVICE

pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("triton_kernels", "poisoned_kernel_outputs")]

TOL = {torch.float32: 2e-6, torch.bfloat16: 8e-3}  # one rounding to the dtype (see test_triton_norm.py)


def torch_norm(y, z, weight, group_size, eps):
    norm = GatedRMSNorm(weight.shape[0], group_size, eps).to(device=weight.device, dtype=weight.dtype)
    norm.weight.data.copy_(weight)
    with torch.no_grad():
        return norm(y, z)


def oracle(y, z, weight, group_size, eps):
    g = (y.double() * F.silu(z.double())).unflatten(-1, (-1, group_size))
    return weight.double() * (g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2)


@pytest.mark.parametrize("y_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("shape", "group_size"), [((3, 2 * 37), 37), ((2, 5, 768), 256), ((4, 96), 96)])
def test_matches_the_torch_composition(y_dtype, w_dtype, shape, group_size):
    from mambalab.ops.triton.gated_norm import gated_rms_norm

    y = (torch.randn(shape) * 3).to(device=TRITON_DEVICE, dtype=y_dtype)
    z = (torch.randn(shape) * 3).to(device=TRITON_DEVICE, dtype=y_dtype)
    weight = (1 + 0.1 * torch.randn(shape[-1])).to(device=TRITON_DEVICE, dtype=w_dtype)
    out, ref = gated_rms_norm(y, z, weight, group_size, 1e-5), torch_norm(y, z, weight, group_size, 1e-5)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    tol = max(TOL[y_dtype], TOL[ref.dtype])
    assert rel_error(out, ref) <= tol
    exact = oracle(y, z, weight, group_size, 1e-5)
    truncates = TRITON_DEVICE == "cpu" and torch.bfloat16 in (y_dtype, ref.dtype)  # the interpreter truncates
    assert rel_error(out, exact) <= (4 if truncates else 1.5) * max(rel_error(ref, exact), tol / 8)


def test_strided_and_empty_inputs():
    """z as the mixer passes it: a column slice of in_proj's output (row stride larger than d)."""
    from mambalab.ops.triton.gated_norm import gated_rms_norm

    projected = torch.randn(6, 40 + 17, device=TRITON_DEVICE)
    z, y = projected[:, :40], torch.randn(40, 6, device=TRITON_DEVICE).t()  # y: last dim not contiguous
    weight = torch.rand(40, device=TRITON_DEVICE) + 0.5
    assert rel_error(gated_rms_norm(y, z, weight, 20, 1e-6), torch_norm(y, z, weight, 20, 1e-6)) <= 2e-6
    empty = torch.empty(0, 3, 40, device=TRITON_DEVICE)
    assert gated_rms_norm(empty, empty, weight, 20, 1e-6).shape == (0, 3, 40)


def test_module_uses_the_kernel_only_where_no_gradient_is_recorded_on_cuda():
    norm = GatedRMSNorm(8, 4)
    y, z = torch.randn(2, 8, requires_grad=True), torch.randn(2, 8)
    assert not norm._fused(y, z)  # CPU tensors: the composition
    if torch.cuda.is_available():
        norm, y, z = norm.cuda(), y.cuda(), z.cuda()
        assert not norm._fused(y, z)  # a gradient is recorded
        with torch.no_grad():
            assert norm._fused(y, z)


@pytest.mark.parametrize(("z_shape", "w_shape", "group_size", "message"), [
    ((3, 7), (8,), 4, r"z must have y's shape \(3, 8\), got \(3, 7\)"),
    ((3, 8), (6,), 4, r"weight must be \(d=8,\), got \(6,\)"),
    ((3, 8), (8,), 3, "group_size must be a positive int dividing d=8, got 3"),
    ((3, 8), (8,), 0, "group_size must be a positive int dividing d=8, got 0"),
])
def test_bad_arguments_are_named(z_shape, w_shape, group_size, message):
    from mambalab.errors import InputError
    from mambalab.ops.triton.gated_norm import gated_rms_norm

    y = torch.randn(3, 8, device=TRITON_DEVICE)
    z, weight = torch.randn(z_shape, device=TRITON_DEVICE), torch.ones(w_shape, device=TRITON_DEVICE)
    with pytest.raises(InputError, match=message):
        gated_rms_norm(y, z, weight, group_size, 1e-5)
