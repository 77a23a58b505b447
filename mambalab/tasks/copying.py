"""Copying (Jelassi et al., "Repeat After Me", arXiv 2402.01032): `$x…x|x…x.` with the loss after `|`.

A string of n letters from an alphabet of 26 is written between `$` and `|`, and the model must repeat it
and close with `.`. A model with a fixed-size state must squeeze the whole string into it; attention can
look it up. The paper trains on strings up to a maximum length and tests longer ones: Transformers degrade
gradually, GSSMs fall to ~0 right past the training length.

Tokens: letters 0 .. alphabet_size-1, then `$`, `|`, `.`, and a pad token. For `length` input tokens the
string has n = (length - 2) // 2 letters (the full sequence `$ x^n | x^n .` has 2n + 3 tokens). Training
batches (train=True) mix string lengths uniformly in [1, n] and pad the tail (pad positions are not
scored); evaluation batches use exactly n letters. Scored: the copy and the closing `.`; `headline` is the
rate of exactly copied strings, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mambalab.tasks.base import Task, next_token_batch, random_tokens


@dataclass
class Copying(Task):
    alphabet_size: int = 26
    name: str = "copying"
    headline: str = "sequence_accuracy"

    def __post_init__(self) -> None:
        if self.alphabet_size < 2:
            raise ValueError(f"Copying.alphabet_size must be >= 2, got {self.alphabet_size}")
        a = self.alphabet_size
        self.bos, self.sep, self.eos, self.pad = a, a + 1, a + 2, a + 3

    @property
    def vocab_size(self) -> int:
        return self.alphabet_size + 4

    def min_length(self) -> int:
        return 4

    def string_length(self, length: int) -> int:
        """Letters in the string for `length` input tokens (the longest that fits)."""
        return (length - 2) // 2

    def batch(self, batch_size: int, length: int, generator: torch.Generator, train: bool = True) -> dict:
        self.check_length(length)
        n_max = self.string_length(length)
        if train:
            n = torch.randint(1, n_max + 1, (batch_size, 1), generator=generator)  # (b, 1)
        else:
            n = torch.full((batch_size, 1), n_max)
        letters = random_tokens((batch_size, n_max), 0, self.alphabet_size, generator)  # (b, n_max)
        pos = torch.arange(length + 1)[None, :]  # (1, l+1)
        # layout of row i: $ at 0, letters at 1..n, | at n+1, copy at n+2..2n+1, . at 2n+2, pad after
        src = (pos - 1).clamp(0, n_max - 1)
        copy_src = (pos - n - 2).clamp(0, n_max - 1)
        seq = torch.full((batch_size, length + 1), self.pad, dtype=torch.long)  # (b, l+1)
        seq = torch.where((pos >= 1) & (pos <= n), letters.gather(1, src.expand(batch_size, -1)), seq)
        seq = torch.where(pos == n + 1, torch.full_like(seq, self.sep), seq)
        seq = torch.where(
            (pos >= n + 2) & (pos <= 2 * n + 1), letters.gather(1, copy_src.expand(batch_size, -1)), seq
        )
        seq = torch.where(pos == 2 * n + 2, torch.full_like(seq, self.eos), seq)
        seq[:, 0] = self.bos
        target = (pos >= n + 2) & (pos <= 2 * n + 2)  # the copy and the closing '.'   (b, l+1)
        return next_token_batch(seq, target)
