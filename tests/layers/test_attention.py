"""Transformer++ attention against a naive softmax reference; RoPE's relative-position property; GQA;
the KV cache's growth and per-row positions."""

from __future__ import annotations

import math

import torch

from mambalab.config import AttentionConfig
from mambalab.layers.attention import Attention, apply_rope
from tests.conftest import rel_error


def naive_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Explicit causal softmax(QKᵀ/√hd)V with RoPE at positions 0..l−1, kv heads repeated."""
    b, l, _ = x.shape
    hd, h, kv = attn.head_dim, attn.n_heads, attn.n_kv_heads
    pos = torch.arange(l).expand(b, l)
    q = apply_rope(attn.q_proj(x).view(b, l, h, hd).transpose(1, 2), pos, attn.cfg.rope_theta)
    k = apply_rope(attn.k_proj(x).view(b, l, kv, hd).transpose(1, 2), pos, attn.cfg.rope_theta)
    v = attn.v_proj(x).view(b, l, kv, hd).transpose(1, 2)
    k, v = k.repeat_interleave(h // kv, 1), v.repeat_interleave(h // kv, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # (b, h, l, l)
    scores = scores.masked_fill(torch.ones(l, l, dtype=torch.bool).triu(1), float("-inf"))
    out = scores.softmax(-1) @ v  # (b, h, l, hd)
    return attn.o_proj(out.transpose(1, 2).reshape(b, l, h * hd))


def test_matches_naive_reference_mha_and_gqa():
    for kv in (None, 2):
        attn = Attention(24, AttentionConfig(n_heads=4, n_kv_heads=kv)).double()
        x = torch.randn(2, 9, 24, dtype=torch.float64)
        assert rel_error(attn(x), naive_attention(attn, x)) < 1e-12
        assert all(p.bias is None for p in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj))


def test_rope_scores_depend_only_on_relative_position():
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)

    def score(pq, pk):
        return (apply_rope(q, torch.tensor([[pq]]), 10000.0) * apply_rope(k, torch.tensor([[pk]]), 10000.0)).sum()

    assert abs(score(7, 3) - score(104, 100)) < 1e-12
    assert abs(score(7, 3) - score(8, 3)) > 1e-6
    assert rel_error(apply_rope(q, torch.tensor([[5]]), 1e4).norm(), q.norm()) < 1e-14  # a rotation


def test_cache_grows_by_doubling_and_rows_keep_their_positions():
    attn = Attention(16, AttentionConfig(n_heads=2)).double()
    state = attn.allocate_state(2, dtype=torch.float64)
    assert state["k"].shape == (2, 2, 0, 8)
    seqlen = torch.tensor([0, 0])
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    attn(x, state, seqlen)
    assert state["k"].shape[2] == 5
    attn.step(x[:, 0], state, seqlen + 5)
    assert state["k"].shape[2] == 10  # doubled
    # rows at different lengths: the new key lands at each row's own slot
    state = {"k": torch.zeros(2, 2, 4, 8, dtype=torch.float64), "v": torch.zeros(2, 2, 4, 8, dtype=torch.float64)}
    attn.step(x[:, 0], state, torch.tensor([1, 3]))
    written = state["k"].abs().sum((1, 3)) > 0  # (b, cap)
    assert written.tolist() == [[False, True, False, False], [False, False, False, True]]
