"""Transformer++ attention (the Mamba paper's baseline): RoPE (arXiv 2104.09864), no biases, causal SDPA,
grouped-query optional.

Shapes: b batch, l new tokens, d_model width, h query heads, h_kv key/value heads (h divisible by h_kv),
hd head dim, cap KV-cache capacity.

State (the KV cache): {"k": (b, h_kv, cap, hd), "v": (b, h_kv, cap, hd)} in the model's dtype, capacity 0 at
allocation and doubled when a write would overflow it. Row i's valid entries are positions
[0, seqlen[i]); everything after is masked, so rows of different lengths (e.g. after
`InferenceState.concat` zero-pads caches at the end) share one batch. New tokens of row i get the positions
seqlen[i], seqlen[i] + 1, … — for the cache slots and for RoPE alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mambalab.config import AttentionConfig, ModelConfig


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding (rotate-half convention of LLaMA / HF): x (b, h, l, hd), positions (b, l) integer.
    Pair (i, i + hd/2) is rotated by the angle position · θ^(−2i/hd), computed in float32 (float64)."""
    hd = x.shape[-1]
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv_freq = theta ** -(torch.arange(0, hd, 2, device=x.device, dtype=compute) / hd)  # (hd/2,)
    angles = positions.to(compute)[..., None] * inv_freq  # (b, l, hd/2)
    angles = torch.cat((angles, angles), dim=-1)[:, None]  # (b, 1, l, hd)
    xc = x.to(compute)
    return (xc * angles.cos() + rotate_half(xc) * angles.sin()).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, d_model: int, cfg: AttentionConfig | None = None, layer_idx: int = 0):
        super().__init__()
        cfg = cfg or AttentionConfig()
        self.cfg, self.layer_idx = cfg, layer_idx
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads or cfg.n_heads
        self.head_dim = cfg.head_dim or d_model // cfg.n_heads
        if self.head_dim < 2 or self.head_dim % 2:
            raise ValueError(f"Attention: head_dim must be even and >= 2 for RoPE, got {self.head_dim}")
        self.q_proj = nn.Linear(d_model, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d_model, bias=False)

    @classmethod
    def from_config(cls, config: ModelConfig, layer_idx: int) -> Attention:
        return cls(config.d_model, config.attention, layer_idx=layer_idx)

    def allocate_state(self, batch_size: int, device=None, dtype=None, state_dtype=None) -> dict[str, torch.Tensor]:
        """An empty KV cache in `dtype` (default: the model's); `state_dtype` chooses the dtype of SSM states,
        which attention has none of."""
        dtype = dtype or self.q_proj.weight.dtype
        shape = (batch_size, self.n_kv_heads, 0, self.head_dim)
        return {"k": torch.zeros(shape, device=device, dtype=dtype), "v": torch.zeros(shape, device=device, dtype=dtype)}

    def forward(self, hidden: torch.Tensor, state: dict | None = None, seqlen=None) -> torch.Tensor:
        """hidden (b, l, d_model) -> (b, l, d_model). With `state` (and `seqlen` (b,), tokens already cached
        per row), attend to the cache too and append this chunk's keys and values to it."""
        b, l, _ = hidden.shape
        # 1. projections to heads
        q = self.q_proj(hidden).view(b, l, self.n_heads, self.head_dim).transpose(1, 2)  # (b, h, l, hd)
        k = self.k_proj(hidden).view(b, l, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (b, h_kv, l, hd)
        v = self.v_proj(hidden).view(b, l, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (b, h_kv, l, hd)
        # 2. rotary position embedding at each row's own positions
        if state is not None and seqlen is None:
            raise ValueError("Attention.forward: a state needs `seqlen` (b,), the tokens already cached per row")
        start = torch.zeros(b, dtype=torch.long, device=hidden.device) if state is None else seqlen
        positions = start[:, None] + torch.arange(l, device=hidden.device)  # (b, l)
        q, k = apply_rope(q, positions, self.cfg.rope_theta), apply_rope(k, positions, self.cfg.rope_theta)
        # 3. causal attention, over the cache when there is one
        gqa = self.n_kv_heads != self.n_heads
        if state is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)  # (b, h, l, hd)
        else:
            keys, values = self._append_to_cache(state, k, v, positions)  # (b, h_kv, cap, hd)
            slots = torch.arange(keys.shape[2], device=hidden.device)  # (cap,)
            visible = slots[None, None, :] <= positions[:, :, None]  # key slot ≤ query position (b, l, cap)
            out = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype),
                                                 attn_mask=visible[:, None], enable_gqa=gqa)  # (b, h, l, hd)
        # 4. output projection
        return self.o_proj(out.transpose(1, 2).reshape(b, l, self.n_heads * self.head_dim))  # (b, l, d_model)

    def step(self, hidden: torch.Tensor, state: dict, seqlen: torch.Tensor) -> torch.Tensor:
        """hidden (b, d_model) -> (b, d_model): one token per row, appended to the cache."""
        return self.forward(hidden[:, None], state, seqlen)[:, 0]

    @staticmethod
    def _append_to_cache(state: dict, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        """Write k, v (b, h_kv, l, hd) at slots `positions` (b, l), doubling the capacity when needed."""
        capacity, needed = state["k"].shape[2], int(positions.max()) + 1
        if needed > capacity:
            grow = max(needed, 2 * capacity) - capacity
            for key in ("k", "v"):
                state[key] = F.pad(state[key], (0, 0, 0, grow))  # (b, h_kv, cap', hd)
        rows = torch.arange(k.shape[0], device=k.device)[:, None]  # (b, 1)
        state["k"][rows, :, positions] = k.transpose(1, 2).to(state["k"].dtype)  # slots (b, l) ← (b, l, h_kv, hd)
        state["v"][rows, :, positions] = v.transpose(1, 2).to(state["v"].dtype)
        return state["k"], state["v"]
