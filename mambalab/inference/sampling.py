"""Choosing the next token: logits processors and the sampler that chains them.

Each processor is a small pure function `logits (b, v) -> logits (b, v)`; removed tokens get -inf. They
follow HF transformers' semantics and order: repetition penalty (also applied when decoding greedily), then,
only when sampling, temperature → top-k → top-p → min-p, then a draw from the softmax.

    repetition_penalty  seen tokens: logit / p if logit > 0 else logit · p   (p > 1 discourages repeats)
    temperature         logits / T   (computed as (logits − row max) / T: the same distribution, no overflow)
    top_k               keep the k largest logits
    top_p               keep the smallest set of most likely tokens whose probability reaches p
    min_p               keep tokens whose probability is ≥ min_p · (largest probability)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mambalab.errors import InputError


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Scale the logits of tokens already in the sequence (`seen`: (b, v) bool) by `penalty` (CTRL, HF)."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)  # (b, v)
    top = torch.finfo(logits.dtype).max  # a tiny penalty overflows logit / p: keep it the largest finite value
    return torch.where(seen, penalised.clamp(max=top), logits)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / T, shifted by each row's largest logit first (softmax and the filters after it are blind to
    the shift): a tiny T then sends the others to −inf instead of overflowing every logit to ±inf."""
    if temperature == 1.0:
        return logits
    shifted = logits - logits.amax(-1, keepdim=True)  # (b, v), ≤ 0
    # A T below the dtype's smallest normal would round to 0 in the division (0 / 0 at the maximum): any T that
    # small sends every other logit to −inf anyway.
    return shifted / max(temperature, torch.finfo(logits.dtype).tiny)


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (ties with the k-th are kept); k = 0 keeps everything."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (b, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the most likely tokens until their probability mass reaches p (at least one token)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (b, v)
    probs = sorted_logits.float().softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # probability of the strictly more likely tokens   (b, v)
    remove_sorted = mass_before >= p  # the first token always stays (mass_before = 0 < p)
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the row's largest probability."""
    if min_p <= 0.0:
        return logits
    probs = logits.float().softmax(-1)  # (b, v)
    threshold = min_p * probs.max(-1, keepdim=True).values  # (b, 1)
    return logits.masked_fill(probs < threshold, float("-inf"))


@dataclass
class SamplingConfig:
    """How to pick each next token; validated on construction (ValueError naming the argument)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.do_sample and not 0 < self.temperature < math.inf:
            raise InputError(f"temperature must be > 0 and finite when sampling (do_sample=True), got"
                             f" {self.temperature}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise InputError(f"top_k must be an int >= 0 (0 = disabled), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise InputError(f"min_p must be in [0, 1], got {self.min_p}")
        if not 0 < self.repetition_penalty < math.inf:
            raise InputError(f"repetition_penalty must be > 0 and finite (1.0 = disabled), got"
                             f" {self.repetition_penalty}")

    def process(self, logits: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the configured processors to float32 logits (b, v); `seen` (b, v) marks earlier tokens."""
        logits = logits.float()
        if seen is not None:
            logits = apply_repetition_penalty(logits, seen, self.repetition_penalty)
        if not self.do_sample:
            return logits
        logits = apply_temperature(logits, self.temperature)
        logits = apply_top_k(logits, self.top_k)
        logits = apply_top_p(logits, self.top_p)
        return apply_min_p(logits, self.min_p)

    def choose(
        self, logits: torch.Tensor, seen: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """logits (b, v) -> next tokens (b,) int64: argmax when greedy, else a draw seeded by `generator`."""
        logits = self.process(logits, seen)
        if not self.do_sample:
            return logits.argmax(-1)
        probs = logits.softmax(-1)  # (b, v)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
