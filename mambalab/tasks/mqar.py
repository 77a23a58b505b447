"""Multi-query associative recall, MQAR (Zoology, arXiv 2312.04927), with the semantics of its generator.

Each example starts with `n_kv` key-value pairs `k_1 v_1 k_2 v_2 …`: keys drawn without replacement from
the lower half of the vocabulary [1, vocab_size/2), values without replacement from the upper half
[vocab_size/2, vocab_size). The rest of the sequence holds every key once more as a query, at even offsets
2·g of the query region, where the gaps g are drawn without replacement with the power law p(g) ∝ a·g^(a-1)
(a = 0.01: queries cluster early but reach far); the model must answer each query with its value at the
next position. All other positions (including the one after each query: the value is a label, never an
input) are random tokens from the whole vocabulary. Scored: the answer after each query (`headline`: token
accuracy, as Zoology reports).

The number of pairs follows the length (`kv_ratio`: Zoology's 64 → 4, 128 → 8, 256 → 16 ...) unless
`n_kv` is fixed, so evaluating past the training length also asks for more pairs to be remembered.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mambalab.tasks.base import IGNORE_INDEX, Task, random_tokens, sample_without_replacement


@dataclass
class MQAR(Task):
    vocab_size: int = 8192
    n_kv: int | None = None  # None: length // kv_ratio
    kv_ratio: int = 16
    power_a: float = 0.01
    name: str = "mqar"
    headline: str = "token_accuracy"

    def __post_init__(self) -> None:
        if self.vocab_size < 8:
            raise ValueError(f"MQAR.vocab_size must be >= 8, got {self.vocab_size}")
        if not 0 < self.power_a <= 1:
            raise ValueError(f"MQAR.power_a must be in (0, 1], got {self.power_a}")
        if self.kv_ratio < 4:
            raise ValueError(
                f"MQAR.kv_ratio must be >= 4 (a pair and its query need 4 tokens), got {self.kv_ratio}"
            )

    def pairs(self, length: int) -> int:
        return self.n_kv if self.n_kv is not None else max(1, length // self.kv_ratio)

    def min_length(self) -> int:
        return 4 * (self.n_kv or 1)

    def batch(self, batch_size: int, length: int, generator: torch.Generator, train: bool = True) -> dict:
        self.check_length(length)
        n_kv, half = self.pairs(length), self.vocab_size // 2
        if 4 * n_kv > length or n_kv > half - 1:
            raise ValueError(
                f"mqar: {n_kv} key-value pairs do not fit length {length} / vocab {self.vocab_size}"
            )
        keys = 1 + sample_without_replacement(batch_size, half - 1, n_kv, generator)  # (b, n_kv) in [1, half)
        values = half + sample_without_replacement(
            batch_size, self.vocab_size - half, n_kv, generator
        )  # (b, n_kv)
        context = 2 * n_kv
        kvs = torch.stack([keys, values], dim=-1).flatten(1)  # k_1 v_1 k_2 v_2 ...   (b, 2·n_kv)
        space = (length - context) // 2
        g = torch.arange(1, space + 1, dtype=torch.float64)
        p = self.power_a * g ** (self.power_a - 1)  # power law over gaps              (space,)
        gaps = torch.multinomial(p.expand(batch_size, space), n_kv, replacement=False, generator=generator)
        queries = torch.zeros(batch_size, length + 1 - context, dtype=torch.long)  # (b, l+1-context)
        queries.scatter_(1, 2 * gaps, keys)
        seq = torch.cat([kvs, queries], dim=1)  # (b, l+1)
        filler = random_tokens(seq.shape, 0, self.vocab_size, generator)
        seq = torch.where(seq == 0, filler, seq)  # random non-query tokens, the answer slots included
        answers = torch.full_like(seq, IGNORE_INDEX)  # (b, l+1)
        answers.scatter_(1, context + 2 * gaps + 1, values)  # each value right after its query
        # As in Zoology, the value is a label only: the input after a query stays random.
        return {"input_ids": seq[:, :-1].contiguous(), "labels": answers[:, 1:].contiguous()}
