"""Diagonal linear SSMs: the S4D convolution (CNN mode) and the recurrence (RNN mode) from the same Ā, B̄, C.

Glossary (code ↔ paper ↔ shape): b batch, d channels (H in S4D), l length (L), n modes per channel
(N/2 complex modes in S4D, N real ones in Mamba's ablations), u input (b, d, l), dA = Ā (d, n),
dB = B̄ (d, n), C (d, n), D skip (d,), h state (b, d, n). Ā, B̄, C may be complex or real; the output is
the real part. (S4D's conjugate pairs double the real part: the caller passes 2·C.)

RNN mode:  h_k = Ā h_{k−1} + B̄ u_k,   y_k = Re(C · h_k) + D u_k
CNN mode:  unrolling the recurrence from h_{−1} = h0 gives
           y_k = Σ_{j≤k} K_{k−j} u_j + Re(Σ_n C_n Ā_n^{k+1} h0_n) + D u_k,    K_k = Re(Σ_n C_n B̄_n Ā_n^k)
           K comes from the Vandermonde matrix V_{n,k} = Ā_n^k, the sum over j from an FFT convolution, and
           the final state h_{L−1} = Ā^L h0 + Σ_j Ā^{L−1−j} B̄ u_j from the same Vandermonde matrix.
"""

from __future__ import annotations

import torch


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """complex128/float64 when any input is 64-bit, else complex64/float32 (bf16/fp16 inputs included)."""
    wide = any(t.dtype in (torch.float64, torch.complex128) for t in tensors)
    if any(t.is_complex() for t in tensors):
        return torch.complex128 if wide else torch.complex64
    return torch.float64 if wide else torch.float32


def _real(x: torch.Tensor) -> torch.Tensor:
    return x.real if x.is_complex() else x


def vandermonde(dA: torch.Tensor, length: int) -> torch.Tensor:
    """V[d, n, k] = Ā[d, n]^k for k < length: (d, n, l).

    Complex Ā: exp(k · log Ā) with the logarithm taken once per mode (for integer k any branch of the log gives
    Ā^k); `Ā ** k` would take it for every k, and its backward is ~4× slower again on CPU. Column 0 is set to
    1 so that Ā = 0 (an underflowed exp(ΔA)) gives 0^0 = 1 (torch's complex power gives NaN there)."""
    k = torch.arange(length, device=dA.device, dtype=dA.real.dtype)  # (l,)
    if not dA.is_complex():
        return dA.unsqueeze(-1) ** k  # (d, n, l)
    ones = torch.ones(*dA.shape, min(length, 1), device=dA.device, dtype=dA.dtype)  # (d, n, 1)
    return torch.cat((ones, torch.exp(torch.log(dA).unsqueeze(-1) * k[1:])), dim=-1)  # (d, n, l)


def fft_conv(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Causal convolution y_k = Σ_{j≤k} K_{k−j} u_j via FFT, zero-padded to 2l: u (b, d, l), K (d, l)."""
    length = u.shape[-1]
    if length == 0:  # nothing to convolve (and no FFT of 0 points)
        return torch.zeros_like(u)
    n_fft = 2 * length
    y = torch.fft.irfft(torch.fft.rfft(u, n=n_fft) * torch.fft.rfft(K, n=n_fft), n=n_fft)  # (b, d, 2l)
    return y[..., :length]  # (b, d, l)


def s4d_cnn(u, dA, dB, C, D=None, initial_state=None, return_final_state=False):
    """CNN mode: y = K * u (+ the initial state's contribution) + D u. u (b, d, l) -> y (b, d, l) in u's
    dtype [, final state (b, d, n) in the compute dtype]."""
    compute = _compute_dtype(dA, dB, C, u)
    real = torch.empty((), dtype=compute).real.dtype
    dA, dB, C = (t.to(compute) for t in (dA, dB, C))
    x = u.to(real)  # (b, d, l)
    length = u.shape[-1]
    V = vandermonde(dA, length + 1)  # Ā^0 … Ā^l   (d, n, l+1)
    K = _real(torch.einsum("dn,dnl->dl", C * dB, V[..., :length]))  # K_k = Re(Σ_n C_n B̄_n Ā_n^k)  (d, l)
    y = fft_conv(x, K)  # (b, d, l)
    if initial_state is not None:
        h0 = initial_state.to(compute)  # (b, d, n)
        y = y + _real(torch.einsum("dn,bdn,dnl->bdl", C, h0, V[..., 1:]))  # Re(C Ā^{k+1} h0)
    if D is not None:
        y = y + D.to(real)[:, None] * x
    if not return_final_state:
        return y.to(u.dtype)
    final = torch.einsum("bdl,dnl->bdn", x.to(compute), V[..., :length].flip(-1)) * dB  # Σ Ā^{l−1−j} B̄ u_j
    if initial_state is not None:
        final = final + V[..., length] * h0  # + Ā^l h0
    return y.to(u.dtype), final


def diagonal_recurrence(dA, dBu, C, initial_state=None):
    """The for-loop reference of any diagonal linear recurrence, time-invariant or not:
    h_t = Ā_t ⊙ h_{t−1} + (B̄u)_t,  y_t = Re(Σ_n C_t h_t).

    dA, dBu, C: (b|1, d|1, l|1, n) (a size-1 axis broadcasts; l = 1 means constant in time);
    initial_state (b, d, n) or None. Returns y (b, d, l) real and h_{l−1} (b, d, n), in the compute dtype.
    """
    compute = _compute_dtype(dA, dBu, C)
    dA, dBu, C = (t.to(compute) for t in (dA, dBu, C))
    batch, dim, length = torch.broadcast_shapes(*(t.shape[:3] for t in (dA, dBu, C)))  # l = 0 stays 0
    h = dBu.new_zeros(batch, dim, dA.shape[-1]) if initial_state is None else initial_state.to(compute)  # (b, d, n)
    ys = []
    for t in range(length):
        h = _at(dA, t) * h + _at(dBu, t)  # h_t = Ā_t h_{t−1} + B̄_t u_t          (b, d, n)
        ys.append(_real((_at(C, t) * h).sum(-1)))  # y_t = Re(C_t · h_t)           (b, d)
    y = torch.stack(ys, dim=-1) if ys else _real(h).new_zeros(batch, dim, 0)  # (b, d, l)
    return y, h  # h_{l−1}: the initial state (or zeros) when l = 0


def _at(x: torch.Tensor, t: int) -> torch.Tensor:
    return x[:, :, t if x.shape[2] > 1 else 0]  # (b|1, d|1, n)


def s4d_rnn(u, dA, dB, C, D=None, initial_state=None, return_final_state=False):
    """RNN mode over a whole sequence, same signature and results as `s4d_cnn`."""
    compute = _compute_dtype(dA, dB, C, u)
    real = torch.empty((), dtype=compute).real.dtype
    x = u.to(real)  # (b, d, l)
    dBu = dB.to(compute)[None, :, None, :] * x[..., None]  # B̄ u_k                   (b, d, l, n)
    y, final = diagonal_recurrence(dA[None, :, None, :], dBu, C[None, :, None, :], initial_state)
    if D is not None:
        y = y + D.to(real)[:, None] * x
    return (y.to(u.dtype), final) if return_final_state else y.to(u.dtype)


def s4d_step(u_t, state, dA, dB, C, D=None):
    """One RNN step: u_t (b, d); `state` (b, d, n) (complex or real) is advanced in place; returns y_t (b, d)."""
    compute = state.dtype
    real = torch.empty((), dtype=compute).real.dtype
    x = u_t.to(real)  # (b, d)
    state.copy_(dA.to(compute) * state + dB.to(compute) * x[..., None])  # h = Ā h + B̄ u     (b, d, n)
    y = _real((C.to(compute) * state).sum(-1))  # Re(C · h)                                  (b, d)
    if D is not None:
        y = y + D.to(real) * x
    return y.to(u_t.dtype)
