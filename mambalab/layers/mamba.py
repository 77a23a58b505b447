"""The Mamba-1 mixer (Figure 3 of arXiv 2312.00752), parameter names as HF transformers' `MambaMixer`.

Shapes: b batch, l length, d_model model width, d = d_inner = expand·d_model, n = d_state, r = dt_rank.

Ablation switches (SSMConfig; the defaults are the paper's Mamba and run `selective_scan`):
    A_init          "s4d_real" A = −(1..N) | "s4d_lin" A = −1/2 | "random" A = −exp(N(0, 1)) (init only)
    discretization  "mamba" (ZOH for A, Euler for B) | "zoh" | "bilinear" | "euler"  (see ops/hippo.py)
    selective       False: Δ, B, C are learned per-channel parameters (dt_bias (d,), B, C (d, n)), not
                    functions of the input: the LTI "Mamba + S4" ablation, run in CNN mode (ops/s4d.py)
    selective_A     True: A_t = −exp(A_log + A_proj(x_t)) also depends on the input (A_proj zero at init)
A non-default discretization or selective_A runs the for-loop recurrence of ops/s4d.py (`diagonal_recurrence`),
which materialises (b, d, l, n) tensors: meant for ablations at small scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mambalab.config import ModelConfig, SSMConfig
from mambalab.layers.block import add_residual
from mambalab.ops.backends import records_grad
from mambalab.ops.conv1d import causal_conv1d, causal_conv1d_fused, causal_conv1d_update
from mambalab.ops.hippo import discretize_diagonal, s4d_init
from mambalab.ops.mixer_step import mixer_step, mixer_step_fused
from mambalab.ops.s4d import diagonal_recurrence, s4d_cnn
from mambalab.ops.selective_scan import resolve_backend, selective_scan


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))  # softplus(inverse_softplus(y)) == y


def restore_float32(params) -> None:
    """Put parameters that a cast made float16/bfloat16 back to float32 (SSM parameters need the range)."""
    for p in params:
        if p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()


class Mamba(nn.Module):
    def __init__(self, d_model: int, ssm: SSMConfig | None = None, layer_idx: int = 0, n_layer: int = 1):
        super().__init__()
        ssm = ssm or SSMConfig()
        self.d_model, self.layer_idx, self.cfg = d_model, layer_idx, ssm
        self.d_inner = ssm.expand * d_model
        self.d_state, self.d_conv = ssm.d_state, ssm.d_conv
        self.dt_rank = ssm.dt_rank_for(d_model)
        d, n, r = self.d_inner, self.d_state, self.dt_rank

        self.in_proj = nn.Linear(d_model, 2 * d, bias=ssm.bias)
        self.conv1d = nn.Conv1d(d, d, ssm.d_conv, groups=d, padding=ssm.d_conv - 1, bias=ssm.conv_bias)
        if ssm.selective:
            self.x_proj = nn.Linear(d, r + 2 * n, bias=False)
            self.dt_proj = nn.Linear(r, d, bias=True)
        else:  # LTI: Δ = softplus(dt_bias), B and C per channel
            self.dt_bias = nn.Parameter(torch.empty(d))
            self.B = nn.Parameter(torch.empty(d, n))
            self.C = nn.Parameter(torch.empty(d, n))
        if ssm.selective_A:
            self.A_proj = nn.Linear(d, n, bias=False)
        self.A_log = nn.Parameter(torch.empty(d, n))
        self.D = nn.Parameter(torch.empty(d))
        self.out_proj = nn.Linear(d, d_model, bias=ssm.bias)
        self.reset_ssm_parameters()

    @classmethod
    def from_config(cls, config: ModelConfig, layer_idx: int) -> Mamba:
        return cls(config.d_model, config.ssm, layer_idx=layer_idx, n_layer=config.n_layer)

    @property
    def uses_selective_scan(self) -> bool:
        """True for the paper's Mamba (the default switches): the fast `selective_scan` path."""
        return self.cfg.selective and not self.cfg.selective_A and self.cfg.discretization == "mamba"

    @property
    def delta_bias(self) -> nn.Parameter:
        """Δ's bias (d,): `dt_proj.bias` of the selective mixer, `dt_bias` of the LTI one."""
        return self.dt_proj.bias if self.cfg.selective else self.dt_bias

    def _fp32_params(self) -> list[nn.Parameter]:
        return [self.A_log, self.D, self.delta_bias]

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """A from `A_init` (S4D-Real: A = −(1..N)), D = 1, and Δ's bias so that softplus(bias) is log-uniform
        in [dt_min, dt_max]; with selective=False, B = 1 and C ~ N(0, 1/N); A_proj starts at zero."""
        cfg, d, n = self.cfg, self.d_inner, self.d_state
        log_dt = torch.rand(d) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)
        dt = log_dt.exp().clamp(min=cfg.dt_init_floor)
        if cfg.selective:
            dt_std = self.dt_rank**-0.5 * cfg.dt_scale
            if cfg.dt_init == "constant":
                nn.init.constant_(self.dt_proj.weight, dt_std)
            else:
                nn.init.uniform_(self.dt_proj.weight, -dt_std, dt_std)
        else:
            self.B.fill_(1.0)
            nn.init.normal_(self.C, std=n**-0.5)
        self.delta_bias.copy_(inverse_softplus(dt))
        if cfg.A_init == "random":
            self.A_log.normal_()  # A = −exp(N(0, 1))
        else:
            self.A_log.copy_(torch.log(-s4d_init(cfg.A_init, n, dtype=torch.complex64).real).repeat(d, 1))
        if cfg.selective_A:
            nn.init.zeros_(self.A_proj.weight)
        self.D.fill_(1.0)
        for p in self._fp32_params():
            p._no_weight_decay = True

    def _apply(self, fn, recurse=True):
        """Casting the model (e.g. .to(bfloat16)) keeps A_log, D and the Δ bias in float32."""
        super()._apply(fn, recurse)
        restore_float32(self._fp32_params())
        return self

    # State ------------------------------------------------------------------------------------------------
    def allocate_state(self, batch_size: int, device=None, dtype=None) -> dict[str, torch.Tensor]:
        dtype = dtype or self.in_proj.weight.dtype
        ssm_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return {
            "conv": torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype),  # (b, d, w)
            "ssm": torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=ssm_dtype),  # (b, d, n)
        }

    def _ssm_params(self):
        A = -torch.exp(self.A_log.float() if self.A_log.dtype != torch.float64 else self.A_log)  # A  (d, n)
        return A, self.D, self.dt_proj.bias

    # Parallel mode (training, prefill) -----------------------------------------------------------------------
    def forward(self, hidden: torch.Tensor, state: dict | None = None, seqlen=None) -> torch.Tensor:
        """hidden (b, l, d_model) -> (b, l, d_model). With `state`, start from it and leave the final state in it."""
        n, r = self.d_state, self.dt_rank
        # 1. input projection, split into the SSM branch x and the gate z
        xz = self.in_proj(hidden).transpose(1, 2)  # (b, 2d, l)
        x, z = xz.chunk(2, dim=1)  # (b, d, l) each
        # 2. causal depthwise conv, 3. SiLU
        conv_weight = self.conv1d.weight.squeeze(1)  # (d, w)
        conv = causal_conv1d_fused if self._fused_kernels(x) else causal_conv1d
        if state is None:
            x = conv(x, conv_weight, self.conv1d.bias, activation="silu")  # (b, d, l)
        else:
            x, state["conv"] = conv(
                x, conv_weight, self.conv1d.bias, "silu", initial_state=state["conv"], return_final_state=True
            )
            state["conv"] = state["conv"].to(xz.dtype)
        if not self.uses_selective_scan:  # 4.-5. the ablation switches' SSM (see the module docstring)
            return self.out_proj(self._ablation_ssm(x, z, state).transpose(1, 2))  # (b, l, d_model)
        # 4. x_proj gives the input-dependent Δ (low rank), B and C
        x_dbl = self.x_proj(x.transpose(1, 2))  # (b, l, r + 2n)
        dt, B, C = x_dbl.split([r, n, n], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # Δ before bias/softplus (b, d, l)
        B = B.transpose(1, 2)  # (b, n, l)
        C = C.transpose(1, 2)  # (b, n, l)
        # 5. selective scan: Δ = softplus(dt + bias), h_t = exp(ΔA) h + ΔB x, y = C h + D x, y *= silu(z)
        A, D, dt_bias = self._ssm_params()
        scan_args = {"D": D, "z": z, "delta_bias": dt_bias, "delta_softplus": True, "backend": self.cfg.scan_backend}
        if state is None:
            y = selective_scan(x, dt, A, B, C, **scan_args)  # (b, d, l)
        else:
            y, final = selective_scan(x, dt, A, B, C, initial_state=state["ssm"], return_final_state=True, **scan_args)
            state["ssm"] = final.to(state["ssm"].dtype)
        # 6. output projection
        return self.out_proj(y.transpose(1, 2))  # (b, l, d_model)

    # Recurrent mode (decode) ----------------------------------------------------------------------------------
    def step(self, hidden: torch.Tensor, state: dict, seqlen=None) -> torch.Tensor:
        """hidden (b, d_model) -> (b, d_model), advancing `state` by one token in place: the steps of `forward`
        for one position (mambalab/ops/mixer_step.py; two Triton launches where the scan runs in Triton)."""
        return self.out_proj(self._step_ssm(hidden, state))  # (b, d_model)

    def step_into_residual(self, hidden: torch.Tensor, state: dict, seqlen, residual: torch.Tensor) -> torch.Tensor:
        """residual + step(hidden, state) in residual's dtype (see Block). Up to MAX_ROWS rows, where the fused
        kernels run and no gradient is recorded, out_proj and the add are one Triton launch (ops/triton/linear.py:
        cuBLAS takes 4-6 µs for this matrix-vector product at batch 1)."""
        y = self._step_ssm(hidden, state)  # (b, d)
        if self._fused_out_proj(y, residual):
            from mambalab.ops.triton.linear import skinny_linear

            return skinny_linear(y, self.out_proj.weight, residual)  # (b, d_model)
        return add_residual(residual, self.out_proj(y))

    def _step_ssm(self, hidden: torch.Tensor, state: dict) -> torch.Tensor:
        """Steps 1-5 of one token: hidden (b, d_model) -> y (b, d), before out_proj."""
        xz = self.in_proj(hidden)  # (b, 2d)
        x, z = xz.chunk(2, dim=-1)  # (b, d)
        conv_weight = self.conv1d.weight.squeeze(1)  # (d, w)
        if not self.uses_selective_scan:
            x = causal_conv1d_update(x, state["conv"], conv_weight, self.conv1d.bias, "silu")  # (b, d)
            return self._ablation_ssm(x[..., None], z[..., None], state)[..., 0]  # (b, d)
        step = mixer_step_fused if self._fused_kernels(x) else mixer_step
        return step(x, z, state["conv"], state["ssm"], conv_weight, self.conv1d.bias, self.x_proj.weight,
                    self.dt_proj.weight, self.dt_proj.bias, self.A_log, self.D)  # (b, d)

    def _fused_out_proj(self, y: torch.Tensor, residual: torch.Tensor) -> bool:
        from mambalab.ops.triton.linear import MAX_ROWS

        weight = self.out_proj.weight
        return (y.shape[0] <= MAX_ROWS and self.out_proj.bias is None and self._fused_kernels(y)
                and y.dtype == weight.dtype and torch.promote_types(y.dtype, residual.dtype) == residual.dtype
                and not records_grad(weight, y))

    def _fused_kernels(self, x: torch.Tensor) -> bool:
        """Run the conv (sequence and decode step) and the SSM step through the fused Triton kernels where the
        scan itself runs in Triton (CUDA)."""
        return x.dtype != torch.float64 and resolve_backend(self.cfg.scan_backend, x.device) == "triton"

    # Ablation switches ------------------------------------------------------------------------------------------
    def _ablation_ssm(self, x: torch.Tensor, z: torch.Tensor, state: dict | None) -> torch.Tensor:
        """The SSM of the non-default switches: x, z (b, d, l) after the conv -> y (b, d, l).

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
