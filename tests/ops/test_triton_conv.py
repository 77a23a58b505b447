"""The fused causal conv1d (Triton) against `causal_conv1d` in float64: output, final state and the gradients of
x, weight, bias and the initial state; outputs poisoned with NaN. CPU runs use Triton's interpreter."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from mambalab.ops.causal_conv1d import causal_conv1d
from tests.conftest import rel_error
from tests.ops.conftest import TRITON_DEVICE as DEVICE

pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("triton_kernels", "poisoned_kernel_outputs")]

causal_conv1d_fused = partial(causal_conv1d, backend="triton")


def make_inputs(batch, dim, length, width=4, bias=True, state=True, channels_last=False, dtype=torch.float32):
    """Fresh inputs; channels_last gives x as the mixer sees it, a (b, d, l) view of a (b, l, 2d) tensor."""
    if channels_last:
        x = torch.randn(batch, length, 2 * dim).transpose(1, 2)[:, :dim]
    else:
        x = torch.randn(batch, dim, length)
    return {"x": x.to(dtype), "weight": torch.randn(dim, width), "bias": torch.randn(dim) if bias else None,
            "initial_state": torch.randn(batch, dim, width) if state else None}


def compare(args, activation, tol):
    """Fused (on DEVICE) vs torch (float64, CPU): y, final state, and the gradients of a weighted sum of both."""
    def run(fn, inputs):
        leaves = {k: v.requires_grad_(True) if v is not None else None for k, v in inputs.items()}
        y, final = fn(**leaves, activation=activation, return_final_state=True)
        gy = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view(y.shape).to(y)
        gf = torch.linspace(1, -2, final.numel(), dtype=torch.float64).view(final.shape).to(final)
        present = [v for v in leaves.values() if v is not None]
        return (y, final, *torch.autograd.grad((y * gy).sum() + (final * gf).sum(), present))

    fused = run(causal_conv1d_fused, {k: v.detach().to(DEVICE) if v is not None else None for k, v in args.items()})
    ref = run(causal_conv1d, {k: v.detach().double() if v is not None else None for k, v in args.items()})
    for name, out, expected in zip(["y", "final_state", *[k for k, v in args.items() if v is not None]], fused, ref):
        assert out.dtype == args.get(name, out).dtype or name in ("y", "final_state")
        assert rel_error(out.cpu(), expected) <= tol, name


@pytest.mark.parametrize("length", [1, 3, 4, 70, 130])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_matches_torch_with_state_and_bias(length, activation):
    """Lengths under, at and past the width, and spanning two or three 64-step blocks; 70 channels: a partial
    channel block."""
    compare(make_inputs(2, 70, length), activation, 1e-5)


@pytest.mark.parametrize(("bias", "state"), [(False, False), (True, False), (False, True)])
def test_optional_bias_and_state(bias, state):
    compare(make_inputs(3, 9, 37, bias=bias, state=state), "silu", 1e-5)


def test_channels_last_view_and_width_3():
    compare(make_inputs(2, 16, 65, width=3, channels_last=True), "silu", 1e-5)


@pytest.mark.parametrize("channels_last", [True, False])
def test_output_and_gradient_follow_the_input_layout(channels_last):
    """y and dx take x's layout (the mixer's channels-last in_proj view gives a channels-last y, which x_proj
    reads without a copy); the custom ops' fakes report the same strides as the kernels."""
    from mambalab.ops.causal_conv1d.triton_conv import _conv_bwd_op, _conv_fwd_op

    args = {k: v.to(DEVICE) if v is not None else None
            for k, v in make_inputs(2, 16, 33, channels_last=channels_last).items()}
    x = args["x"].requires_grad_(True)
    y = causal_conv1d_fused(x, args["weight"], args["bias"], "silu")
    (dx,) = torch.autograd.grad(y, [x], torch.randn_like(y))
    for t in (y, dx):
        _, d, length = t.shape
        assert t.stride() == ((length * d, 1, d) if channels_last else (d * length, length, 1)), t.stride()
    torch.library.opcheck(_conv_fwd_op, (x.detach(), args["weight"], args["bias"], None, True),
                          test_utils=("test_faketensor",))
    torch.library.opcheck(_conv_bwd_op, (torch.randn_like(y), x.detach(), args["weight"], args["bias"], None, True),
                          test_utils=("test_faketensor",))


def test_bfloat16_input():
    compare(make_inputs(2, 8, 33, dtype=torch.bfloat16), "silu", 1e-2)


def test_continuation_matches_one_pass():
    args = {k: v.to(DEVICE) if v is not None else None for k, v in make_inputs(2, 12, 90).items()}
    y, final = causal_conv1d_fused(**args, activation="silu", return_final_state=True)
    split = 41
    y1, s1 = causal_conv1d_fused(args["x"][..., :split], args["weight"], args["bias"], "silu", args["initial_state"],
                                 return_final_state=True)
    y2, s2 = causal_conv1d_fused(args["x"][..., split:], args["weight"], args["bias"], "silu", s1,
                                 return_final_state=True)
    assert rel_error(torch.cat([y1, y2], -1), y) <= 1e-6 and torch.equal(s2, final)


def test_empty_sequence_and_errors():
    x = torch.randn(1, 3, 0, device=DEVICE)
    state = torch.randn(1, 3, 4, device=DEVICE)
    y, final = causal_conv1d_fused(x, torch.randn(3, 4, device=DEVICE), initial_state=state, return_final_state=True)
    assert y.shape == (1, 3, 0) and torch.equal(final, state)
    with pytest.raises(ValueError, match=r"initial_state must be \(1, 3, 4\)"):
        causal_conv1d_fused(torch.randn(1, 3, 5, device=DEVICE), torch.randn(3, 4, device=DEVICE),
                            initial_state=torch.randn(1, 3, 2, device=DEVICE))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_fused(torch.randn(1, 3, 5, device=DEVICE), torch.randn(3, 4, device=DEVICE), activation="relu")


def test_torch_compile_has_no_graph_break():
    args = {k: v.to(DEVICE) if v is not None else None for k, v in make_inputs(1, 8, 20).items()}
    compiled = torch.compile(lambda x, w, b: causal_conv1d_fused(x, w, b, "silu"), fullgraph=True)
    assert rel_error(compiled(args["x"], args["weight"], args["bias"]),
                     causal_conv1d(args["x"], args["weight"], args["bias"], "silu")) <= 1e-6
