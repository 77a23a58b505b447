"""HiPPO matrices against their closed forms, online reconstruction of a smooth signal, S4D inits, and
the discretizations (diagonal == dense, ZOH's semigroup property)."""

from __future__ import annotations

import math

import pytest
import torch

from mambalab.ops.hippo import (
    DISCRETIZATIONS,
    discretize_dense,
    discretize_diagonal,
    hippo,
    hippo_fout,
    hippo_legs,
    hippo_legt,
    legs_reconstruct,
    lmu_reconstruct,
    s4d_init,
)
from tests.conftest import rel_error


def signal(t: torch.Tensor) -> torch.Tensor:
    return torch.sin(6 * t) + 0.5 * torch.cos(13 * t) + t**2


def test_legs_closed_form():
    N = 9
    A, B = hippo_legs(N)
    for n in range(N):
        assert B[n] == pytest.approx(math.sqrt(2 * n + 1))
        for k in range(N):
            expected = -math.sqrt((2 * n + 1) * (2 * k + 1)) if n > k else (-(n + 1) if n == k else 0.0)
            assert A[n, k].item() == pytest.approx(expected, abs=1e-12)


def test_lmu_closed_form_and_legt_is_the_same_system():
    N, theta = 7, 2.5
    A, B = hippo_legt(N, theta=theta, form="lmu")
    for i in range(N):
        assert B[i].item() == pytest.approx((2 * i + 1) * (-1) ** i / theta)
        for j in range(N):
            expected = (2 * i + 1) / theta * (-1.0 if i < j else (-1.0) ** (i - j + 1))
            assert A[i, j].item() == pytest.approx(expected)
    A2, B2 = hippo_legt(N, theta=theta, form="legt")
    # orthonormal form: symmetric magnitudes √(2n+1)√(2k+1)/θ, similar to the LMU form (same eigenvalues)
    q = torch.arange(N, dtype=torch.float64)
    assert rel_error(A2.abs(), ((2 * q + 1).sqrt()[:, None] * (2 * q + 1).sqrt()[None, :]) / theta) < 1e-14
    ev1 = torch.sort(torch.linalg.eigvals(A).real).values
    ev2 = torch.sort(torch.linalg.eigvals(A2).real).values
    assert rel_error(ev2, ev1) < 1e-9
    assert rel_error(B2.abs(), (2 * q + 1).sqrt() / theta) < 1e-14


def test_fout_closed_form():
    N, theta = 7, 1.0
    A, B = hippo_fout(N, theta)
    b = [1.0] + [math.sqrt(2) if n % 2 else 0.0 for n in range(1, N)]
    for n in range(N):
        assert B[n].item() == pytest.approx(b[n])
        for k in range(N):
            skew = 0.0
            if n % 2 == 1 and k == n + 1:
                skew = 2 * math.pi * (k // 2)
            if k % 2 == 1 and n == k + 1:
                skew = -2 * math.pi * (n // 2)
            assert A[n, k].item() == pytest.approx(skew - b[n] * b[k], abs=1e-12)


def test_hippo_by_name_and_bad_name():
    assert torch.equal(hippo("legs", 4)[0], hippo_legs(4)[0])
    with pytest.raises(ValueError, match="hippo measure"):
        hippo("legx", 4)


def test_legs_reconstructs_a_smooth_signal_online():
    """x_k = (I − A/2k)⁻¹((I + A/2k) x_{k−1} + B u_k / k): the bilinear step of x' = (A x + B u)/t. The
    signal is read back from the final coefficients on the interior of [0, 1] (Legendre truncation and the
    first steps spoil the end points) within 1e-2 of its peak."""
    N, L = 48, 1000
    A, B = hippo_legs(N)
    eye = torch.eye(N, dtype=torch.float64)
    t = torch.arange(1, L + 1, dtype=torch.float64) / L
    x = torch.zeros(N, dtype=torch.float64)
    for k in range(1, L + 1):
        x = torch.linalg.solve(eye - A / (2 * k), (eye + A / (2 * k)) @ x + B * signal(t[k - 1]) / k)
    s = torch.linspace(0.05, 0.95, 181, dtype=torch.float64)
    err = (legs_reconstruct(x, s) - signal(s)).abs().max() / signal(s).abs().max()
    assert err < 1e-2, err


def test_lmu_reconstructs_the_window():
    """LegT (LMU form) with window θ = 1, bilinear steps of 1/L over [0, 2]: the last second is read back
    within 1e-2 of the peak everywhere in the window."""
    N, L, theta = 32, 500, 1.0
    A, B = hippo_legt(N, theta=theta, form="lmu")
    dA, dB = discretize_dense(A, B, 1 / L, "bilinear")
    x = torch.zeros(N, dtype=torch.float64)
    for k in range(1, 2 * L + 1):
        x = dA @ x + dB * signal(torch.tensor(k / L, dtype=torch.float64))
    s = torch.linspace(0, 1, 101, dtype=torch.float64)
    truth = signal(2.0 - theta + s * theta)
    err = (lmu_reconstruct(x, s) - truth).abs().max() / truth.abs().max()
    assert err < 1e-2, err


def test_s4d_inits_closed_forms():
    n = 6
    N = 2 * n
    idx = torch.arange(n, dtype=torch.float64)
    lin, inv, real = s4d_init("s4d_lin", n), s4d_init("s4d_inv", n), s4d_init("s4d_real", n)
    assert rel_error(torch.view_as_real(lin), torch.view_as_real(torch.complex(-0.5 + 0 * idx, math.pi * idx))) < 1e-15
    assert rel_error(inv.imag, N / math.pi * (N / (2 * idx + 1) - 1)) < 1e-15 and (inv.real == -0.5).all()
    assert rel_error(real.real, -(idx + 1)) == 0 and (real.imag == 0).all()
    legs = s4d_init("legs", n)
    A, _ = hippo_legs(N)
    p = (torch.arange(N, dtype=torch.float64) + 0.5).sqrt()
    normal = A + p[:, None] * p[None, :]
    assert rel_error(legs.real, torch.full((n,), -0.5, dtype=torch.float64)) < 1e-10
    for lam in legs:  # each is an eigenvalue: det(normal − λ I) = 0 up to rounding
        smallest = torch.linalg.svdvals(normal.to(torch.complex128) - lam * torch.eye(N, dtype=torch.float64)).min()
        assert smallest < 1e-12
    rnd = s4d_init("random", 1000)
    assert (rnd.real < 0).all() and (rnd.imag >= 0).all()
    with pytest.raises(ValueError, match="S4D init"):
        s4d_init("hippo", 4)


@pytest.mark.parametrize("method", DISCRETIZATIONS)
def test_diagonal_discretization_matches_dense(method):
    n = 5
    A = -torch.rand(n, dtype=torch.float64) - 0.1
    B = torch.randn(n, dtype=torch.float64)
    dt = 0.3
    dA, dB = discretize_diagonal(A, B, torch.tensor(dt, dtype=torch.float64), method)
    dA_dense, dB_dense = discretize_dense(torch.diag(A), B, dt, method)
    assert rel_error(torch.diag(dA), dA_dense) < 1e-13
    assert rel_error(dB, dB_dense) < 1e-13


def test_zoh_is_exact_for_piecewise_constant_input():
    """ZOH integrates x' = A x + B u exactly over a step with constant u: two steps of Δ equal one of 2Δ."""
    A, B = hippo_legs(6)
    dA1, dB1 = discretize_dense(A, B, 0.01, "zoh")
    dA2, dB2 = discretize_dense(A, B, 0.02, "zoh")
    assert rel_error(dA1 @ dA1, dA2) < 1e-12
    assert rel_error(dA1 @ dB1 + dB1, dB2) < 1e-12


def test_bilinear_formula_and_bad_method():
    A = torch.tensor([-0.5 + 3j], dtype=torch.complex128)
    dA, dB = discretize_diagonal(A, torch.ones(1, dtype=torch.complex128), 0.1, "bilinear")
    assert rel_error(torch.view_as_real(dA), torch.view_as_real((1 + 0.05 * A) / (1 - 0.05 * A))) < 1e-15
    assert rel_error(torch.view_as_real(dB), torch.view_as_real(0.1 / (1 - 0.05 * A))) < 1e-15
    with pytest.raises(ValueError, match="discretization"):
        discretize_diagonal(A, A, 0.1, "rk4")
