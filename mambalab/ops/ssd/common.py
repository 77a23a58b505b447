"""Pieces every non-fused SSD backend shares: the compute dtype, Δ's bias and softplus, the loop over packed
sequences, the skip connection and the gate. Each backend supplies only its `core`: the SSM over one batch of
whole sequences, y_t = C_t · h_t with h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t ⊗ B_t."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# core(x, dt, A, B, C, h0) -> (y, h_last): x (b, l, h, p), dt (b, l, h) after bias/softplus, A (h,),
# B, C (b, l, g, n), h0 (b, h, p, n); y (b, l, h, p), h_last (b, h, p, n); all in the compute dtype.
Core = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def compute_dtype(*tensors) -> torch.dtype:
    """float64 when any input is float64, else float32 (16-bit inputs are computed in float32)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def discretize_dt(dt, dt_bias, dt_softplus):
    """Δ = softplus(dt + dt_bias) if dt_softplus else dt + dt_bias  (b, l, h)."""
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    return F.softplus(dt) if dt_softplus else dt


def expand_groups(t, heads):
    """B or C (b, l, g, n) -> (b, l, h, n): head i reads group i // (h / g)."""
    return t.repeat_interleave(heads // t.shape[2], dim=2)


def skip_and_gate(y, x, D, z):
    """y + D x (D (h,) or (h, p)), then y · silu(z)  (b, l, h, p)."""
    if D is not None:
        y = y + (D[:, None] if D.dim() == 1 else D).to(y.dtype) * x
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def run_ssd(core: Core, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None,
            return_final_state=False, cu_seqlens=None, **core_options):
    """The op's semantics around `core`: cast to the compute dtype, discretize Δ, run `core` over the batch
    (or over each packed sequence of `cu_seqlens`, batch 1), add D x, gate, cast back."""
    compute = compute_dtype(x, dt, A, B, C)
    x_, dt_, A_, B_, C_ = (t.to(compute) for t in (x, dt, A, B, C))
    dt_ = discretize_dt(dt_, dt_bias, dt_softplus)  # Δ  (b, l, h)
    batch, _, heads, head_dim = x.shape
    n = B.shape[-1]
    if cu_seqlens is None:
        h0 = initial_state.to(compute) if initial_state is not None else x_.new_zeros(batch, heads, head_dim, n)
        y, final = core(x_, dt_, A_, B_, C_, h0, **core_options)
    else:
        bounds = [int(v) for v in cu_seqlens]
        ys, finals = [], []
        for s in range(len(bounds) - 1):
            seq = slice(bounds[s], bounds[s + 1])
            h0 = (initial_state[s : s + 1].to(compute) if initial_state is not None
                  else x_.new_zeros(1, heads, head_dim, n))
            y_s, final_s = core(x_[:, seq], dt_[:, seq], A_, B_[:, seq], C_[:, seq], h0, **core_options)
            ys.append(y_s)
            finals.append(final_s)
        y, final = torch.cat(ys, dim=1), torch.cat(finals)
    y = skip_and_gate(y, x_, D, z).to(x.dtype)
    if not return_final_state:
        return y
    return y, final if compute == torch.float64 else final.float()
