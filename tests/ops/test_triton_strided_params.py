"""The Triton backends take 1-D per-head / per-channel parameters (A, D, biases) of any layout: a strided view
or a stride-0 expansion gives what the reference gives, forward and (ops with a backward) gradient of the
original tensors. The kernels read these parameters without a stride; the wrappers hand them over contiguous.
CPU runs use Triton's interpreter (tiny shapes)."""

from __future__ import annotations

import pytest
import torch

from mambalab import selective_scan, ssd_scan
from mambalab.ops.causal_conv1d import causal_conv1d, causal_conv1d_update
from mambalab.ops.ssd import ssd_state_update
from mambalab.ops.state_update import mixer_step, selective_state_update
from tests.conftest import rel_error
from tests.ops.conftest import TRITON_DEVICE as DEVICE

pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("triton_kernels")]


def _randn(*shape):
    return torch.randn(*shape, device=DEVICE)


def _rand(*shape):
    return torch.rand(*shape, device=DEVICE)


def _stepped(op, state_name):
    """A decode step that updates a copy of its state: (y, the updated state), so both are compared."""

    def run(backend, **kw):
        state = kw.pop(state_name).clone()
        return op(**{state_name: state}, **kw, backend=backend), state

    return run


def _ssd_scan():
    b, l, h, p, g, n = 1, 5, 4, 3, 2, 4
    tensors = {"x": _randn(b, l, h, p), "dt": _rand(b, l, h) * 0.5, "B": _randn(b, l, g, n), "C": _randn(b, l, g, n)}
    params = {"A": -(_rand(h) + 0.1), "dt_bias": _rand(h) * 0.3, "D": _randn(h)}
    return lambda backend, **kw: ssd_scan(**kw, dt_softplus=True, backend=backend), tensors, params


def _ssd_state_update():
    b, h, p, g, n = 2, 4, 3, 2, 4
    tensors = {"state": _randn(b, h, p, n), "x_t": _randn(b, h, p), "dt_t": _rand(b, h), "B_t": _randn(b, g, n),
               "C_t": _randn(b, g, n)}
    params = {"A": -(_rand(h) + 0.1), "dt_bias": _rand(h) * 0.3, "D": _randn(h)}
    return _stepped(ssd_state_update, "state"), tensors, params


def _selective_scan():
    b, d, l, n = 2, 4, 6, 3
    tensors = {"u": _randn(b, d, l), "delta": _rand(b, d, l) * 0.5, "A": -(_rand(d, n) + 0.1), "B": _randn(b, n, l),
               "C": _randn(b, n, l)}
    params = {"D": _randn(d), "delta_bias": _rand(d) * 0.3}
    return lambda backend, **kw: selective_scan(**kw, delta_softplus=True, backend=backend), tensors, params


def _selective_state_update():
    b, d, n = 2, 4, 3
    tensors = {"state": _randn(b, d, n), "x_t": _randn(b, d), "dt_t": _rand(b, d), "A": -(_rand(d, n) + 0.1),
               "B_t": _randn(b, n), "C_t": _randn(b, n), "z_t": _randn(b, d)}
    params = {"D": _randn(d), "dt_bias": _rand(d) * 0.3}
    return _stepped(selective_state_update, "state"), tensors, params


def _causal_conv1d():
    tensors = {"x": _randn(2, 4, 6), "weight": _randn(4, 3)}
    return lambda backend, **kw: causal_conv1d(**kw, activation="silu", backend=backend), tensors, {"bias": _randn(4)}


def _causal_conv1d_update():
    tensors = {"x_t": _randn(2, 4), "conv_state": _randn(2, 4, 3), "weight": _randn(4, 3)}
    return _stepped(causal_conv1d_update, "conv_state"), tensors, {"bias": _randn(4)}


def _mixer_step():
    b, d, n, r, w = 2, 4, 3, 2, 3
    tensors = {"x_t": _randn(b, d), "z_t": _randn(b, d), "conv_state": _randn(b, d, w), "ssm_state": _randn(b, d, n),
               "conv_weight": _randn(d, w), "x_proj_weight": _randn(r + 2 * n, d) / d**0.5,
               "dt_proj_weight": _randn(d, r) / r**0.5, "A_log": _randn(d, n) * 0.5}
    params = {"conv_bias": _randn(d), "dt_proj_bias": _randn(d) * 0.5 - 1.0, "D": _randn(d)}

    def run(backend, **kw):
        states = {k: kw.pop(k).clone() for k in ("conv_state", "ssm_state")}
        return mixer_step(**kw, **states, backend=backend), states["conv_state"], states["ssm_state"]

    return run, tensors, params


FORWARD_CASES = {"ssd_scan": _ssd_scan, "ssd_state_update": _ssd_state_update, "selective_scan": _selective_scan,
                 "selective_state_update": _selective_state_update, "causal_conv1d": _causal_conv1d,
                 "causal_conv1d_update": _causal_conv1d_update, "mixer_step": _mixer_step}
GRADIENT_CASES = ("ssd_scan", "selective_scan", "causal_conv1d")


def _laid_out(t, layout):
    """t's values as a stride-2 view into a larger buffer, or t[0] expanded (stride 0) to t's shape."""
    if layout == "strided":
        return torch.stack([t, torch.full_like(t, -9.0)], 1).flatten()[::2]
    return t[0].expand(t.shape)


def _outputs(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("layout", ["strided", "expanded"])
@pytest.mark.parametrize("case", FORWARD_CASES)
def test_non_contiguous_params_forward(case, layout):
    torch.manual_seed(0)
    run, tensors, params = FORWARD_CASES[case]()
    views = {k: _laid_out(v, layout) for k, v in params.items()}
    assert not any(v.is_contiguous() for v in views.values())
    fused = _outputs(run("triton", **tensors, **views))
    ref = _outputs(run("reference", **tensors, **views))
    for i, (out, expected) in enumerate(zip(fused, ref, strict=True)):
        assert rel_error(out, expected) <= 1e-5, (case, layout, i)


@pytest.mark.parametrize("layout", ["strided", "expanded"])
@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_non_contiguous_params_gradient(case, layout):
    """Gradients reach the original (contiguous, leaf) parameters through the views."""
    torch.manual_seed(0)
    run, tensors, params = FORWARD_CASES[case]()

    def grads(backend):
        leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
        y = run(backend, **tensors, **{k: _laid_out(v, layout) for k, v in leaves.items()})
        weights = torch.linspace(-1, 1, y.numel(), device=DEVICE).view(y.shape)
        return torch.autograd.grad((y * weights).sum(), list(leaves.values()))

    for name, fused, ref in zip(params, grads("triton"), grads("reference"), strict=True):
        assert rel_error(fused, ref) <= 1e-4, (case, layout, name)
