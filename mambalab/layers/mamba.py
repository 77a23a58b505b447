"""The Mamba-1 mixer (Figure 3 of arXiv 2312.00752), parameter names as HF transformers' `MambaMixer`.

Shapes: b batch, l length, d_model model width, d = d_inner = expand·d_model, n = d_state, r = dt_rank.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mambalab.config import ModelConfig, SSMConfig
from mambalab.ops.conv1d import causal_conv1d, causal_conv1d_update
from mambalab.ops.selective_scan import selective_scan
from mambalab.ops.state_update import selective_state_update

# Parameters that stay float32 whatever dtype the model is cast to, and get no weight decay.
FP32_PARAMS = ("A_log", "D", "dt_proj.bias")


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))  # softplus(inverse_softplus(y)) == y


class Mamba(nn.Module):
    def __init__(self, d_model: int, ssm: SSMConfig | None = None, layer_idx: int = 0, n_layer: int = 1):
        super().__init__()
        ssm = ssm or SSMConfig()
        if ssm.A_init != "s4d_real" or ssm.discretization != "mamba" or not ssm.selective or ssm.selective_A:
            raise ValueError(
                "Mamba: the ablation switches A_init/discretization/selective/selective_A are not supported by this"
                " mixer yet (issue 5); use their defaults"
            )
        self.d_model, self.layer_idx, self.cfg = d_model, layer_idx, ssm
        self.d_inner = ssm.expand * d_model
        self.d_state, self.d_conv = ssm.d_state, ssm.d_conv
        self.dt_rank = math.ceil(d_model / 16) if ssm.dt_rank == "auto" else int(ssm.dt_rank)
        d, n, r = self.d_inner, self.d_state, self.dt_rank

        self.in_proj = nn.Linear(d_model, 2 * d, bias=ssm.bias)
        self.conv1d = nn.Conv1d(d, d, ssm.d_conv, groups=d, padding=ssm.d_conv - 1, bias=ssm.conv_bias)
        self.x_proj = nn.Linear(d, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, d, bias=True)
        self.A_log = nn.Parameter(torch.empty(d, n))
        self.D = nn.Parameter(torch.empty(d))
        self.out_proj = nn.Linear(d, d_model, bias=ssm.bias)
        self.reset_ssm_parameters()

    @classmethod
    def from_config(cls, config: ModelConfig, layer_idx: int) -> Mamba:
        return cls(config.d_model, config.ssm, layer_idx=layer_idx, n_layer=config.n_layer)

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """S4D-Real A, D = 1, and Δ's projection so that softplus(bias) is log-uniform in [dt_min, dt_max]."""
        cfg, d, n = self.cfg, self.d_inner, self.d_state
        dt_std = self.dt_rank**-0.5 * cfg.dt_scale
        if cfg.dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -dt_std, dt_std)
        log_dt = torch.rand(d) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)
        dt = log_dt.exp().clamp(min=cfg.dt_init_floor)
        self.dt_proj.bias.copy_(inverse_softplus(dt))
        self.A_log.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d, 1))  # A = -(1..N)
        self.D.fill_(1.0)
        for p in (self.A_log, self.D, self.dt_proj.bias):
            p._no_weight_decay = True

    def _apply(self, fn, recurse=True):
        """Casting the model (e.g. .to(bfloat16)) keeps A_log, D and the Δ bias in float32."""
        super()._apply(fn, recurse)
        for p in (self.A_log, self.D, self.dt_proj.bias):
            if p.dtype in (torch.float16, torch.bfloat16):
                p.data = p.data.float()
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
        if state is None:
            x = causal_conv1d(x, conv_weight, self.conv1d.bias, activation="silu")  # (b, d, l)
        else:
            x, state["conv"] = causal_conv1d(
                x, conv_weight, self.conv1d.bias, "silu", initial_state=state["conv"], return_final_state=True
            )
            state["conv"] = state["conv"].to(xz.dtype)
        # 4. x_proj gives the input-dependent Δ (low rank), B and C
        x_dbl = self.x_proj(x.transpose(1, 2))  # (b, l, r + 2n)
        dt, B, C = x_dbl.split([r, n, n], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # Δ before bias/softplus (b, d, l)
        B = B.transpose(1, 2)  # (b, n, l)
        C = C.transpose(1, 2)  # (b, n, l)
        # 5. selective scan: Δ = softplus(dt + bias), h_t = exp(ΔA) h + ΔB x, y = C h + D x, y *= silu(z)
        A, D, dt_bias = self._ssm_params()
        scan_args = dict(D=D, z=z, delta_bias=dt_bias, delta_softplus=True, backend=self.cfg.scan_backend)
        if state is None:
            y = selective_scan(x, dt, A, B, C, **scan_args)  # (b, d, l)
        else:
            y, final = selective_scan(x, dt, A, B, C, initial_state=state["ssm"], return_final_state=True, **scan_args)
            state["ssm"] = final.to(state["ssm"].dtype)
        # 6. output projection
        return self.out_proj(y.transpose(1, 2))  # (b, l, d_model)

    # Recurrent mode (decode) ----------------------------------------------------------------------------------
    def step(self, hidden: torch.Tensor, state: dict, seqlen=None) -> torch.Tensor:
        """hidden (b, d_model) -> (b, d_model), advancing `state` by one token in place."""
        n, r = self.d_state, self.dt_rank
        xz = self.in_proj(hidden)  # (b, 2d)
        x, z = xz.chunk(2, dim=-1)  # (b, d)
        x = causal_conv1d_update(x, state["conv"], self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu")  # (b, d)
        dt, B, C = self.x_proj(x).split([r, n, n], dim=-1)  # (b, r), (b, n), (b, n)
        dt = F.linear(dt, self.dt_proj.weight)  # (b, d)
        A, D, dt_bias = self._ssm_params()
        y = selective_state_update(state["ssm"], x, dt, A, B, C, D, z, dt_bias=dt_bias, dt_softplus=True)  # (b, d)
        return self.out_proj(y)  # (b, d_model)
