"""causal_conv1d against a direct loop; final state, continuation and the one-step update."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mambalab.ops.causal_conv1d import causal_conv1d, causal_conv1d_update
from tests.conftest import rel_error


def conv_loop(x, weight, bias, activation, initial_state):
    """y[:, i, t] = bias[i] + Σ_k weight[i, k] x[:, i, t - (w-1) + k], reading before 0 from the state."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    history = torch.zeros(batch, dim, width, dtype=x.dtype) if initial_state is None else initial_state
    full = torch.cat([history, x], dim=-1)  # position t of x is column t + width
    y = torch.empty_like(x)
    for t in range(length):
        window = full[:, :, t + 1 : t + 1 + width]  # inputs t-w+1 .. t
        y[:, :, t] = (window * weight).sum(-1) + (0 if bias is None else bias)
    return F.silu(y) if activation == "silu" else y


@pytest.mark.parametrize("length", [1, 3, 4, 50])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_direct_loop_and_final_state(length, activation, with_state, with_bias):
    batch, dim, width = 2, 5, 4
    x = torch.randn(batch, dim, length, dtype=torch.float64)
    weight = torch.randn(dim, width, dtype=torch.float64)
    bias = torch.randn(dim, dtype=torch.float64) if with_bias else None
    state = torch.randn(batch, dim, width, dtype=torch.float64) if with_state else None
    y, final = causal_conv1d(x, weight, bias, activation, initial_state=state, return_final_state=True)
    assert rel_error(y, conv_loop(x, weight, bias, activation, state)) <= 1e-12
    history = torch.zeros(batch, dim, width, dtype=x.dtype) if state is None else state
    assert torch.equal(final, torch.cat([history, x], dim=-1)[:, :, -width:])  # the last w inputs


def test_empty_input_keeps_the_state():
    state = torch.randn(1, 3, 4)
    y, final = causal_conv1d(torch.randn(1, 3, 0), torch.randn(3, 4), initial_state=state, return_final_state=True)
    assert y.shape == (1, 3, 0) and torch.equal(final, state)


@pytest.mark.parametrize("split", [0, 2, 17, 40])
def test_continuation(split):
    x = torch.randn(2, 6, 40, dtype=torch.float64)
    weight, bias = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    y_full, s_full = causal_conv1d(x, weight, bias, "silu", return_final_state=True)
    y1, s1 = causal_conv1d(x[..., :split], weight, bias, "silu", return_final_state=True)
    y2, s2 = causal_conv1d(x[..., split:], weight, bias, "silu", initial_state=s1, return_final_state=True)
    assert rel_error(torch.cat([y1, y2], -1), y_full) <= 1e-12 and torch.equal(s2, s_full)


def test_update_equals_parallel_step_by_step():
    batch, dim, width, length = 3, 6, 4, 12
    x = torch.randn(batch, dim, length, dtype=torch.float64)
    weight, bias = torch.randn(dim, width, dtype=torch.float64), torch.randn(dim, dtype=torch.float64)
    state0 = torch.randn(batch, dim, width, dtype=torch.float64)
    y_par, s_par = causal_conv1d(x, weight, bias, "silu", initial_state=state0, return_final_state=True)
    state = state0.clone()
    ys = [causal_conv1d_update(x[:, :, t], state, weight, bias, "silu") for t in range(length)]
    assert rel_error(torch.stack(ys, -1), y_par) <= 1e-12
    assert torch.equal(state, s_par)


def test_gradients_flow_to_input_weight_bias_and_state():
    x, weight, bias, state = (torch.randn(*s, dtype=torch.float64, requires_grad=True)
                              for s in ((1, 2, 5), (2, 3), (2,), (1, 2, 3)))
    assert torch.autograd.gradcheck(
        lambda *a: causal_conv1d(a[0], a[1], a[2], "silu", initial_state=a[3], return_final_state=True),
        (x, weight, bias, state),
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: causal_conv1d(torch.randn(2, 3), torch.randn(3, 4)), "x must be"),
        (lambda: causal_conv1d(torch.randn(2, 3, 5), torch.randn(4, 4)), "weight must be"),
        (lambda: causal_conv1d(torch.randn(2, 3, 5), torch.randn(3, 4), torch.randn(4)), "bias must be"),
        (lambda: causal_conv1d(torch.randn(2, 3, 5), torch.randn(3, 4), activation="relu"), "activation"),
        (lambda: causal_conv1d(torch.randn(2, 3, 5), torch.randn(3, 4), initial_state=torch.randn(2, 3, 3)),
         "initial_state must be"),
        (lambda: causal_conv1d_update(torch.randn(2, 3), torch.randn(2, 3), torch.randn(3, 4)), "conv_state must be"),
        (lambda: causal_conv1d_update(torch.randn(2, 4), torch.randn(2, 3, 4), torch.randn(3, 4)), "x_t must be"),
        (lambda: causal_conv1d_update(torch.randn(2, 3), torch.randn(2, 3, 4), torch.randn(3, 3)), "weight must be"),
        (lambda: causal_conv1d(torch.randn(1, 4, 5), torch.randn(4, 0)), r"weight must be \(dim=4, width >= 1\)"),
        (lambda: causal_conv1d(torch.arange(4).view(1, 1, 4), torch.ones(1, 2)),
         "causal_conv1d: x must be a floating-point tensor, got torch.int64"),
        (lambda: causal_conv1d(torch.randn(1, 2, 4), torch.randn(2, 2), torch.randn(2, device="meta")),
         "causal_conv1d: all tensors must be on one device"),
        (lambda: causal_conv1d_update(torch.randn(1, 1), torch.zeros(1, 1, 2, dtype=torch.int64), torch.ones(1, 2)),
         "causal_conv1d_update: conv_state must be a floating-point tensor"),
        (lambda: causal_conv1d_update(torch.ones(1, 1, dtype=torch.int32), torch.zeros(1, 1, 2), torch.ones(1, 2)),
         "causal_conv1d_update: x_t must be a floating-point tensor"),
    ],
)
def test_validation(call, message):
    with pytest.raises(ValueError, match=message):
        call()
