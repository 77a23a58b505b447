"""Mixture of SwiGLU experts with top-k routing, a capacity limit and a load-balancing loss.

Shapes: T tokens (all leading dimensions flattened), d d_model, E experts, k = top_k.

    probs = softmax(router(x))                       (T, E), float32
    experts, gates = top-k of probs per token         (T, k); gates renormalised to sum to 1 when k > 1
                                                      (with k = 1 the gate is the raw probability, as Switch)
    y_t = Σ_{kept choices} gate · expert(x_t)

Capacity (training only): each expert takes at most ceil(capacity_factor · T · k / E) assignments, first
choices before second ones, earlier tokens first; a dropped assignment contributes nothing, so a token
dropped by all its experts passes through the block's residual unchanged. In eval mode nothing is dropped:
a token's output must not depend on which other tokens share its batch (decoding one token at a time has to
give the same result as the parallel forward).

Load-balancing loss (Switch Transformer, arXiv 2101.03961): aux = aux_loss_weight · E · Σ_e f_e · P_e, with f_e the fraction of
the T·k assignments routed to expert e and P_e the mean router probability of e; it is 1·aux_loss_weight for
a perfectly balanced router and grows as routing concentrates.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mambalab.config import ModelConfig, MoEConfig
from mambalab.layers.mlp import SwiGLU, swiglu_width


class MoE(nn.Module):
    def __init__(self, d_model: int, d_intermediate: int, cfg: MoEConfig | None = None):
        super().__init__()
        self.cfg = cfg or MoEConfig()
        self.router = nn.Linear(d_model, self.cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(d_model, d_intermediate) for _ in range(self.cfg.n_experts))

    @classmethod
    def from_config(cls, config: ModelConfig, layer_idx: int) -> MoE:
        d_int = swiglu_width(config.d_model, config.moe.d_intermediate, config.mlp.multiple_of)
        return cls(config.d_model, d_int, config.moe)

    def route(self, x: torch.Tensor):
        """x (T, d) -> probs (T, E) float32 (float64 for a float64 model), experts (T, k) long, gates (T, k)."""
        logits = self.router(x)  # (T, E)
        probs = F.softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=-1)  # (T, E)
        gates, experts = probs.topk(self.cfg.top_k, dim=-1)  # (T, k)
        if self.cfg.top_k > 1:
            gates = gates / gates.sum(-1, keepdim=True)
        return probs, experts, gates

    def capacity(self, n_tokens: int) -> int:
        return math.ceil(self.cfg.capacity_factor * n_tokens * self.cfg.top_k / self.cfg.n_experts)

    def within_capacity(self, experts: torch.Tensor) -> torch.Tensor:
        """experts (T, k) -> kept (T, k) bool: an assignment is kept while its expert's queue (first choices
        first, then token order) is shorter than the capacity."""
        n_tokens = experts.shape[0]
        one_hot = F.one_hot(experts.t().reshape(-1), self.cfg.n_experts)  # choice-major order  (k·T, E)
        queue_pos = (one_hot.cumsum(0) - 1).gather(1, experts.t().reshape(-1, 1))  # (k·T, 1)
        return (queue_pos < self.capacity(n_tokens)).view(self.cfg.top_k, n_tokens).t()  # (T, k)

    def aux_loss(self, probs: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """Switch load-balancing loss (see module doc), already multiplied by aux_loss_weight."""
        n_experts = self.cfg.n_experts
        counts = torch.bincount(experts.reshape(-1), minlength=n_experts).to(probs.dtype)  # (E,)
        fraction = counts / experts.numel()  # f_e
        return self.cfg.aux_loss_weight * n_experts * (fraction * probs.mean(0)).sum()

    def forward(self, x: torch.Tensor):
        """x (..., d) -> (y (..., d), aux_loss scalar float32)."""
        tokens = x.reshape(-1, x.shape[-1])  # (T, d)
        probs, experts, gates = self.route(tokens)
        kept = self.within_capacity(experts) if self.training else torch.ones_like(experts, dtype=torch.bool)
        y = torch.zeros_like(tokens)  # (T, d)
        for e, expert in enumerate(self.experts):
            token_idx, choice = torch.where((experts == e) & kept)  # assignments to expert e  (m,), (m,)
            if token_idx.numel():
                out = expert.mlp(tokens[token_idx]) * gates[token_idx, choice, None].to(tokens.dtype)  # (m, d)
                y.index_add_(0, token_idx, out)
        return y.view(x.shape), self.aux_loss(probs, experts)
