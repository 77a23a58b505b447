"""Resume edge cases of metrics.jsonl: records past the restored step are dropped (also when the run was
killed before its first checkpoint, so no step is logged twice), a torn last line (a write interrupted by a
kill) is dropped with a warning naming the file, and any other bad line is refused naming file and line."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from mambalab.errors import CorruptCheckpoint
from mambalab.train.trainer import TrainConfig, Trainer

QUIET = {"progress": False, "device": "cpu", "log_every": 1, "eval_every": 0, "ckpt_every": 0, "warmup_steps": 1}
KILLED_RUN = [{"step": s, "loss": 9.0} for s in (1, 2, 3)]  # logged by a run killed before any checkpoint


def _batches(n=32):
    gen = torch.Generator().manual_seed(0)
    for _ in range(n):
        ids = torch.randint(259, (2, 17), generator=gen)  # (b, l + 1)
        yield {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}


def _fit(tiny_model, out, max_steps, resume):
    return Trainer(tiny_model(0), TrainConfig(max_steps=max_steps, **QUIET), _batches(), out_dir=out).fit(resume)


def _lines(metrics):
    return [json.dumps(r) + "\n" for r in metrics]


CASES = {
    # name: (steps trained before, text appended to metrics.jsonl afterwards, steps of the resumed run)
    "killed before the first checkpoint": (0, "".join(_lines(KILLED_RUN)), 4),
    "killed before the first checkpoint, torn last line": (0, "".join(_lines(KILLED_RUN)) + '{"step": 4, "lo', 4),
    "torn last line after a checkpoint": (2, '{"step": 3, "loss": 5.', 4),
    "records past the checkpoint": (2, "".join(_lines([{"step": 3, "loss": 1.0}])), 4),
    "torn short line after a checkpoint": (2, '{"st', 3),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_resume_leaves_each_step_once(tiny_model, tmp_path, caplog, case):
    before, appended, after = CASES[case]
    if before:
        _fit(tiny_model, tmp_path, before, resume=False)
    metrics = tmp_path / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write(appended)
    with caplog.at_level(logging.WARNING, logger="mambalab.train.metrics"):
        records = _fit(tiny_model, tmp_path, after, resume=True)
    if not appended.endswith("\n"):
        assert str(metrics) in caplog.text and "torn" in caplog.text
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert logged == list(range(1, after + 1)) == [r["step"] for r in records]
    assert all(r["loss"] != 9.0 for r in records)  # the killed run's records are gone


@pytest.mark.parametrize("bad", ['{"step": 1, "lo\n{"step": 2}\n', '[1, 2]\n{"step": 2}\n', '{"loss": 1}\n{"step": 2}\n'],
                         ids=["torn line in the middle", "not an object", "no step"])
def test_a_bad_line_before_the_last_is_refused_naming_file_and_line(tiny_model, tmp_path, bad):
    _fit(tiny_model, tmp_path, 1, resume=False)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(bad)
    with pytest.raises(CorruptCheckpoint, match=rf"{metrics}: line 1 "):
        _fit(tiny_model, tmp_path, 2, resume=True)
