"""A residual block: x = x + mixer(norm(x)), then optionally x = x + ffn(norm2(x)).

Mixers and feed-forwards are looked up by the kind names of `ModelConfig.layer_pattern`. Each mixer class
implements `from_config(config, layer_idx)`, `forward(x, state=None, seqlen=None)`, `step(x, state, seqlen)`
and `allocate_state(batch, device, dtype, state_dtype)` (state_dtype: of an SSM state, see
inference/state_dtype.py); each feed-forward `from_config(config, layer_idx)` and `forward(x) -> (y, aux_loss
or None)`. A mixer may also implement `step_deferred(x, state, seqlen, residual)` -> (residual + step(x, state,
seqlen), None) with the add fused into its last kernel, or (residual, step(x, state, seqlen)) (Mamba, Mamba-2).

In recurrent mode the blocks defer each residual add to the next norm, which adds and normalises in one launch
(`step_deferred`, RMSNorm.add_then_norm): a decode step has no launch of its own per residual add.
"""

from __future__ import annotations

import torch
from torch import nn

from mambalab.config import ModelConfig, parse_layer_kind
from mambalab.layers.attention import Attention
from mambalab.layers.mamba import Mamba
from mambalab.layers.mamba2 import Mamba2
from mambalab.layers.mamba_ablations import mamba_class
from mambalab.layers.mlp import SwiGLU
from mambalab.layers.moe import MoE
from mambalab.layers.norm import RMSNorm
from mambalab.layers.residual import add_residual
from mambalab.layers.s4d import S4DMixer

# The classes of the kinds of `ModelConfig.layer_pattern` (config.MIXER_KINDS / FFN_KINDS name them).
# "mamba" is the paper's `Mamba`, or `MambaAblation` when an ablation switch of SSMConfig is on (`mamba_class`).
MIXERS: dict[str, type[nn.Module]] = {"mamba": Mamba, "attention": Attention, "s4d": S4DMixer, "mamba2": Mamba2}
FFNS: dict[str, type[nn.Module]] = {"mlp": SwiGLU, "moe": MoE}


def mixer_class(kind: str, config: ModelConfig) -> type[nn.Module]:
    """The class of a layer's mixer of this kind under this config."""
    return mamba_class(config.ssm) if kind == "mamba" else MIXERS[kind]


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        mixer_kind, ffn_kind = parse_layer_kind(config.layer_pattern[layer_idx])
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.mixer = mixer_class(mixer_kind, config).from_config(config, layer_idx)
        if ffn_kind is not None:
            self.norm2 = RMSNorm(config.d_model, config.norm_eps)
            self.mlp = FFNS[ffn_kind].from_config(config, layer_idx)
        else:
            self.norm2 = self.mlp = None

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() if self.residual_in_fp32 and x.dtype != torch.float64 else x

    def _ffn(self, x: torch.Tensor):
        if self.mlp is None:
            return x, None
        y, aux = self.mlp(self.norm2(x, round_to_weight_dtype=True))
        return add_residual(x, y), aux

    def forward(self, x, state: dict | None = None, seqlen=None):
        """x (b, l, d_model) -> (x, aux_loss or None)."""
        x = self._residual(x)
        x = add_residual(x, self.mixer(self.norm(x, round_to_weight_dtype=True), state=state, seqlen=seqlen))
        return self._ffn(x)

    def step(self, x, state: dict, seqlen):
        """x (b, d_model) -> (b, d_model), one token of recurrent mode."""
        x, pending = self.step_deferred(x, None, state, seqlen)
        return x if pending is None else add_residual(x, pending)

    def step_deferred(self, x, pending, state: dict, seqlen):
        """`step` of x + pending (the previous block's last branch output, or None) with the residual adds left
        to the next norm: x, pending (b, d_model) -> (residual (b, d_model), this block's last branch output
        still to be added, or None). Each norm adds the pending output and normalises in one launch."""
        x, hidden = self.norm.add_then_norm(self._residual(x), pending, round_to_weight_dtype=True)
        if hasattr(self.mixer, "step_deferred"):  # the add fused into the mixer's last kernel, or deferred
            x, pending = self.mixer.step_deferred(hidden, state, seqlen, x)
        else:
            pending = self.mixer.step(hidden, state, seqlen)
        if self.mlp is not None:
            x, hidden = self.norm2.add_then_norm(x, pending, round_to_weight_dtype=True)
            pending = self.mlp(hidden)[0]
        return x, pending
