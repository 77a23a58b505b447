"""The Mamba-1 mixer: the block of Figure 3 of arXiv 2312.00752 ("Mamba: Linear-Time Sequence Modeling with
Selective State Spaces"), parameter names as HF transformers' `MambaMixer` (checkpoints load unchanged).
Official implementation: `Mamba` in state-spaces/mamba, mamba_ssm/modules/mamba_simple.py.

Shapes: b batch, l length, d_model model width, d = d_inner = expand·d_model, n = d_state, r = dt_rank.

The steps of `forward` (one token at a time in `step`):
    1. in_proj: x, z = split(W_in · hidden)                     the SSM branch and the gate
    2. causal depthwise conv over time (width d_conv)            ops/causal_conv1d
    3. SiLU
    4. x_proj: Δ (low rank r, then dt_proj), B, C from x         the selection mechanism (Algorithm 2)
    5. selective scan: Δ = softplus(Δ + bias), h_t = exp(Δ A) h_{t-1} + Δ B x_t, y = C h + D x, y · SiLU(z)
                                                                 ops/selective_scan (one step: ops/state_update)
    6. out_proj
Each op runs the backend named by `SSMConfig.scan_backend` where it has one of that name ("reference",
"triton"), else its own "auto" (see `Mamba.kernel_backends`).

`A_init` (the init of A) is an option of this class; the other ablation switches of SSMConfig (discretization,
selective, selective_A) change steps 4-5 and live in `MambaAblation` (layers/mamba_ablations.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mambalab.config import ModelConfig, SSMConfig
from mambalab.errors import InputError
from mambalab.inference.state_dtype import resolve_state_dtype
from mambalab.layers.residual import project_deferred
from mambalab.ops import backends
from mambalab.ops.causal_conv1d import OP as CONV_OP
from mambalab.ops.causal_conv1d import UPDATE_OP as CONV_UPDATE_OP
from mambalab.ops.causal_conv1d import causal_conv1d
from mambalab.ops.hippo import s4d_init
from mambalab.ops.selective_scan import OP as SCAN_OP
from mambalab.ops.selective_scan import selective_scan
from mambalab.ops.state_update import MIXER_STEP_OP, mixer_step
from mambalab.ops.triton import resolve_for


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))  # softplus(inverse_softplus(y)) == y


def restore_float32(params) -> None:
    """Put parameters that a cast made float16/bfloat16 back to float32 (SSM parameters need the range)."""
    for p in params:
        if p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()


class Mamba(nn.Module):
    uses_selective_scan = True  # steps 4-5 through `selective_scan` (MambaAblation: its own recurrences)

    def __init__(self, d_model: int, ssm: SSMConfig | None = None, layer_idx: int = 0):
        super().__init__()
        ssm = ssm or SSMConfig()
        if self.uses_selective_scan and not self.runs_paper_ssm(ssm):
            raise InputError(
                "Mamba: SSMConfig(discretization, selective, selective_A) must be the paper's ('mamba', True, False)"
                f", got ({ssm.discretization!r}, {ssm.selective}, {ssm.selective_A}); the ablations are "
                "mambalab.layers.mamba_ablations.MambaAblation (mamba_class(ssm) picks the class)"
            )
        self.d_model, self.layer_idx, self.cfg = d_model, layer_idx, ssm
        self.d_inner = int(ssm.expand * d_model)  # official: expand may be a float such as 2.0
        self.d_state, self.d_conv = ssm.d_state, ssm.d_conv
        self.dt_rank = ssm.dt_rank_for(d_model)
        d, n, r = self.d_inner, self.d_state, self.dt_rank

        self.in_proj = nn.Linear(d_model, 2 * d, bias=ssm.bias)
        self.conv1d = nn.Conv1d(d, d, ssm.d_conv, groups=d, padding=ssm.d_conv - 1, bias=ssm.conv_bias)
        self._make_selection(d, n, r)
        self.A_log = nn.Parameter(torch.empty(d, n))
        self.D = nn.Parameter(torch.empty(d))
        self.out_proj = nn.Linear(d, d_model, bias=ssm.bias)
        self.reset_ssm_parameters()

    @staticmethod
    def runs_paper_ssm(ssm: SSMConfig) -> bool:
        """True when SSMConfig's ablation switches are the paper's Mamba (what this class runs)."""
        return ssm.selective and not ssm.selective_A and ssm.discretization == "mamba"

    def _make_selection(self, d: int, n: int, r: int) -> None:
        """The projections of step 4: x_proj (d -> r + 2n: Δ's low rank, B, C) and dt_proj (r -> d)."""
        self.x_proj = nn.Linear(d, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, d, bias=True)

    @classmethod
    def from_config(cls, config: ModelConfig, layer_idx: int) -> Mamba:
        return cls(config.d_model, config.ssm, layer_idx=layer_idx)

    @property
    def delta_bias(self) -> nn.Parameter:
        """Δ's bias (d,)."""
        return self.dt_proj.bias

    def _fp32_params(self) -> list[nn.Parameter]:
        return [self.A_log, self.D, self.delta_bias]

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """A from `A_init` (S4D-Real: A = −(1..N)), D = 1, and Δ's bias so that softplus(bias) is log-uniform
        in [dt_min, dt_max] (the paper's Section 3.6 and the official init)."""
        cfg, d, n = self.cfg, self.d_inner, self.d_state
        log_dt = torch.rand(d) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)
        dt = log_dt.exp().clamp(min=cfg.dt_init_floor)
        self._reset_selection()
        self.delta_bias.copy_(inverse_softplus(dt))
        if cfg.A_init == "random":
            self.A_log.normal_()  # A = −exp(N(0, 1))
        else:
            self.A_log.copy_(torch.log(-s4d_init(cfg.A_init, n, dtype=torch.complex64).real).repeat(d, 1))
        self.D.fill_(1.0)
        for p in self._fp32_params():
            p._no_weight_decay = True

    def _reset_selection(self) -> None:
        """dt_proj's weight: constant or uniform with scale dt_rank^-1/2 · dt_scale."""
        dt_std = self.dt_rank**-0.5 * self.cfg.dt_scale
        if self.cfg.dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -dt_std, dt_std)

    def _apply(self, fn, recurse=True):
        """Casting the model (e.g. .to(bfloat16)) keeps A_log, D and the Δ bias in float32."""
        super()._apply(fn, recurse)
        restore_float32(self._fp32_params())
        return self

    # Kernels ------------------------------------------------------------------------------------------------
    def _backend(self, op: str) -> str:
        """The backend name the mixer passes to `op`: scan_backend where op has a backend of that name, else
        "auto" (e.g. scan_backend="cpu": the conv and the step run their own "auto")."""
        name = self.cfg.scan_backend
        return name if name in backends.names(op) else "auto"

    def kernel_backends(self, x: torch.Tensor) -> dict[str, str]:
        """The backend each op of the mixer resolves to for tensors like x."""
        ops = (CONV_OP, CONV_UPDATE_OP, MIXER_STEP_OP)
        return {SCAN_OP: backends.resolve(SCAN_OP, self.cfg.scan_backend, x.device),
                **{op: resolve_for(op, self._backend(op), x) for op in ops}}

    # State ------------------------------------------------------------------------------------------------
    def allocate_state(self, batch_size: int, device=None, dtype=None, state_dtype=None) -> dict[str, torch.Tensor]:
        """Zero states: the conv window in `dtype` (default: the model's), the SSM state in `state_dtype`
        (mambalab/inference/state_dtype.py: default float32, float64 for a float64 model)."""
        dtype = dtype or self.in_proj.weight.dtype
        ssm_dtype = resolve_state_dtype(state_dtype, dtype)
        return {
            "conv": torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype),  # (b, d, w)
            "ssm": torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=ssm_dtype),  # (b, d, n)
        }

    # Parallel mode (training, prefill) -----------------------------------------------------------------------
    def forward(self, hidden: torch.Tensor, state: dict | None = None, seqlen=None) -> torch.Tensor:
        """hidden (b, l, d_model) -> (b, l, d_model). With `state`, start from it and leave the final state in it."""
        # 1. input projection, split into the SSM branch x and the gate z
        xz = self.in_proj(hidden).transpose(1, 2)  # (b, 2d, l)
        x, z = xz.chunk(2, dim=1)  # (b, d, l) each
        # 2. causal depthwise conv, 3. SiLU
        conv_args = (self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu")  # weight (d, w)
        backend = self._backend(CONV_OP)
        if state is None:
            x = causal_conv1d(x, *conv_args, backend=backend)  # (b, d, l)
        else:
            x, conv_state = causal_conv1d(x, *conv_args, initial_state=state["conv"], return_final_state=True,
                                          backend=backend)
            state["conv"] = conv_state.to(xz.dtype)  # (b, d, w)
        # 4.-5. selection and SSM
        y = self._ssm(x, z, state)  # (b, d, l)
        # 6. output projection
        return self.out_proj(y.transpose(1, 2))  # (b, l, d_model)

    def _ssm(self, x: torch.Tensor, z: torch.Tensor, state: dict | None) -> torch.Tensor:
        """Steps 4-5: x, z (b, d, l) after the conv -> y (b, d, l); with `state`, from and into state["ssm"]."""
        n, r = self.d_state, self.dt_rank
        # 4. x_proj gives the input-dependent Δ (low rank), B and C
        x_dbl = self.x_proj(x.transpose(1, 2))  # (b, l, r + 2n)
        dt, B, C = x_dbl.split([r, n, n], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # Δ before bias/softplus (b, d, l)
        B = B.transpose(1, 2)  # (b, n, l)
        C = C.transpose(1, 2)  # (b, n, l)
        # 5. selective scan: Δ = softplus(dt + bias), h_t = exp(ΔA) h + ΔB x, y = C h + D x, y *= silu(z)
        A = -torch.exp(self.A_log.float() if self.A_log.dtype != torch.float64 else self.A_log)  # A  (d, n)
        scan_args = {"D": self.D, "z": z, "delta_bias": self.dt_proj.bias, "delta_softplus": True,
                     "backend": self.cfg.scan_backend}
        if state is None:
            return selective_scan(x, dt, A, B, C, **scan_args)  # (b, d, l)
        y, final = selective_scan(x, dt, A, B, C, initial_state=state["ssm"], return_final_state=True, **scan_args)
        state["ssm"] = final.to(state["ssm"].dtype)
        return y

    # Recurrent mode (decode) ----------------------------------------------------------------------------------
    def step(self, hidden: torch.Tensor, state: dict, seqlen=None) -> torch.Tensor:
        """hidden (b, d_model) -> (b, d_model), advancing `state` by one token in place: the steps of `forward`
        for one position."""
        return self.out_proj(self._step_ssm(hidden, state))  # (b, d_model)

    def step_deferred(self, hidden: torch.Tensor, state: dict, seqlen,
                      residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`step` with the block's residual add: (residual + step(hidden, state), None), or (residual,
        step(hidden, state)) with the add left to the next norm (see Block.step_deferred). Up to MAX_ROWS rows,
        where the mixer step runs in Triton and no gradient is recorded, out_proj and the add are one Triton
        launch (ops/triton/linear.py; at batch 1 this matrix-vector product is launch-bound in cuBLAS)."""
        y = self._step_ssm(hidden, state)  # (b, d)
        triton = resolve_for(MIXER_STEP_OP, self._backend(MIXER_STEP_OP), y) == "triton"
        return project_deferred(y, self.out_proj, residual, triton)  # (b, d_model), (b, d_model) or None

    def _step_ssm(self, hidden: torch.Tensor, state: dict) -> torch.Tensor:
        """Steps 1-5 of one token: hidden (b, d_model) -> y (b, d), before out_proj (ops/state_update `mixer_step`)."""
        xz = self.in_proj(hidden)  # (b, 2d)
        x, z = xz.chunk(2, dim=-1)  # (b, d)
        return mixer_step(x, z, state["conv"], state["ssm"], self.conv1d.weight.squeeze(1), self.conv1d.bias,
                          self.x_proj.weight, self.dt_proj.weight, self.dt_proj.bias, self.A_log, self.D,
                          backend=self._backend(MIXER_STEP_OP))  # (b, d)

