"""benchmarks/investigations/phonebook_digits.py: per-digit accuracy of the asked number, with oracle models."""

from __future__ import annotations

import torch

from benchmarks.investigations import phonebook_digits
from mambalab.experiments.presets import TaskPlan
from mambalab.tasks import build_task
from mambalab.tasks.base import IGNORE_INDEX


class _Oracle(torch.nn.Module):
    """Logits that pick the next token of the input (the labels, rebuilt from the batch), wrong on the last
    digit of each number when `miss_last`."""

    def __init__(self, vocab: int, number_len: int, miss_last: bool):
        super().__init__()
        self.vocab, self.number_len, self.miss_last = vocab, number_len, miss_last
        self.labels = None

    def forward(self, ids):
        picked = torch.where(self.labels == IGNORE_INDEX, torch.zeros_like(ids), self.labels)  # (b, l)
        if self.miss_last:
            last = (self.labels != IGNORE_INDEX).cumsum(-1) == self.number_len
            picked = torch.where(last & (self.labels != IGNORE_INDEX), (picked + 1) % 10, picked)
        return torch.nn.functional.one_hot(picked, self.vocab).float()


def test_digit_accuracy_tells_which_digit_is_wrong(monkeypatch):
    task = build_task("phonebook", n_letters=6, number_len=3)
    plan = TaskPlan({"n_letters": 6, "number_len": 3}, 40, (40,), steps=1, batch_size=1, eval_examples=7)
    batches = phonebook_digits.eval_batches(task, plan, 40, 0)
    assert _accuracy(monkeypatch, task, plan, batches, miss_last=False) == {
        "digits": [1.0, 1.0, 1.0], "numbers": 1.0, "examples": 7}
    assert _accuracy(monkeypatch, task, plan, batches, miss_last=True) == {
        "digits": [1.0, 1.0, 0.0], "numbers": 0.0, "examples": 7}


def _accuracy(monkeypatch, task, plan, batches, miss_last):
    """digit_accuracy of an oracle that sees each batch's labels as the batch is handed out."""
    oracle = _Oracle(task.vocab_size, 3, miss_last)

    def handed_out(*_args):
        for batch in batches:
            oracle.labels = batch["labels"]
            yield batch

    monkeypatch.setattr(phonebook_digits, "eval_batches", handed_out)
    return phonebook_digits.digit_accuracy(oracle, task, plan, 40, 0, torch.device("cpu"))
