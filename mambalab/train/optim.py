"""AdamW with no-weight-decay parameter groups, and the warmup + cosine learning-rate schedule.

No weight decay for: parameters flagged `p._no_weight_decay = True` (A_log, D, the Δ bias of Mamba; S4D's
SSM parameters), every parameter with fewer than 2 dimensions (biases, norm weights), and embeddings (a tied
lm_head shares the embedding tensor, so it follows). Everything else (the weight matrices) decays.

FSDP2 replaces parameters (dropping attributes such as `_no_weight_decay`) but keeps their names, so the
no-decay set is computed by name from the unwrapped model first (`no_weight_decay_names`) and passed on.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mambalab.errors import ConfigError

NO_DECAY_SUFFIXES = ("A_log", ".D", "dt_proj.bias")  # Mamba's SSM parameters, also when unflagged


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names (as in `model.named_parameters()`) of the parameters that get no weight decay."""
    names = set()
    for name, p in model.named_parameters():
        flagged = getattr(p, "_no_weight_decay", False)
        if flagged or p.dim() < 2 or "embeddings" in name or name.endswith(NO_DECAY_SUFFIXES):
            names.add(name)
    return names


def param_groups(model: nn.Module, weight_decay: float, no_decay: set[str] | None = None) -> list[dict]:
    """Two AdamW groups over the trainable parameters: {"params", "weight_decay"} and the no-decay one."""
    no_decay = no_weight_decay_names(model) if no_decay is None else no_decay
    decay_params, plain_params = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain_params if name in no_decay else decay_params).append(p)
    return [
        {"params": decay_params, "weight_decay": weight_decay, "name": "decay"},
        {"params": plain_params, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    no_decay: set[str] | None = None,
) -> torch.optim.AdamW:
    """AdamW over `param_groups(model, weight_decay, no_decay)`."""
    if lr <= 0 or weight_decay < 0:
        raise ConfigError(f"lr must be > 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}")
    return torch.optim.AdamW(param_groups(model, weight_decay, no_decay), lr=lr, betas=tuple(betas), eps=eps)


def lr_at(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup over `warmup_steps` to `lr`, then cosine
    decay to `min_lr` at `max_steps`, and `min_lr` afterwards."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
