"""The Mamba mixer with SSMConfig's ablation switches (the model ablations of arXiv 2312.00752, Section
4.6): what changes steps 4-5 of `Mamba` (layers/mamba.py); steps 1-3 and 6 are the paper's.

    discretization  "mamba" (ZOH for A, Euler for B) | "zoh" | "bilinear" | "euler"  (see ops/hippo.py)
    selective       False: Δ, B, C are learned per-channel parameters (dt_bias (d,), B, C (d, n)), not
                    functions of the input: the LTI "Mamba + S4" ablation, run in CNN mode (ops/s4d.py)
    selective_A     True: A_t = −exp(A_log + A_proj(x_t)) also depends on the input (A_proj zero at init)

The SSM runs the for-loop recurrence of ops/s4d.py (`diagonal_recurrence`), which materialises (b, d, l, n)
tensors, or the S4D convolution when nothing is selective: meant for ablations at small scale.
`mamba_class(ssm)` picks `Mamba` or `MambaAblation` for a config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mambalab.config import SSMConfig
from mambalab.layers.mamba import Mamba
from mambalab.ops.causal_conv1d import UPDATE_OP as CONV_UPDATE_OP
from mambalab.ops.causal_conv1d import causal_conv1d_update
from mambalab.ops.hippo import discretize_diagonal
from mambalab.ops.s4d import diagonal_recurrence, s4d_cnn


def mamba_class(ssm: SSMConfig) -> type[Mamba]:
    """`Mamba` for the paper's switches, else `MambaAblation`."""
    return Mamba if Mamba.runs_paper_ssm(ssm) else MambaAblation


class MambaAblation(Mamba):
    uses_selective_scan = False

    def _make_selection(self, d: int, n: int, r: int) -> None:
        if self.cfg.selective:
            super()._make_selection(d, n, r)
        else:  # LTI: Δ = softplus(dt_bias), B and C per channel
            self.dt_bias = nn.Parameter(torch.empty(d))
            self.B = nn.Parameter(torch.empty(d, n))
            self.C = nn.Parameter(torch.empty(d, n))
        if self.cfg.selective_A:
            self.A_proj = nn.Linear(d, n, bias=False)

    @property
    def delta_bias(self) -> nn.Parameter:
        """Δ's bias (d,): `dt_proj.bias` of the selective mixer, `dt_bias` of the LTI one."""
        return self.dt_proj.bias if self.cfg.selective else self.dt_bias

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """As `Mamba`'s; with selective=False, B = 1 and C ~ N(0, 1/N); A_proj starts at zero."""
        super().reset_ssm_parameters()
        if self.cfg.selective_A:
            nn.init.zeros_(self.A_proj.weight)

    def _reset_selection(self) -> None:
        if self.cfg.selective:
            super()._reset_selection()
        else:
            self.B.fill_(1.0)
            nn.init.normal_(self.C, std=self.d_state**-0.5)

    def _step_ssm(self, hidden: torch.Tensor, state: dict) -> torch.Tensor:
        xz = self.in_proj(hidden)  # (b, 2d)
        x, z = xz.chunk(2, dim=-1)  # (b, d)
        x = causal_conv1d_update(x, state["conv"], self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu",
                                 backend=self._backend(CONV_UPDATE_OP))  # (b, d)
        return self._ssm(x[..., None], z[..., None], state)[..., 0]  # (b, d)

    def _ssm(self, x: torch.Tensor, z: torch.Tensor, state: dict | None) -> torch.Tensor:
        """The SSM of the switches: x, z (b, d, l) after the conv -> y (b, d, l).

        Tensors are laid out (b|1, d|1, l|1, n) so that constant ones broadcast: Δ (·, d, ·, 1), A, B, C.
        """
        cfg, n, r = self.cfg, self.d_state, self.dt_rank
        A_log = self.A_log if self.A_log.dtype == torch.float64 else self.A_log.float()
        xc = x.to(A_log.dtype)  # the SSM runs in float32 (float64 for a float64 model)     (b, d, l)
        x_rows = x.transpose(1, 2)  # (b, l, d)
        if cfg.selective:  # Δ_t, B_t, C_t from the input, as the default path
            dt, B, C = self.x_proj(x_rows).split([r, n, n], dim=-1)  # (b, l, r), (b, l, n), (b, l, n)
            dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2).to(A_log.dtype)  # (b, d, l)
            dt = dt + self.delta_bias.to(A_log.dtype)[:, None]
            B, C = B[:, None].to(A_log.dtype), C[:, None].to(A_log.dtype)  # (b, 1, l, n)
        else:  # one learned Δ, B, C per channel
            dt = self.delta_bias.to(A_log.dtype)[None, :, None]  # (1, d, 1)
            B, C = self.B[None, :, None].to(A_log.dtype), self.C[None, :, None].to(A_log.dtype)  # (1, d, 1, n)
        dt = F.softplus(dt)[..., None]  # Δ                                        (b|1, d, l|1, 1)
        log_neg_A = A_log[None, :, None]  # (1, d, 1, n)
        if cfg.selective_A:
            log_neg_A = log_neg_A + self.A_proj(x_rows)[:, None].to(A_log.dtype)  # (b, d, l, n)
        dA, dB = discretize_diagonal(-torch.exp(log_neg_A), B, dt, cfg.discretization)
        h0 = None if state is None else state["ssm"]
        if cfg.selective or cfg.selective_A:  # time-varying: the recurrence
            y, final = diagonal_recurrence(dA, dB * xc[..., None], C, initial_state=h0)  # (b, d, l), (b, d, n)
            y = y + self.D.to(A_log.dtype)[:, None] * xc
        else:  # time-invariant: the S4D convolution, continuing from the state
            y, final = s4d_cnn(xc, dA[0, :, 0], dB[0, :, 0], C[0, :, 0], self.D, initial_state=h0,
                               return_final_state=True)
        if state is not None:
            state["ssm"].copy_(final)
        return (y * F.silu(z.to(y.dtype))).to(x.dtype)  # y · SiLU(z)              (b, d, l)
