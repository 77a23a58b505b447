"""The Mamba-2 mixer (SSD; Figure 6 of arXiv 2405.21060), parameter names as HF transformers' `Mamba2Mixer`.

Shapes: b batch, l length, d_model model width, d = d_inner = expand·d_model, h heads, p = head_dim (h·p = d),
g = n_groups (the heads of a group share B and C), n = d_state, w = d_conv, conv_dim = d + 2·g·n.

What changes from Mamba-1 (layers/mamba.py): A is one scalar per head; Δ is one scalar per head and token,
straight out of in_proj (no x_proj / dt_proj); B and C come out of in_proj beside x ("parallel projections")
and go through the causal conv with it; and the gated output y·SiLU(z) is normalised (grouped RMSNorm)
before out_proj. The state of a head is a (p, n) matrix: h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t ⊗ B_t,
y_t = h_t C_t + D x_t (`mambalab.ops.ssd`).
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from mambalab.config import Mamba2Config, ModelConfig
from mambalab.inference.state_dtype import resolve_state_dtype
from mambalab.layers.mamba import inverse_softplus, restore_float32
from mambalab.layers.residual import project_deferred
from mambalab.ops import backends
from mambalab.ops import triton as kernels
from mambalab.ops.causal_conv1d import OP as CONV_OP
from mambalab.ops.causal_conv1d import UPDATE_OP as CONV_UPDATE_OP
from mambalab.ops.causal_conv1d import causal_conv1d, causal_conv1d_update
from mambalab.ops.ssd import OP as SSD_OP
from mambalab.ops.ssd import STEP_OP as SSD_STEP_OP
from mambalab.ops.ssd import ssd_scan
from mambalab.ops.triton import resolve_for


def gated_rms_norm_composition(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, group_size: int,
                               eps: float) -> torch.Tensor:
    """The gated norm as torch ops: y, z (..., d), weight (d,) -> (..., d); see `GatedRMSNorm`."""
    dtype = y.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    gated = y.to(compute) * F.silu(z.to(compute))  # (..., d)
    groups = gated.unflatten(-1, (-1, group_size))  # (..., g, d/g)
    groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + eps)
    return weight * groups.flatten(-2).to(dtype)  # (..., d)


class GatedRMSNorm(nn.Module):
    """RMSNorm(y · SiLU(z)) · weight over groups of `group_size` channels, in float32 (float64 for float64
    inputs): official Mamba-2's `RMSNormGated` with norm_before_gate=False, HF's `Mamba2RMSNormGated`."""

    def __init__(self, d: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # (..., d), (..., d) -> (..., d)
        """Where the Triton kernels run (CUDA), one fused launch forward and one backward
        (mambalab/ops/triton/gated_norm.py) instead of the composition's ~10 kernels and ~20 backward. The
        composition is the reference (CPU, float64) and runs inside torch.compile, whose inductor fuses it
        with its neighbours. Under autocast the output is in autocast's dtype: the mixer's out_proj would cast
        it to that dtype anyway, so the values are the same and the float32 copy (written, read, cast, and
        its gradient cast back) is never made."""
        out_dtype = torch.get_autocast_dtype(y.device.type) if torch.is_autocast_enabled(y.device.type) else None
        if self._fused(y):
            from mambalab.ops.triton.gated_norm import gated_rms_norm

            return gated_rms_norm(y, z, self.weight, self.group_size, self.eps, out_dtype)
        out = gated_rms_norm_composition(y, z, self.weight, self.group_size, self.eps)
        return out if out_dtype is None else out.to(out_dtype)

    def _fused(self, y: torch.Tensor) -> bool:
        if torch.float64 in (y.dtype, self.weight.dtype) or torch.compiler.is_compiling():
            return False
        return kernels.runs_on(y.device)


class Mamba2(nn.Module):
    """The Mamba-2 mixer: `forward` runs steps 1-6 of Figure 6 over a sequence, `step` over one token."""

    def __init__(self, d_model: int, cfg: Mamba2Config | None = None, layer_idx: int = 0):
        super().__init__()
        cfg = cfg or Mamba2Config()
        self.d_model, self.layer_idx, self.cfg = d_model, layer_idx, cfg
        self.d_inner = cfg.expand * d_model
        self.n_heads = cfg.n_heads(d_model)
        self.head_dim, self.n_groups, self.d_state = cfg.head_dim, cfg.n_groups, cfg.d_state
        self.d_conv = cfg.d_conv
        d, h, g, n = self.d_inner, self.n_heads, self.n_groups, self.d_state
        self.conv_dim = d + 2 * g * n

        self.in_proj = nn.Linear(d_model, d + self.conv_dim + h, bias=cfg.bias)  # -> z, x, B, C, Δ
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv, groups=self.conv_dim,
                                padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(h))
        self.A_log = nn.Parameter(torch.empty(h))
        self.D = nn.Parameter(torch.empty(d if cfg.D_has_hdim else h))
        self.norm = GatedRMSNorm(d, d // g, cfg.rmsnorm_eps)
        self.out_proj = nn.Linear(d, d_model, bias=cfg.bias)
        for p in self._fp32_params():  # SSM parameters: float32 whatever the model's dtype, no weight decay
            p._no_weight_decay = True
        self.reset_ssm_parameters()

    @classmethod
    def from_config(cls, config: ModelConfig, layer_idx: int) -> Mamba2:
        return cls(config.d_model, config.mamba2, layer_idx=layer_idx)

    def _fp32_params(self) -> list[nn.Parameter]:
        return [self.A_log, self.D, self.dt_bias]

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """A = −U(A_init_range) per head, D = 1, and dt_bias such that softplus(dt_bias) is log-uniform in
        [dt_min, dt_max] (floored at dt_init_floor), as official Mamba-2 initialises them."""
        cfg, h = self.cfg, self.n_heads
        log_dt = torch.rand(h) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)
        self.dt_bias.copy_(inverse_softplus(log_dt.exp().clamp(min=cfg.dt_init_floor)))
        self.A_log.copy_(torch.empty(h).uniform_(*cfg.A_init_range).log())
        self.D.fill_(1.0)

    def _apply(self, fn, recurse=True):
        """Casting the model (e.g. .to(bfloat16)) keeps A_log, D and dt_bias in float32."""
        super()._apply(fn, recurse)
        restore_float32(self._fp32_params())
        return self

    def _A(self) -> torch.Tensor:
        """A (h,) = −exp(A_log) in float32 (float64 for a float64 model)."""
        return -torch.exp(self.A_log if self.A_log.dtype == torch.float64 else self.A_log.float())  # (h,)

    def _D(self) -> torch.Tensor:
        """D, (h,) or (h, p) (a view)."""
        return self.D.unflatten(0, (self.n_heads, self.head_dim)) if self.cfg.D_has_hdim else self.D

    # Kernels ----------------------------------------------------------------------------------------
    def _backend(self, op: str) -> str:
        """The backend name the mixer passes to `op`: ssd_backend where op has a backend of that name
        ("reference", "triton"), else "auto" (e.g. ssd_backend="torch", which only SSD has: the conv and the
        decode step run their own "auto")."""
        name = self.cfg.ssd_backend
        return name if name in backends.names(op) else "auto"

    def kernel_backends(self, x: torch.Tensor) -> dict[str, str]:
        """The backend each op of the mixer resolves to for tensors like x."""
        return {SSD_OP: backends.resolve(SSD_OP, self.cfg.ssd_backend, x.device),
                SSD_STEP_OP: backends.resolve(SSD_STEP_OP, self._backend(SSD_STEP_OP), x.device),
                **{op: resolve_for(op, self._backend(op), x) for op in (CONV_OP, CONV_UPDATE_OP)}}

    # State --------------------------------------------------------------------------------------------
    def allocate_state(self, batch_size: int, device=None, dtype=None, state_dtype=None) -> dict[str, torch.Tensor]:
        """Zero states: the conv window in `dtype` (default: the model's), the SSM state in `state_dtype`
        (mambalab/inference/state_dtype.py: default float32, float64 for a float64 model)."""
        dtype = dtype or self.in_proj.weight.dtype
        ssm_dtype = resolve_state_dtype(state_dtype, dtype)
        b, w, h, p, n = batch_size, self.d_conv, self.n_heads, self.head_dim, self.d_state
        return {
            "conv": torch.zeros(b, self.conv_dim, w, device=device, dtype=dtype),  # (b, conv_dim, w)
            "ssm": torch.zeros(b, h, p, n, device=device, dtype=ssm_dtype),  # (b, h, p, n)
        }

    # Parallel mode (training, prefill) ----------------------------------------------------------------
    def forward(self, hidden: torch.Tensor, state: dict | None = None, seqlen=None) -> torch.Tensor:
        """hidden (b, l, d_model) -> (b, l, d_model). With `state`, start from it and leave the final state
        in it (in place)."""
        d, h, p, g, n = self.d_inner, self.n_heads, self.head_dim, self.n_groups, self.d_state
        # 1. input projection: the gate z, the SSM input x with B and C, and Δ (one per head), all at once
        z, xBC, dt = self.in_proj(hidden).split([d, self.conv_dim, h], dim=-1)  # (b, l, d|conv_dim|h)
        # 2. causal depthwise conv over x, B and C together, 3. SiLU
        conv_args = (self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu")  # weight (conv_dim, w)
        backend = self._backend(CONV_OP)
        if state is None:
            xBC = causal_conv1d(xBC.transpose(1, 2), *conv_args, backend=backend)  # (b, conv_dim, l)
        else:
            xBC, conv_state = causal_conv1d(xBC.transpose(1, 2), *conv_args, initial_state=state["conv"],
                                            return_final_state=True, backend=backend)  # (b, conv_dim, l|w)
            state["conv"].copy_(conv_state)
        x, B, C = xBC.transpose(1, 2).split([d, g * n, g * n], dim=-1)  # (b, l, d|g·n|g·n)
        # 4. SSD: Δ = softplus(dt + dt_bias), h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t ⊗ B_t, y_t = h_t C_t + D x_t
        A, D = self._A(), self._D()
        args = {"D": D, "dt_bias": self.dt_bias, "dt_softplus": True, "chunk_size": self.cfg.chunk_size,
                "backend": self.cfg.ssd_backend}
        heads = (x.unflatten(-1, (h, p)), dt, A, B.unflatten(-1, (g, n)), C.unflatten(-1, (g, n)))
        if state is None:
            y = ssd_scan(*heads, **args)  # (b, l, h, p)
        else:
            y, final = ssd_scan(*heads, initial_state=state["ssm"], return_final_state=True, **args)
            state["ssm"].copy_(final)
        # 5. gated RMSNorm: norm(y · SiLU(z))
        y = self.norm(y.flatten(-2), z)  # (b, l, d)
        # 6. output projection
        return self.out_proj(y)  # (b, l, d_model)

    # Recurrent mode (decode) --------------------------------------------------------------------------
    def step(self, hidden: torch.Tensor, state: dict, seqlen=None) -> torch.Tensor:
        """hidden (b, d_model) -> (b, d_model), advancing `state` by one token in place: the steps of
        `forward` for one position."""
        return self.out_proj(self._step_normed(hidden, state))  # (b, d_model)

    def step_deferred(self, hidden: torch.Tensor, state: dict, seqlen,
                      residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`step` with the block's residual add, as Mamba.step_deferred: out_proj and the add in one Triton
        launch at batch ≤ 4 where the SSD step runs in Triton, else the add left to the next norm
        (layers/residual.py)."""
        y = self._step_normed(hidden, state)  # (b, d)
        triton = backends.resolve(SSD_STEP_OP, self._backend(SSD_STEP_OP), y.device) == "triton"
        return project_deferred(y, self.out_proj, residual, triton)  # (b, d_model), (b, d_model) or None

    def _step_normed(self, hidden: torch.Tensor, state: dict) -> torch.Tensor:
        """Steps 1-5 of one token: hidden (b, d_model) -> the gated norm's output (b, d), before out_proj."""
        d, h, p, g, n = self.d_inner, self.n_heads, self.head_dim, self.n_groups, self.d_state
        z, xBC, dt = self.in_proj(hidden).split([d, self.conv_dim, h], dim=-1)  # (b, d|conv_dim|h)
        xBC = causal_conv1d_update(xBC, state["conv"], self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu",
                                   backend=self._backend(CONV_UPDATE_OP))  # (b, conv_dim)
        x, B, C = xBC.split([d, g * n, g * n], dim=-1)  # (b, d|g·n|g·n)
        step, A = self._ssd_step(x)
        heads = (x.unflatten(-1, (h, p)), dt, A, B.unflatten(-1, (g, n)), C.unflatten(-1, (g, n)))
        y = step(state["ssm"], *heads, D=self._D(), dt_bias=self.dt_bias, dt_softplus=True)  # (b, h, p)
        return self.norm(y.flatten(-2), z)  # (b, d)

    def _ssd_step(self, x: torch.Tensor):
        """(step, A): the backend of `ssd_state_update` for tensors like x, called without the op's argument
        checks, and the A it takes. The mixer builds every argument in the shapes the op expects (the state
        comes from `allocate_state`, a prefill, or a saved state fingerprinted against this model), with
        A = −exp(A_log) < 0, and the checks' test of A's values reads the GPU: a host sync per layer and token,
        which a CUDA graph's warm-up refuses. The Triton kernel takes A_log itself and computes A on chip (no
        launches of the mixer's own per layer and token for A); the other backends take A."""
        name = backends.resolve(SSD_STEP_OP, self._backend(SSD_STEP_OP), x.device)
        step = backends.get(SSD_STEP_OP, name)
        if name == "triton":
            return partial(step, A_is_log=True), self.A_log
        return step, self._A()
