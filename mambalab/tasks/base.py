"""What every task shares: the batch format, the scoring rule and the length convention.

A task is a seeded generator of batches `{"input_ids": (b, l) long, "labels": (b, l) long}` where
`labels[:, t]` is the token the logits at position t must predict, and -100 marks positions that are not
scored. Tasks build a full token sequence `seq` (b, l + 1) and a boolean `target` mask saying which tokens of
`seq` are answers; `next_token_batch` turns that into inputs `seq[:, :-1]` and labels `seq[:, 1:]` masked to
the answers. Evaluation is teacher-forced: an example counts as exactly right when the argmax at every scored
position is the label, which is the same as greedy decoding producing the whole answer.

`length` always means the number of input tokens l. Each task derives its content from it (how many tokens
to copy, how many key-value pairs, how many phone-book entries) so that "accuracy at 4× the training
length" has one meaning across tasks.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def next_token_batch(seq: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """seq (b, l+1) tokens, target (b, l+1) bool (True = an answer token) -> {"input_ids", "labels"} (b, l)."""
    if seq.shape != target.shape or seq.dim() != 2:
        raise ValueError(
            f"seq and target must both be (batch, length + 1), got {tuple(seq.shape)}, {tuple(target.shape)}"
        )
    labels = torch.where(target[:, 1:], seq[:, 1:], torch.full_like(seq[:, 1:], IGNORE_INDEX))  # (b, l)
    return {"input_ids": seq[:, :-1].contiguous(), "labels": labels}


def accuracy_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Teacher-forced scores of logits (b, l, v) against labels (b, l) (-100 = not scored).

    token_accuracy: fraction of scored positions whose argmax is the label; sequence_accuracy: fraction of
    examples (with at least one scored position) right at every scored position; loss: mean cross-entropy.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(
            f"logits (b, l, v) and labels (b, l) disagree: {tuple(logits.shape)} vs {tuple(labels.shape)}"
        )
    scored = labels != IGNORE_INDEX  # (b, l)
    n_tokens = int(scored.sum())
    if n_tokens == 0:
        raise ValueError("labels: no position is scored (all -100)")
    correct = (logits.argmax(-1) == labels) & scored  # (b, l)
    per_example = scored.any(-1)  # (b,)
    exact = (correct.sum(-1) == scored.sum(-1)) & per_example  # (b,)
    loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    return {
        "token_accuracy": correct.sum().item() / n_tokens,
        "sequence_accuracy": exact.sum().item() / int(per_example.sum()),
        "loss": loss.item(),
        "n_tokens": n_tokens,
        "n_examples": int(per_example.sum()),
    }


def merge_metrics(parts: list[dict[str, float]]) -> dict[str, float]:
    """Combine per-batch metrics: token metrics weighted by scored tokens, sequence accuracy by examples."""
    tokens = sum(p["n_tokens"] for p in parts)
    examples = sum(p["n_examples"] for p in parts)
    merged = {k: sum(p[k] * p["n_tokens"] for p in parts) / tokens for k in ("token_accuracy", "loss")}
    merged["sequence_accuracy"] = sum(p["sequence_accuracy"] * p["n_examples"] for p in parts) / examples
    return {**merged, "n_tokens": tokens, "n_examples": examples}


class Task(ABC):
    """A seeded batch generator plus its metric. Subclasses set `name`, `vocab_size`, `headline`."""

    name: str
    vocab_size: int
    headline: str = "sequence_accuracy"  # the metric reported in tables and findings
    higher_is_better: bool = True

    @abstractmethod
    def batch(self, batch_size: int, length: int, generator: torch.Generator, train: bool = True) -> dict:
        """One batch of `batch_size` examples of `length` input tokens (train=False: the evaluation form)."""

    def min_length(self) -> int:
        """The shortest `length` this task can generate."""
        return 2

    def check_length(self, length: int) -> None:
        if not isinstance(length, int) or length < self.min_length():
            raise ValueError(f"{self.name}: length must be an int >= {self.min_length()}, got {length!r}")

    def score(self, logits: torch.Tensor, batch: dict) -> dict[str, float]:
        """Metrics of one batch; the default is teacher-forced accuracy (see `accuracy_metrics`)."""
        return accuracy_metrics(logits, batch["labels"])

    def merge(self, parts: list[dict[str, float]]) -> dict[str, float]:
        return merge_metrics(parts)

    def dataset_tokens(self) -> dict[str, int] | None:
        """Tokens in the training and evaluation data of a finite dataset ({"train": n, "eval": n}); None for
        a generator that never repeats itself (the synthetic tasks), where epochs mean nothing."""
        return None


def seeded(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed`: the one source of randomness of every task."""
    return torch.Generator().manual_seed(int(seed))


def random_tokens(shape: tuple[int, ...], low: int, high: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform integer tokens in [low, high)."""
    return torch.randint(low, high, shape, generator=generator, dtype=torch.long)


def sample_without_replacement(
    batch: int, population: int, k: int, generator: torch.Generator
) -> torch.Tensor:
    """(batch, k) distinct integers from [0, population) per row, in random order: the k largest of
    `population` uniform keys (a uniform k-subset, ordered by its keys). topk, not a full argsort: MQAR
    draws 16 keys of 4,095 per row, where sorting every key cost 12 ms of a 64-row batch (topk: 1 ms)."""
    if k > population:
        raise ValueError(f"cannot draw k={k} distinct items from a population of {population}")
    return torch.rand(batch, population, generator=generator).topk(k, dim=-1).indices  # (batch, k)


def bits_per_token(loss_nats: float) -> float:
    return loss_nats / math.log(2)
