"""The kernels' own softplus and sigmoid (mambalab/ops/triton/common.py) against torch in float64, over the
range Δ and the gate see and beyond. CPU runs use Triton's interpreter (numpy's exp2; the GPU's ex2.approx adds
≤ 2 ulp, checked by benchmarks/scan_gpu.py at full size)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import rel_error
from tests.ops.conftest import TRITON_DEVICE as DEVICE

pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("triton_kernels")]


def _apply(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(softplus(x), sigmoid(x)) by the kernels' helpers, elementwise over a float32 vector."""
    import triton

    from tests.ops.triton_math_kernel import softplus_sigmoid_kernel  # inside the fixture: interpreted on CPU

    x = x.to(DEVICE, torch.float32).contiguous()
    sp, sig = torch.full_like(x, float("nan")), torch.full_like(x, float("nan"))
    softplus_sigmoid_kernel[(triton.cdiv(x.numel(), 1024),)](x, sp, sig, x.numel(), BLOCK=1024)
    return sp.cpu(), sig.cpu()


def _pointwise_rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).abs() / ref.abs()).max().item()


def test_softplus_and_sigmoid_match_torch():
    x = torch.cat([torch.linspace(-40, 40, 20001), torch.randn(5000) * 8,
                   torch.tensor([0.0, 1e-7, -1e-7, 20.0, 20.5, -20.5, 60.0, -60.0])]).float()
    sp, sig = _apply(x)
    x64 = x.double()
    sp_ref, sig_ref = F.softplus(x64), torch.sigmoid(x64)
    assert torch.isfinite(sp).all() and torch.isfinite(sig).all()
    typical = x64.abs() <= 10  # softplus inputs of a Mamba layer's Δ lie around -7..-2
    assert _pointwise_rel(sp[typical], sp_ref[typical]) <= 1e-6
    assert _pointwise_rel(sp[x64 > 10], sp_ref[x64 > 10]) <= 1e-6
    assert _pointwise_rel(sp, sp_ref) <= 3e-6  # far left: the float32 exponent of e^-|x| (docstring)
    assert _pointwise_rel(sig[x64 > -10], sig_ref[x64 > -10]) <= 1e-6
    assert rel_error(sig, sig_ref) <= 1e-6


def test_softplus_saturates_without_overflow():
    sp, sig = _apply(torch.tensor([-200.0, -90.0, 90.0, 200.0, 3e38]))
    assert torch.equal(sp[2:], torch.tensor([90.0, 200.0, 3e38]))
    assert (sp[:2] >= 0).all() and (sp[:2] < 1e-38).all()
    assert torch.equal(sig, torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]))
