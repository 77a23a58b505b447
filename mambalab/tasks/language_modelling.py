"""Language modelling on a token stream: random windows for training, held-out windows for evaluation.

The stream is split once: the first (1 - val_fraction) of the tokens train, the rest evaluate, so no
evaluation window overlaps a training one. Every position is scored (next-token prediction). Metrics:
loss (nats/token), perplexity and bits per byte = loss / ln 2 / bytes_per_token (1 for a byte-level
tokenizer), the `headline` (lower is better).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from mambalab.tasks.base import Task, accuracy_metrics, bits_per_token


@dataclass
class LanguageModelling(Task):
    tokens: torch.Tensor = field(repr=False)  # (n,) long
    vocab_size: int = 256
    bytes_per_token: float = 1.0
    val_fraction: float = 0.1
    name: str = "lm"
    headline: str = "bits_per_byte"
    higher_is_better: bool = False

    def __post_init__(self) -> None:
        if self.tokens.dim() != 1 or self.tokens.dtype not in (
            torch.int64,
            torch.int32,
            torch.uint8,
            torch.int16,
        ):
            raise ValueError(
                f"LanguageModelling.tokens must be a 1-D integer tensor, got {self.tokens.dtype} "
                f"{tuple(self.tokens.shape)}"
            )
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"LanguageModelling.val_fraction must be in (0, 1), got {self.val_fraction}")
        tokens = self.tokens  # kept in its dtype (a byte corpus as uint8: 1 byte per token, not 8)
        if tokens.numel() and int(tokens.max()) >= self.vocab_size:
            raise ValueError(
                f"LanguageModelling.tokens hold id {int(tokens.max())} >= vocab_size {self.vocab_size}"
            )
        cut = int(tokens.numel() * (1 - self.val_fraction))
        self._splits = {True: tokens[:cut], False: tokens[cut:]}

    def dataset_tokens(self) -> dict[str, int]:
        return {"train": self._splits[True].numel(), "eval": self._splits[False].numel()}

    def max_length(self) -> int:
        """The longest window both splits can provide."""
        return min(s.numel() for s in self._splits.values()) - 1

    def batch(self, batch_size: int, length: int, generator: torch.Generator, train: bool = True) -> dict:
        self.check_length(length)
        stream = self._splits[train]
        if length + 1 > stream.numel():
            raise ValueError(
                f"lm: length {length} exceeds the {'train' if train else 'validation'} split "
                f"({stream.numel()} tokens)"
            )
        starts = torch.randint(0, stream.numel() - length, (batch_size,), generator=generator)  # (b,)
        windows = stream[starts[:, None] + torch.arange(length + 1)].long()  # (b, l+1)
        return {"input_ids": windows[:, :-1].contiguous(), "labels": windows[:, 1:].contiguous()}

    def score(self, logits: torch.Tensor, batch: dict) -> dict[str, float]:
        return self._with_lm_metrics(accuracy_metrics(logits, batch["labels"]))

    def merge(self, parts: list[dict[str, float]]) -> dict[str, float]:
        return self._with_lm_metrics(super().merge(parts))

    def _with_lm_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        loss = metrics["loss"]
        return {
            **metrics,
            "perplexity": math.exp(min(loss, 50.0)),
            "bits_per_byte": bits_per_token(loss) / self.bytes_per_token,
        }
