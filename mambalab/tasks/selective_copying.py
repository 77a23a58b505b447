"""Selective copying (Mamba paper §4.1, Table 1).

`n_copy` data tokens are scattered at random positions among noise tokens; after a separator the model
must write them out in their order of appearance. The spacing between data tokens varies from example to
example, so a model whose dynamics do not depend on the input (an LTI SSM such as S4D, a convolution) cannot
know where to look, while a selective SSM can ignore the noise. Vocabulary (16 in the paper, noise included):

    0 = noise, 1 = separator, 2 .. vocab_size-1 = data tokens

Full sequence: `context (length - n_copy tokens) | SEP | d_1 … d_n`; the model reads up to d_{n-1}
(teacher forcing) and is scored on predicting d_1 … d_n. The paper scores each copied token (`headline`:
token accuracy); `sequence_accuracy` is the stricter all-tokens-right rate.

`scattered=False` gives the classic copying-memory task instead (Arjovsky et al. 2016; the HiPPO and S4
papers' long-range memory test): the data tokens sit at the very start, followed by `length - 2·n_copy`
noise tokens, so a fixed (LTI) memory can solve it and the difficulty is the delay alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mambalab.tasks.base import Task, next_token_batch, random_tokens, sample_without_replacement

NOISE, SEPARATOR, FIRST_DATA = 0, 1, 2


@dataclass
class SelectiveCopying(Task):
    vocab_size: int = 16
    n_copy: int = 16
    scattered: bool = True
    name: str = "selective_copying"
    headline: str = "token_accuracy"

    def __post_init__(self) -> None:
        if self.vocab_size < FIRST_DATA + 2:
            raise ValueError(
                f"SelectiveCopying.vocab_size must be >= {FIRST_DATA + 2}, got {self.vocab_size}"
            )
        if self.n_copy < 1:
            raise ValueError(f"SelectiveCopying.n_copy must be >= 1, got {self.n_copy}")

    def min_length(self) -> int:
        return 2 * self.n_copy  # the context must hold the tokens to copy

    def batch(self, batch_size: int, length: int, generator: torch.Generator, train: bool = True) -> dict:
        self.check_length(length)
        n, context = self.n_copy, length - self.n_copy
        data = random_tokens((batch_size, n), FIRST_DATA, self.vocab_size, generator)  # (b, n)
        if self.scattered:
            positions = (
                sample_without_replacement(batch_size, context, n, generator).sort(-1).values
            )  # (b, n)
        else:
            positions = torch.arange(n).expand(batch_size, n)  # (b, n)
        ctx = torch.full((batch_size, context), NOISE, dtype=torch.long)  # (b, context)
        ctx.scatter_(1, positions, data)
        sep = torch.full((batch_size, 1), SEPARATOR, dtype=torch.long)
        seq = torch.cat([ctx, sep, data], dim=1)  # (b, length + 1)
        target = torch.zeros_like(seq, dtype=torch.bool)
        target[:, context + 1 :] = True  # the copied tokens
        return next_token_batch(seq, target)
