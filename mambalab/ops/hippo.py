"""HiPPO matrices, S4D initialisations and discretizations of a continuous-time linear SSM.

A continuous SSM maps an input u(t) to a state x(t) ∈ R^N:   x'(t) = A x(t) + B u(t),   y = C x.
Every matrix below is returned in that sign convention (the HiPPO paper writes x' = -A x + B u).

HiPPO (arXiv 2008.07669) chooses A, B so that x(t) holds the coefficients of the projection of the
input's history onto a basis of orthogonal functions:

    LegS  scaled Legendre, uniform measure on [0, t]:   x' = (1/t) (A x + B u)  (time-varying)
          A_nk = -√(2n+1)√(2k+1) if n > k,  -(n+1) if n = k,  0 if n < k;   B_n = √(2n+1)
          reconstruction: u(s·t) ≈ Σ_n x_n √(2n+1) P_n(2s − 1),  s ∈ [0, 1]
    LegT  translated Legendre, uniform measure on the window [t − θ, t]; in the LMU form
          A_nk = (2n+1)/θ · (−1 if n < k, (−1)^(n−k+1) if n ≥ k);   B_n = (2n+1)(−1)^n / θ
          reconstruction: u(t − θ + s·θ) ≈ Σ_n x_n P_n(1 − 2s)
          The "legt" form is the same system in the orthonormal basis, x = diag((−1)^n √(2n+1)) x̃.
    FouT  translated Fourier on [t − θ, t], basis φ_0 = 1, φ_{2k−1} = √2 cos(2πks), φ_{2k} = √2 sin(2πks)
          A = (S − b bᵀ)/θ, B = b/θ, with b = φ(0) = (1, √2, 0, √2, 0, …), S_{2k−1,2k} = 2πk = −S_{2k,2k−1}
          (b bᵀ estimates the value u(t − θ) leaving the window from the coefficients themselves).

S4D (arXiv 2206.11893) keeps only a diagonal A, with N/2 complex modes standing for N conjugate ones:

    S4D-Lin   A_n = −1/2 + iπn              S4D-Inv   A_n = −1/2 + i (N/π)(N/(2n+1) − 1)
    S4D-Real  A_n = −(n+1)                  LegS      eigenvalues of LegS's normal part, −1/2 + iω_n
    random    A_n = −exp(g_n) + iπ·(N/2)·v_n with g_n ~ N(0, 1), v_n ~ U(0, 1)

Discretization with step Δ (Ā, B̄ such that x_k = Ā x_{k−1} + B̄ u_k):

    ZOH       Ā = exp(ΔA)               B̄ = A⁻¹ (exp(ΔA) − I) B
    bilinear  Ā = (I − ΔA/2)⁻¹(I + ΔA/2)   B̄ = (I − ΔA/2)⁻¹ Δ B
    Euler     Ā = I + ΔA                B̄ = Δ B
    mamba     Ā = exp(ΔA)               B̄ = Δ B      (ZOH for A, Euler for B, as Mamba's kernel)
"""

from __future__ import annotations

import math

import torch

from mambalab.config import DISCRETIZATIONS, S4D_INITS

HIPPO_MEASURES = ("legs", "legt", "lmu", "fout")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


# HiPPO matrices ------------------------------------------------------------------------------------------
def hippo_legs(N: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """HiPPO-LegS (A (N, N), B (N,)): x' = (1/t)(A x + B u) keeps the Legendre coefficients of u on [0, t]."""
    q = torch.arange(N, dtype=dtype)
    r = (2 * q + 1).sqrt()  # √(2n+1)                                       (N,)
    A = -(r[:, None] * r[None, :]).tril(-1) - torch.diag(q + 1)  # (N, N)
    return A, r.clone()


def hippo_legt(N: int, theta: float = 1.0, form: str = "lmu", dtype=torch.float64):
    """HiPPO-LegT (A (N, N), B (N,)) for a sliding window of length θ; `form` "lmu" (Legendre Memory Unit,
    coefficients of the shifted Legendre polynomials) or "legt" (the orthonormal basis, same dynamics)."""
    _check_choice("hippo_legt form", form, ("lmu", "legt"))
    q = torch.arange(N, dtype=dtype)
    n, k = q[:, None], q[None, :]
    sign = torch.where(n < k, -torch.ones_like(n * k), (-1.0) ** (n - k + 1))  # (N, N)
    A = (2 * q + 1)[:, None] * sign / theta
    B = (2 * q + 1) * (-1.0) ** q / theta
    if form == "legt":  # x = T x̃ with T = diag((−1)^n √(2n+1)):  Ã = T⁻¹ A T,  B̃ = T⁻¹ B
        t = (-1.0) ** q * (2 * q + 1).sqrt()
        A, B = A * t[None, :] / t[:, None], B / t
    return A, B


def hippo_fout(N: int, theta: float = 1.0, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """HiPPO-FouT (A (N, N), B (N,)): Fourier coefficients of u on the window [t − θ, t] (see module doc).
    With an even N the last basis function is a cosine without its sine."""
    b = torch.zeros(N, dtype=dtype)
    b[0] = 1.0
    b[1::2] = math.sqrt(2.0)  # φ_n(0): 1 for the constant, √2 for cosines, 0 for sines
    S = torch.zeros(N, N, dtype=dtype)
    for cos_idx in range(1, N - 1, 2):
        freq = 2 * math.pi * ((cos_idx + 1) // 2)  # cos_idx = 2k − 1 holds frequency k
        S[cos_idx, cos_idx + 1], S[cos_idx + 1, cos_idx] = freq, -freq
    return (S - b[:, None] * b[None, :]) / theta, b / theta


def hippo(measure: str, N: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of a HiPPO measure by name: "legs", "legt" (orthonormal), "lmu" (LegT in LMU form), "fout"."""
    _check_choice("hippo measure", measure, HIPPO_MEASURES)
    if measure == "legs":
        return hippo_legs(N, dtype)
    if measure == "fout":
        return hippo_fout(N, dtype=dtype)
    return hippo_legt(N, form=measure, dtype=dtype)


def legendre_basis(N: int, x: torch.Tensor) -> torch.Tensor:
    """P_n(x) for n < N: (N, *x.shape)."""
    return torch.stack([torch.special.legendre_polynomial_p(x, n) for n in range(N)])


def legs_reconstruct(coef: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """u(s·t) ≈ Σ_n x_n √(2n+1) P_n(2s − 1) from LegS coefficients x (..., N) at time t; s (m,) in [0, 1]."""
    N = coef.shape[-1]
    scale = (2 * torch.arange(N, dtype=coef.dtype) + 1).sqrt()  # (N,)
    return (coef * scale) @ legendre_basis(N, 2 * s - 1)  # (..., m)


def lmu_reconstruct(coef: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """u(t − θ + s·θ) ≈ Σ_n x_n P_n(1 − 2s) from LegT coefficients in LMU form (..., N); s (m,) in [0, 1]."""
    return coef @ legendre_basis(coef.shape[-1], 1 - 2 * s)  # (..., m)


# S4D initialisations --------------------------------------------------------------------------------------
def s4d_init(kind: str, n_modes: int, dtype=torch.complex128, generator: torch.Generator | None = None):
    """Diagonal A (n_modes,) complex, by name (see module doc). For a real SSM (Mamba) take `.real`:
    S4D-Lin gives −1/2, S4D-Real −(n+1), random −exp(N(0, 1))."""
    _check_choice("S4D init", kind, S4D_INITS)
    real_dtype = torch.empty((), dtype=dtype).real.dtype
    n = torch.arange(n_modes, dtype=real_dtype)
    N = 2 * n_modes  # the conjugate pairs stand for N states
    if kind == "s4d_lin":
        real, imag = torch.full_like(n, -0.5), math.pi * n
    elif kind == "s4d_inv":
        real, imag = torch.full_like(n, -0.5), (N / math.pi) * (N / (2 * n + 1) - 1)
    elif kind == "s4d_real":
        real, imag = -(n + 1), torch.zeros_like(n)
    elif kind == "legs":
        eig = _legs_normal_eigenvalues(N)
        real, imag = eig.real.to(real_dtype), eig.imag.to(real_dtype)
    else:
        real = -torch.randn(n_modes, generator=generator, dtype=real_dtype).exp()
        imag = math.pi * n_modes * torch.rand(n_modes, generator=generator, dtype=real_dtype)
    return torch.complex(real, imag).to(dtype)


def _legs_normal_eigenvalues(N: int) -> torch.Tensor:
    """The N/2 eigenvalues with positive imaginary part of LegS's normal part A + p pᵀ, p_n = √(n + 1/2),
    which equals −I/2 plus a skew-symmetric matrix (the "N" of LegS's normal-plus-low-rank form)."""
    A, _ = hippo_legs(N)
    p = (torch.arange(N, dtype=torch.float64) + 0.5).sqrt()
    skew = A + p[:, None] * p[None, :] + 0.5 * torch.eye(N, dtype=torch.float64)  # S = −Sᵀ
    omega = torch.linalg.eigvalsh(-1j * skew.to(torch.complex128))  # S's eigenvalues are iω, −iS Hermitian
    omega = omega[omega > 0][: N // 2]  # ascending
    return torch.complex(torch.full_like(omega, -0.5), omega)


# Discretizations -----------------------------------------------------------------------------------------
def discretize_diagonal(A: torch.Tensor, B: torch.Tensor, dt: torch.Tensor, method: str):
    """(Ā, B̄) for a diagonal A (real or complex), elementwise; A, B and Δ broadcast against each other."""
    _check_choice("discretization", method, DISCRETIZATIONS)
    dtA = dt * A  # ΔA
    if method == "zoh":
        return torch.exp(dtA), torch.expm1(dtA) / A * B  # A⁻¹(exp(ΔA) − 1) B
    if method == "bilinear":
        denom = 1 - dtA / 2
        return (1 + dtA / 2) / denom, dt / denom * B
    if method == "euler":
        return 1 + dtA, dt * B
    return torch.exp(dtA), dt * B  # mamba


def discretize_dense(A: torch.Tensor, B: torch.Tensor, dt: float, method: str):
    """(Ā (N, N), B̄ (N,)) for a dense A (N, N), B (N,) and a scalar step Δ."""
    _check_choice("discretization", method, DISCRETIZATIONS)
    eye = torch.eye(A.shape[0], dtype=A.dtype)
    if method == "zoh":  # exp([[A, B], [0, 0]] Δ) = [[Ā, B̄], [0, 1]]: no inverse of A needed
        N = A.shape[0]
        block = torch.zeros(N + 1, N + 1, dtype=A.dtype)
        block[:N, :N], block[:N, N] = A * dt, B * dt
        expm = torch.linalg.matrix_exp(block)
        return expm[:N, :N], expm[:N, N]
    if method == "bilinear":
        lhs = eye - dt / 2 * A
        return torch.linalg.solve(lhs, eye + dt / 2 * A), torch.linalg.solve(lhs, dt * B)
    if method == "euler":
        return eye + dt * A, dt * B
    return torch.linalg.matrix_exp(dt * A), dt * B  # mamba
