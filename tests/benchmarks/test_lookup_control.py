"""benchmarks/investigations/lookup_control.py: MQAR's metrics with oracle models, and the model the shared
training helper builds for a plan's depth."""

from __future__ import annotations

import torch

from benchmarks.investigations import lookup_control, phonebook_digits
from mambalab.experiments.presets import TaskPlan
from mambalab.tasks import build_task
from mambalab.tasks.base import IGNORE_INDEX


class _Oracle(torch.nn.Module):
    """Logits that pick each answer (the labels of the batch being scored), shifted by `offset` tokens."""

    def __init__(self, vocab: int, offset: int):
        super().__init__()
        self.vocab, self.offset, self.labels = vocab, offset, None

    def forward(self, ids):
        picked = torch.where(self.labels == IGNORE_INDEX, torch.zeros_like(ids), self.labels + self.offset)
        return torch.nn.functional.one_hot(picked % self.vocab, self.vocab).float()  # (b, l, v)


def test_recall_metrics_score_right_and_wrong_answers(monkeypatch):
    task = build_task("mqar", vocab_size=32, n_kv=4)
    plan = TaskPlan({"vocab_size": 32, "n_kv": 4}, 24, (24,), steps=1, batch_size=1, eval_examples=5)
    batches = phonebook_digits.eval_batches(task, plan, 24, 0)
    for offset, expected in ((0, 1.0), (1, 0.0)):
        oracle = _Oracle(task.vocab_size, offset)

        def handed_out(*_args, oracle=oracle):
            for batch in batches:
                oracle.labels = batch["labels"]
                yield batch

        monkeypatch.setattr(phonebook_digits, "eval_batches", handed_out)
        metrics = lookup_control.recall_metrics(oracle, task, plan, 24, 0, torch.device("cpu"))
        assert metrics["token_accuracy"] == expected and metrics["n_examples"] == 5


def test_trained_model_follows_the_plans_depth():
    task = build_task("mqar", vocab_size=32, n_kv=4)
    for n_layer, same_depth, layers in ((2, True, 2), (None, False, 3)):
        plan = TaskPlan({"vocab_size": 32, "n_kv": 4}, 24, (24,), steps=2, batch_size=2, weight_decay=0.0,
                        n_layer=n_layer, same_depth=same_depth)
        model, train = phonebook_digits.trained_model("transformer", task, plan, 0, torch.device("cpu"))
        assert model.config.n_layer == layers and len(train["curve"]) == 2
