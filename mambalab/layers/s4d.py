"""S4D mixer: a diagonal LTI SSM per channel (arXiv 2206.11893), in CNN or RNN mode, with a gated output.

Shapes: b batch, l length, d_model model width, H = expand·d_model SSM channels, n = d_state/2 complex modes
(each stands for a conjugate pair, so the output takes 2·Re). Parameters, per channel h and mode n:

    log_dt (H,)        Δ = exp(log_dt), log-uniform in [dt_min, dt_max] at init
    A_log, A_imag      A = −exp(A_log) + i·A_imag (the real part stays negative: a stable SSM)
    B, C (H, n, 2)     complex numbers stored as (real, imaginary) pairs; B = 1, C ~ CN(0, 1) at init
    D (H,)             skip connection

Forward: in_proj (only when expand > 1 or gate = "silu") → SSM (y = K * x + D x) → output gate:
"glu" is the S4D paper's layer (GELU, then Linear(H, 2·d_model) and GLU); "silu" is Mamba-like
(y·SiLU(z) with z from in_proj, then Linear(H, d_model)).

State: {"ssm": (b, H, n, 2)} — the complex state h as (real, imaginary) pairs, float32 (float64 for a
float64 model) or the chosen state dtype (inference/state_dtype.py; computed in float32 all the same). A
parallel forward given a state continues from it in either mode; in CNN mode the initial state's contribution
Re(C Ā^{k+1} h0) and the final state come from the same Vandermonde matrix as the kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mambalab.config import ModelConfig, S4DConfig
from mambalab.inference.state_dtype import resolve_state_dtype
from mambalab.layers.mamba import restore_float32
from mambalab.ops.hippo import discretize_diagonal, s4d_init
from mambalab.ops.s4d import s4d_cnn, s4d_rnn, s4d_step

SSM_PARAMS = ("log_dt", "A_log", "A_imag", "B", "C", "D")  # float32 whatever the model's dtype


class S4DMixer(nn.Module):
    def __init__(self, d_model: int, cfg: S4DConfig | None = None, layer_idx: int = 0):
        super().__init__()
        cfg = cfg or S4DConfig()
        self.cfg, self.layer_idx, self.d_model = cfg, layer_idx, d_model
        self.d_inner = H = cfg.expand * d_model
        self.n_modes = n = cfg.d_state // 2
        if cfg.gate == "silu":
            self.in_proj = nn.Linear(d_model, 2 * H, bias=False)  # x and the gate z
            self.out_proj = nn.Linear(H, d_model, bias=False)
        else:
            self.in_proj = nn.Linear(d_model, H, bias=False) if H != d_model else nn.Identity()
            self.out_proj = nn.Linear(H, 2 * d_model, bias=False)  # halved by the GLU
        self.log_dt = nn.Parameter(torch.empty(H))
        self.A_log = nn.Parameter(torch.empty(H, n))
        self.A_imag = nn.Parameter(torch.empty(H, n))
        self.B = nn.Parameter(torch.empty(H, n, 2))
        self.C = nn.Parameter(torch.empty(H, n, 2))
        self.D = nn.Parameter(torch.empty(H))
        self.reset_ssm_parameters()

    @classmethod
    def from_config(cls, config: ModelConfig, layer_idx: int) -> S4DMixer:
        return cls(config.d_model, config.s4d, layer_idx=layer_idx)

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        cfg, H = self.cfg, self.d_inner
        log_lo, log_hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
        self.log_dt.copy_(torch.rand(H) * (log_hi - log_lo) + log_lo)
        A = torch.stack([s4d_init(cfg.init, self.n_modes) for _ in range(H)])  # (H, n) complex
        self.A_log.copy_(torch.log(-A.real))
        self.A_imag.copy_(A.imag)
        self.B.copy_(torch.view_as_real(torch.ones(H, self.n_modes, dtype=torch.complex64)))
        self.C.copy_(torch.view_as_real(torch.randn(H, self.n_modes, dtype=torch.complex64)))
        self.D.copy_(torch.randn(H))
        for name in ("log_dt", "A_log", "A_imag", "D"):
            getattr(self, name)._no_weight_decay = True

    def _apply(self, fn, recurse=True):
        """Casting the model to float16/bfloat16 keeps the SSM parameters in float32."""
        super()._apply(fn, recurse)
        restore_float32(getattr(self, name) for name in SSM_PARAMS)
        return self

    def discrete_ssm(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Ā, B̄, 2·C), each (H, n) complex, from the continuous parameters and the chosen discretization."""
        A = torch.complex(-torch.exp(self.A_log), self.A_imag)  # (H, n)
        B, C = torch.view_as_complex(self.B), torch.view_as_complex(self.C)  # (H, n)
        dA, dB = discretize_diagonal(A, B, torch.exp(self.log_dt)[:, None], self.cfg.discretization)
        return dA, dB, 2 * C  # conjugate pairs: y = 2·Re(C·h)

    # State --------------------------------------------------------------------------------------------------
    def allocate_state(self, batch_size: int, device=None, dtype=None, state_dtype=None) -> dict[str, torch.Tensor]:
        """The zero state in `state_dtype` (mambalab/inference/state_dtype.py: default float32, float64 for a
        float64 model); `dtype` (default: the model's) only decides that default."""
        dtype = resolve_state_dtype(state_dtype, dtype or self.D.dtype)
        return {"ssm": torch.zeros(batch_size, self.d_inner, self.n_modes, 2, device=device, dtype=dtype)}

    def _complex_state(self, state: dict) -> torch.Tensor:
        """The state (b, H, n) as complex numbers in float32 (float64): a view of state["ssm"] when it is stored
        at that precision, else an upcast copy (a 16-bit state)."""
        real = torch.float64 if state["ssm"].dtype == torch.float64 else torch.float32
        return torch.view_as_complex(state["ssm"].to(real))

    # Shared by both modes: projections and gate on channel-last tensors ------------------------------------
    def _project_in(self, hidden: torch.Tensor):
        """(..., d_model) -> x (..., H) and the gate z (..., H) or None."""
        xz = self.in_proj(hidden)
        return xz.chunk(2, dim=-1) if self.cfg.gate == "silu" else (xz, None)

    def _project_out(self, y: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """y (..., H) -> (..., d_model)."""
        if self.cfg.gate == "silu":
            return self.out_proj(y * F.silu(z))
        return F.glu(self.out_proj(F.gelu(y)), dim=-1)

    # Parallel mode --------------------------------------------------------------------------------------------
    def forward(self, hidden: torch.Tensor, state: dict | None = None, seqlen=None) -> torch.Tensor:
        """hidden (b, l, d_model) -> (b, l, d_model); with `state`, continue from it and leave the final state."""
        # 1. input projection
        x, z = self._project_in(hidden)  # (b, l, H) each
        # 2. the SSM y = K * x + D x (CNN mode) or its recurrence (RNN mode), from the same Ā, B̄, C
        dA, dB, C = self.discrete_ssm()
        ssm = s4d_cnn if self.cfg.mode == "cnn" else s4d_rnn
        u = x.transpose(1, 2)  # (b, H, l)
        if state is None:
            y = ssm(u, dA, dB, C, self.D)  # (b, H, l)
        else:
            h0 = self._complex_state(state)  # (b, H, n)
            y, final = ssm(u, dA, dB, C, self.D, initial_state=h0, return_final_state=True)
            state["ssm"].copy_(torch.view_as_real(final))
        # 3. gate and output projection
        return self._project_out(y.transpose(1, 2), z)  # (b, l, d_model)

    # Recurrent mode -------------------------------------------------------------------------------------------
    def step(self, hidden: torch.Tensor, state: dict, seqlen=None) -> torch.Tensor:
        """hidden (b, d_model) -> (b, d_model), advancing `state` by one token in place."""
        x, z = self._project_in(hidden)  # (b, H)
        dA, dB, C = self.discrete_ssm()
        h = self._complex_state(state)  # (b, H, n)
        y = s4d_step(x, h, dA, dB, C, self.D)  # (b, H); advances h in place
        if h.data_ptr() != state["ssm"].data_ptr():  # an upcast copy of a 16-bit state: round it back
            state["ssm"].copy_(torch.view_as_real(h))
        return self._project_out(y, z)  # (b, d_model)
