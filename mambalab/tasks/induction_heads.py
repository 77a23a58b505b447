"""Induction heads (Mamba paper §4.1, Table 3; Olsson et al. 2022).

A random sequence over tokens 1 .. vocab_size-1 holds the special token 0 once, followed by a key token
k; the sequence ends with the special token again, and the model must output k (the token that followed
the special token's first occurrence). One scored token per example, so token and sequence accuracy agree.
Trained at one length (256 in the paper) and evaluated at longer lengths: the paper's Mamba stays at 100%
up to 2^20 tokens while attention with position encodings falls apart past 2-8× the training length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mambalab.tasks.base import Task, next_token_batch, random_tokens

SPECIAL = 0


@dataclass
class InductionHeads(Task):
    vocab_size: int = 16
    name: str = "induction_heads"
    headline: str = "token_accuracy"

    def __post_init__(self) -> None:
        if self.vocab_size < 3:
            raise ValueError(f"InductionHeads.vocab_size must be >= 3, got {self.vocab_size}")

    def min_length(self) -> int:
        return 3

    def batch(self, batch_size: int, length: int, generator: torch.Generator, train: bool = True) -> dict:
        self.check_length(length)
        seq = random_tokens((batch_size, length + 1), SPECIAL + 1, self.vocab_size, generator)  # (b, l+1)
        # first occurrence of the special token anywhere it leaves room for its key before the final query
        first = torch.randint(0, length - 2, (batch_size,), generator=generator)  # (b,)
        rows = torch.arange(batch_size)
        seq[rows, first] = SPECIAL
        seq[:, length - 1] = SPECIAL  # the query: the last input token
        seq[:, length] = seq[rows, first + 1]  # the answer: the key that followed the first special token
        target = torch.zeros_like(seq, dtype=torch.bool)
        target[:, length] = True
        return next_token_batch(seq, target)
