"""benchmarks/train_vs_official.py: the interleaved timing (every model held at once, stepped in a rotating
order) on CPU at tiny shapes, and its refusal of the module-wide +eager-norm switch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from benchmarks import common
from benchmarks import train_vs_official as bench


def test_interleaved_rows_time_every_model_at_every_shape():
    plan = {**bench.QUICK, "shapes": [(16, 2), (24, 1)], "warmup": 1, "steps": 3}
    names = ["mambalab-mamba", "mambalab-transformer"]
    rows = bench.measure_interleaved(names, plan, "cpu")
    assert [(r["model"], r["seq_len"]) for r in rows] == [(n, length) for length in (16, 24) for n in names]
    for row in rows:
        assert row["interleaved"] and "error" not in row
        assert 0 < row["step_ms_min"] <= row["step_ms_median"] <= row["step_ms_max"]
        assert row["tokens_per_s"] == pytest.approx(row["batch"] * row["seq_len"] / (row["step_ms_median"] / 1000))
        assert row["loss"] > 0 and row["params"] > 0


def test_resident_bytes_counts_parameters_and_optimizer_state():
    model, loss_fn = bench.build("mambalab-mamba", bench.QUICK, "cpu")
    optimizer = bench.make_optimizer(model, cuda=False)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert bench.resident_bytes(model, optimizer) >= params
    ids = torch.randint(bench.QUICK["vocab"], (1, 9))
    bench.timed_step(model, loss_fn, optimizer, ids[:, :-1], ids[:, 1:], cuda=False)
    assert bench.resident_bytes(model, optimizer) >= 3 * params  # AdamW's two moments per parameter


def test_interleave_refuses_the_module_wide_norm_switch():
    env = {**os.environ, "PYTHONPATH": f"{common.REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "benchmarks/train_vs_official.py", "--quick", "--interleave",
                           "--models", "mambalab-mamba,mambalab-mamba+eager-norm"],
                          check=False, cwd=common.REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "+eager-norm switches RMSNorm for every model" in done.stderr
