"""The training path's CUDA-only pieces against their references (skipped without CUDA): the compiled RMSNorm
against the torch composition, and the fused head + cross-entropy under bf16 autocast against float64."""

import math

import pytest
import torch
import torch.nn.functional as F

from mambalab.layers.norm import RMSNorm, rms_norm_composition
from mambalab.ops.linear_cross_entropy import linear_cross_entropy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def rel_err(a, b):
    err = ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()
    assert math.isfinite(err), "NaN"
    return err


@pytest.mark.parametrize("shape", [(2, 37, 768), (3, 5, 130)])
def test_compiled_rms_norm_matches_composition(shape):
    norm = RMSNorm(shape[-1]).cuda()
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(*shape, device="cuda", requires_grad=True)
    y = norm(x, round_to_weight_dtype=True)  # records a gradient: the compiled path
    dy = torch.randn_like(y)
    dx, dw = torch.autograd.grad(y, (x, norm.weight), dy)
    x64, w64 = x.detach().double().requires_grad_(), norm.weight.detach().double().requires_grad_()
    y64 = rms_norm_composition(x64, w64, norm.eps, round_to_weight_dtype=True)
    dx64, dw64 = torch.autograd.grad(y64, (x64, w64), dy.double())
    assert rel_err(y, y64) < 1e-6 and rel_err(dx, dx64) < 1e-5 and rel_err(dw, dw64) < 1e-5


def test_fused_cross_entropy_under_autocast():
    tokens, d, vocab = 3000, 256, 5000
    hidden = torch.randn(tokens, d, device="cuda", requires_grad=True)
    weight = (torch.randn(vocab + 8, d, device="cuda") / d**0.5).requires_grad_()
    labels = torch.randint(vocab, (tokens,), device="cuda")
    labels[::7] = -100
    with torch.autocast("cuda", dtype=torch.bfloat16):
        total, count = linear_cross_entropy(hidden, weight, labels, vocab)
    total.backward()
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ref = F.cross_entropy(h64 @ w64[:vocab].t(), labels, ignore_index=-100, reduction="sum")
    ref.backward()
    assert int(count) == int((labels != -100).sum())
    assert rel_err(total, ref) < 5e-3 and rel_err(hidden.grad, h64.grad) < 2e-2 and rel_err(weight.grad, w64.grad) < 2e-2
