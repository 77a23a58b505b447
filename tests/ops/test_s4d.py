"""S4D: CNN mode (Vandermonde kernel + FFT convolution) == RNN mode (the recurrence), for every init and
discretization, with and without an initial state; the decode step; measured float32/bf16 bounds."""

from __future__ import annotations

import math

import pytest
import torch

from mambalab.ops.hippo import DISCRETIZATIONS, S4D_INITS, discretize_diagonal, s4d_init
from mambalab.ops.s4d import diagonal_recurrence, s4d_cnn, s4d_rnn, s4d_step, vandermonde
from tests.conftest import rel_error


def random_ssm(init: str, method: str, d: int, n: int, dtype=torch.complex128):
    """Ā, B̄, C, D of an S4D layer with fresh random Δ (log-uniform). Forward Euler is only stable while
    |1 + ΔA| < 1, i.e. Δ < 2|Re A|/|A|², so it gets steps small enough for S4D-Lin's high frequencies."""
    lo, hi = (1e-5, 1e-4) if method == "euler" else (1e-3, 1e-1)
    dt = torch.exp(torch.rand(d, 1, dtype=torch.float64) * math.log(hi / lo) + math.log(lo))  # (d, 1)
    A = torch.stack([s4d_init(init, n) for _ in range(d)])  # (d, n)
    B = torch.randn(d, n, dtype=torch.complex128)
    C = torch.randn(d, n, dtype=torch.complex128)
    dA, dB = discretize_diagonal(A, B, dt, method)
    return dA.to(dtype), dB.to(dtype), C.to(dtype), torch.randn(d, dtype=torch.float64)


@pytest.mark.parametrize("method", DISCRETIZATIONS)
@pytest.mark.parametrize("init", S4D_INITS)
def test_cnn_equals_rnn_float64(init, method):
    b, d, n, l = 2, 3, 8, 64
    dA, dB, C, D = random_ssm(init, method, d, n)
    u = torch.randn(b, d, l, dtype=torch.float64)
    h0 = torch.randn(b, d, n, dtype=torch.complex128)
    assert rel_error(s4d_cnn(u, dA, dB, C, D), s4d_rnn(u, dA, dB, C, D)) < 1e-10
    y_cnn, h_cnn = s4d_cnn(u, dA, dB, C, D, initial_state=h0, return_final_state=True)
    y_rnn, h_rnn = s4d_rnn(u, dA, dB, C, D, initial_state=h0, return_final_state=True)
    assert rel_error(y_cnn, y_rnn) < 1e-10
    assert rel_error(torch.view_as_real(h_cnn), torch.view_as_real(h_rnn)) < 1e-10


def test_real_ssm_cnn_equals_rnn_and_split_sequence():
    """A real diagonal SSM (Mamba's LTI ablation) in both modes; two halves chained through the state equal
    the whole sequence."""
    b, d, n, l = 2, 4, 6, 40
    A = -torch.rand(d, n, dtype=torch.float64) * 3
    dA, dB = discretize_diagonal(A, torch.randn(d, n, dtype=torch.float64), 0.1, "zoh")
    C, D = torch.randn(d, n, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    u = torch.randn(b, d, l, dtype=torch.float64)
    y = s4d_rnn(u, dA, dB, C, D)
    assert rel_error(s4d_cnn(u, dA, dB, C, D), y) < 1e-10
    y1, h = s4d_cnn(u[..., :17], dA, dB, C, D, return_final_state=True)
    y2 = s4d_cnn(u[..., 17:], dA, dB, C, D, initial_state=h)
    assert rel_error(torch.cat([y1, y2], -1), y) < 1e-10


def test_step_equals_rnn():
    b, d, n, l = 2, 3, 8, 20
    dA, dB, C, D = random_ssm("s4d_lin", "zoh", d, n)
    u = torch.randn(b, d, l, dtype=torch.float64)
    state = torch.zeros(b, d, n, dtype=torch.complex128)
    ys = torch.stack([s4d_step(u[..., t], state, dA, dB, C, D) for t in range(l)], -1)
    y, h = s4d_rnn(u, dA, dB, C, D, return_final_state=True)
    assert rel_error(ys, y) < 1e-12
    assert rel_error(torch.view_as_real(state), torch.view_as_real(h)) < 1e-12


def test_gradients_agree_between_modes():
    b, d, n, l = 2, 3, 4, 30
    A = s4d_init("s4d_lin", n).repeat(d, 1).requires_grad_()
    log_dt = torch.full((d, 1), math.log(0.05), dtype=torch.float64, requires_grad=True)
    C = torch.randn(d, n, dtype=torch.complex128, requires_grad=True)
    u = torch.randn(b, d, l, dtype=torch.float64, requires_grad=True)
    grads = []
    for mode in (s4d_cnn, s4d_rnn):
        dA, dB = discretize_diagonal(A, torch.ones_like(A), log_dt.exp(), "zoh")
        (mode(u, dA, dB, C) ** 2).sum().backward()
        grads.append([t.grad.clone() for t in (A, log_dt, C, u)])
        for t in (A, log_dt, C, u):
            t.grad = None
    for g_cnn, g_rnn in zip(*grads):
        assert rel_error(torch.view_as_real(g_cnn) if g_cnn.is_complex() else g_cnn,
                         torch.view_as_real(g_rnn) if g_rnn.is_complex() else g_rnn) < 1e-10


@pytest.mark.parametrize("init", ["s4d_lin", "legs", "random"])
def test_float32_and_bf16_bounds(init):
    """Measured at l = 1024, Δ ∈ [1e-3, 0.1] (2026-11-29, CPU): float32 CNN ≤ 6e-6 and RNN ≤ 1.3e-6 relative
    to the float64 recurrence (the CNN's error comes from the FFT and the powers Ā^k); bf16 input and output
    ≈ 2.4e-3 in both modes (bf16 keeps 8 significant bits: rounding u and y costs ~2^-9 each). Asserted:
    float32 ≤ 2e-5, bf16 ≤ 1e-2, and the two modes within 2e-5 of each other in float32."""
    b, d, n, l = 2, 8, 32, 1024
    dA, dB, C, D = random_ssm(init, "zoh", d, n)
    u = torch.randn(b, d, l, dtype=torch.float64)
    ref = s4d_rnn(u, dA, dB, C, D)
    dA32, dB32, C32, D32 = dA.to(torch.complex64), dB.to(torch.complex64), C.to(torch.complex64), D.float()
    cnn32, rnn32 = s4d_cnn(u.float(), dA32, dB32, C32, D32), s4d_rnn(u.float(), dA32, dB32, C32, D32)
    assert rel_error(cnn32, ref) < 2e-5 and rel_error(rnn32, ref) < 2e-5
    assert rel_error(cnn32, rnn32) < 2e-5
    for mode in (s4d_cnn, s4d_rnn):
        y = mode(u.bfloat16(), dA32, dB32, C32, D32)
        assert y.dtype == torch.bfloat16 and rel_error(y, ref) < 1e-2


def test_time_varying_recurrence_matches_explicit_loop():
    b, d, l, n = 2, 3, 7, 4
    dA = torch.rand(b, d, l, n, dtype=torch.float64)
    dBu = torch.randn(b, d, l, n, dtype=torch.float64)
    C = torch.randn(b, 1, l, n, dtype=torch.float64)
    h0 = torch.randn(b, d, n, dtype=torch.float64)
    y, h = diagonal_recurrence(dA, dBu, C, initial_state=h0)
    expected, state = [], h0.clone()
    for t in range(l):
        state = dA[:, :, t] * state + dBu[:, :, t]
        expected.append((C[:, :, t] * state).sum(-1))
    assert rel_error(y, torch.stack(expected, -1)) < 1e-14 and rel_error(h, state) < 1e-14


def test_vandermonde_is_the_power_table_with_gradients():
    """exp(k·log Ā) == Ā^k written as repeated products, values and gradients (float64), including modes whose
    angle passes π (the log's branch does not matter for integer k) and Ā = 0 (0^0 = 1)."""
    torch.manual_seed(0)
    dA = torch.exp(torch.complex(-torch.rand(3, 5, dtype=torch.float64), 4 * torch.randn(3, 5, dtype=torch.float64)))
    dA = torch.cat((dA, torch.zeros(3, 1, dtype=dA.dtype)), dim=1).requires_grad_()  # (3, 6): one zero mode
    powers = [torch.ones_like(dA)]
    for _ in range(1, 9):
        powers.append(powers[-1] * dA)
    expected = torch.stack(powers, dim=-1)  # (3, 6, 9)
    got = vandermonde(dA, 9)
    assert rel_error(torch.view_as_real(got), torch.view_as_real(expected)) < 1e-13
    weights = torch.randn(3, 5, 9, dtype=torch.complex128)  # the zero mode's gradient is undefined: left out
    g_got, = torch.autograd.grad((got[:, :5] * weights).real.sum(), dA)
    g_exp, = torch.autograd.grad((expected[:, :5] * weights).real.sum(), dA)
    assert rel_error(torch.view_as_real(g_got[:, :5]), torch.view_as_real(g_exp[:, :5])) < 1e-12
    assert vandermonde(dA, 0).shape == (3, 6, 0)



@pytest.mark.parametrize("ssm", [s4d_cnn, s4d_rnn])
def test_empty_sequence_gives_empty_output_and_keeps_the_state(ssm):
    """l = 0 (as Mamba/Mamba2): y (b, d, 0), and the final state is the initial one (zeros without one)."""
    dA, dB, C, D = random_ssm("s4d_lin", "zoh", 3, 4)
    u = torch.randn(2, 3, 0, dtype=torch.float64)
    h0 = torch.randn(2, 3, 4, dtype=torch.complex128)
    y, final = ssm(u, dA, dB, C, D, initial_state=h0, return_final_state=True)
    assert y.shape == (2, 3, 0) and y.dtype == torch.float64
    assert torch.equal(final, h0)
    y, final = ssm(u, dA, dB, C, D, return_final_state=True)
    assert y.shape == (2, 3, 0) and torch.equal(final, torch.zeros_like(h0))
