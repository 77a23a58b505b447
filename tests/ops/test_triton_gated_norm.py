"""The fused gated RMSNorm kernels of Mamba-2 (mambalab/ops/triton/gated_norm.py), forward and backward,
against `GatedRMSNorm`'s torch composition and a float64 oracle: dtype pairings, odd group sizes, several
groups, strided and empty inputs, gradients of y, z and weight; outputs and gradients poisoned with NaN
first. On CPU the kernels run in Triton's interpreter."""

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


def test_module_uses_the_kernels_wherever_they_run_gradients_or_not(monkeypatch):
    from mambalab.ops import triton as kernels

    norm = GatedRMSNorm(8, 4)
    y = torch.randn(2, 8, requires_grad=True)
    assert not norm._fused(y)  # CPU tensors: the composition
    monkeypatch.setattr(kernels, "runs_on", lambda device: True)  # as on CUDA with triton
    assert norm._fused(y)  # a gradient is recorded: the kernels all the same
    assert not norm._fused(y.double())  # float64: the composition, in float64
    assert not norm.double()._fused(y)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not norm.float()._fused(y)  # inside torch.compile: the composition, which inductor fuses


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


# Gradients against the float64 oracle (same rounded inputs, same output gradient). The kernels compute in
# float32 and round each gradient once to its dtype: norm-wise within bfloat16's unit roundoff 2^-8 where the
# GPU rounds to nearest, 2^-7 where the interpreter truncates (an error under one ulp); float32 sums over a
# group and over the rows stay near 1e-7 at these sizes (1e-5 is 100× that, and a wrong term is O(1)).
def grad_tol(dtype):
    if dtype == torch.float32:
        return 1e-5
    return (2**-7 if TRITON_DEVICE == "cpu" else 2**-8) + 1e-5


def oracle_gradients(y, z, weight, group_size, eps, dout):
    leaves = [t.detach().double().requires_grad_() for t in (y, z, weight)]
    return torch.autograd.grad(oracle(*leaves, group_size, eps), leaves, dout.double())


def fused_gradients(y, z, weight, group_size, eps, dout):
    """out and (dy, dz, dweight) through the kernels' autograd function."""
    from mambalab.ops.triton.gated_norm import gated_rms_norm

    leaves = [t.detach().requires_grad_() for t in (y, z, weight)]
    out = gated_rms_norm(*leaves, group_size, eps)
    assert out.grad_fn is not None and "GatedRMSNorm" in type(out.grad_fn).__name__
    return out, torch.autograd.grad(out, leaves, dout)


def assert_gradients_match(grads, y, z, weight, group_size, eps, dout):
    for grad, exact, t in zip(grads, oracle_gradients(y, z, weight, group_size, eps, dout), (y, z, weight)):
        assert grad.dtype == t.dtype and grad.shape == t.shape
        assert rel_error(grad, exact) <= grad_tol(t.dtype), (t.dtype, rel_error(grad, exact))


def random_inputs(shape, y_dtype, w_dtype, device=TRITON_DEVICE):
    y = (torch.randn(shape) * 3).to(device=device, dtype=y_dtype)
    z = (torch.randn(shape) * 3).to(device=device, dtype=y_dtype)
    weight = (1 + 0.1 * torch.randn(shape[-1])).to(device=device, dtype=w_dtype)
    return y, z, weight


@pytest.mark.parametrize("y_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("shape", "group_size"), [((3, 2 * 37), 37), ((2, 5, 96), 32)])
def test_gradients_match_the_float64_oracle(y_dtype, w_dtype, shape, group_size):
    from mambalab.ops.triton.gated_norm import gated_rms_norm

    y, z, weight = random_inputs(shape, y_dtype, w_dtype)
    dout = torch.randn(shape, device=TRITON_DEVICE).to(torch.promote_types(w_dtype, y_dtype))
    out, grads = fused_gradients(y, z, weight, group_size, 1e-5, dout)
    assert torch.equal(out, gated_rms_norm(y, z, weight, group_size, 1e-5))  # training forward == inference
    assert_gradients_match(grads, y, z, weight, group_size, 1e-5, dout)


def test_backward_programs_take_runs_of_rows_with_a_ragged_end(monkeypatch):
    """10 rows over at most 3 programs: runs of 4 rows, the last program 2 rows past the end."""
    from mambalab.ops.triton import gated_norm

    monkeypatch.setattr(gated_norm, "ROW_PROGRAMS", 3)
    y, z, weight = random_inputs((2, 5, 3 * 7), torch.float32, torch.float32)
    dout = torch.randn(2, 5, 21, device=TRITON_DEVICE)
    _, grads = fused_gradients(y, z, weight, 7, 1e-5, dout)
    assert_gradients_match(grads, y, z, weight, 7, 1e-5, dout)


def test_gradients_of_strided_inputs():
    """z a column slice of in_proj's output (row stride > d), as the mixer passes it; y with a non-unit channel
    stride; the output's gradient transposed too."""
    projected = torch.randn(2, 3, 40 + 17, device=TRITON_DEVICE)
    z = projected[..., :40]  # (b, l, d), row stride 57
    y = torch.randn(40, 3, 2, device=TRITON_DEVICE).permute(2, 1, 0)  # (b, l, d), channel stride 6
    dout = torch.randn(40, 3, 2, device=TRITON_DEVICE).permute(2, 1, 0)
    weight = torch.rand(40, device=TRITON_DEVICE) + 0.5
    _, grads = fused_gradients(y, z, weight, 20, 1e-6, dout)
    assert_gradients_match(grads, y, z, weight, 20, 1e-6, dout)


def test_gradients_of_empty_inputs():
    empty = torch.empty(0, 3, 40, device=TRITON_DEVICE)
    weight = torch.rand(40, device=TRITON_DEVICE)
    out, (dy, dz, dweight) = fused_gradients(empty, empty, weight, 20, 1e-6, empty)
    assert out.shape == dy.shape == dz.shape == (0, 3, 40)
    assert torch.equal(dweight, torch.zeros_like(weight))


@pytest.mark.parametrize("y_dtype", [torch.float32, torch.bfloat16])
def test_module_trains_through_the_kernels(monkeypatch, y_dtype):
    """GatedRMSNorm as the mixer calls it in training (autocast: bfloat16 y, z and float32 weight): the
    kernels' autograd function, gradients as the oracle's."""
    from mambalab.ops import triton as kernels

    monkeypatch.setattr(kernels, "runs_on", lambda device: device.type == TRITON_DEVICE)
    norm = GatedRMSNorm(3 * 37, 37).to(TRITON_DEVICE)
    norm.weight.data.uniform_(0.5, 1.5)
    y, z, _ = random_inputs((2, 3, 3 * 37), y_dtype, torch.float32)
    dout = torch.randn(2, 3, 3 * 37, device=TRITON_DEVICE)
    y.requires_grad_(), z.requires_grad_()
    out = norm(y, z)
    assert "GatedRMSNorm" in type(out.grad_fn).__name__
    out.backward(dout)
    grads = (y.grad, z.grad, norm.weight.grad)
    assert_gradients_match(grads, y, z, norm.weight, 37, norm.eps, dout)


@pytest.mark.skipif(TRITON_DEVICE != "cuda", reason="the compiled kernels at a model's width need a GPU")
@pytest.mark.parametrize("group_size", [1536, 192])
def test_gradients_at_mamba2_130m_width_on_gpu(group_size):
    """d_inner 1536 (one group, as mamba2-130m, and eight) over 2 × 1024 rows: the 2048-channel blocks with 8
    warps and runs of 4 rows per backward program that the small shapes above do not reach."""
    y, z, weight = random_inputs((2, 1024, 1536), torch.bfloat16, torch.float32)
    dout = torch.randn(2, 1024, 1536, device=TRITON_DEVICE)
    _, grads = fused_gradients(y, z, weight, group_size, 1e-5, dout)
    assert_gradients_match(grads, y, z, weight, group_size, 1e-5, dout)


def test_autocast_output_in_autocast_dtype_as_out_proj_would_cast_it():
    """Under autocast the layer writes its output in autocast's dtype (what out_proj casts it to anyway):
    the kernels' bf16 output equals the float32 output cast to bf16 up to one rounding, the composition's is
    exactly that cast, and the gradients through the bf16 output equal those through the float32 one fed the
    same (bf16) output gradient."""
    from mambalab.ops.triton.gated_norm import gated_rms_norm

    y, z, weight = random_inputs((2, 3, 64), torch.bfloat16, torch.float32)
    full = gated_rms_norm(y, z, weight, 32, 1e-5)  # float32
    half = gated_rms_norm(y, z, weight, 32, 1e-5, torch.bfloat16)
    assert full.dtype == torch.float32 and half.dtype == torch.bfloat16
    ulp = 2**-7 if TRITON_DEVICE == "cpu" else 2**-8  # the interpreter truncates where the GPU rounds
    assert ((half.float() - full.to(torch.bfloat16).float()).abs() <= ulp * full.abs()).all()
    dout = torch.randn(2, 3, 64, device=TRITON_DEVICE).to(torch.bfloat16)
    leaves = [t.detach().requires_grad_() for t in (y, z, weight)]
    through_half = torch.autograd.grad(gated_rms_norm(*leaves, 32, 1e-5, torch.bfloat16), leaves, dout)
    through_full = torch.autograd.grad(gated_rms_norm(*leaves, 32, 1e-5), leaves, dout.float())
    for a, b in zip(through_half, through_full, strict=True):
        assert torch.equal(a, b)

    norm = GatedRMSNorm(64, 32).to(TRITON_DEVICE)
    norm.weight.data.copy_(weight)
    with torch.no_grad():
        plain = norm(y, z)
        with torch.autocast(torch.device(TRITON_DEVICE).type, dtype=torch.bfloat16):
            cast = norm(y, z)
    assert plain.dtype == torch.float32 and cast.dtype == torch.bfloat16
    assert ((cast.float() - plain.to(torch.bfloat16).float()).abs() <= ulp * plain.abs()).all()
    norm._fused = lambda y: False  # the composition (CPU, float64, torch.compile) under autocast too
    with torch.no_grad(), torch.autocast(torch.device(TRITON_DEVICE).type, dtype=torch.bfloat16):
        composed = norm(y, z)
    assert composed.dtype == torch.bfloat16 and torch.equal(composed, norm(y, z).to(torch.bfloat16))
