"""benchmarks/ssd_duality.py --quick: the four forms of SSD agree, and the result file says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from benchmarks import common, ssd_duality


def test_quick_run_writes_agreement_and_timings(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{common.REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run([sys.executable, "benchmarks/ssd_duality.py", "--quick", "--threads", "1", "--out", str(tmp_path)],
                   cwd=common.REPO, env=env, check=True, capture_output=True, timeout=120)
    record = json.loads((tmp_path / "ssd_duality.json").read_text())
    assert record["benchmark"] == "ssd_duality" and record["quick"] is True
    by_dtype = {row["dtype"]: row for row in record["agreement"]}
    assert set(by_dtype) == {"float64", "float32", "bfloat16"}
    for name, errors in by_dtype["float64"]["forms"].items():
        assert errors["y"] < 1e-12 and errors["state"] < 1e-12, (name, errors)
    for name, errors in by_dtype["float32"]["forms"].items():
        assert errors["y"] < 1e-5 and errors["state"] < 1e-5, (name, errors)
    bf16 = by_dtype["bfloat16"]
    for name in ("quadratic", "chunked", "reference", "step"):  # y rounded to bf16, the state kept in float32
        assert bf16["forms"][name]["y"] < 4 * bf16["output_rounding_y"] + 1e-3, name
        assert bf16["forms"][name]["state"] < 1e-5 and bf16["forms"][name]["state_dtype"] == "float32", name
    assert bf16["forms"]["step_state_bf16"]["state"] > 1e-4  # a bf16 state is rounded at every token
    (sweep,) = record["timing"]
    assert sweep["threads"] == 1 and set(sweep["forms"]) == {"quadratic", "chunked", "reference", "step"}
    for rows in sweep["forms"].values():
        assert [r["l"] for r in rows] == sweep["lengths"] and all(r["median_s"] > 0 and r["flops"] > 0 for r in rows)


def test_flop_counts_grow_as_each_form_should():
    shape = {"b": 1, "h": 4, "p": 16, "n": 16, "g": 1, "chunk": 64}
    quadratic = [ssd_duality.flops("quadratic", l=l, **shape) for l in (512, 1024)]
    chunked = [ssd_duality.flops("chunked", l=l, **shape) for l in (512, 1024)]
    recurrent = [ssd_duality.flops("reference", l=l, **shape) for l in (512, 1024)]
    assert 3.9 < quadratic[1] / quadratic[0] < 4.1  # O(l²)
    assert chunked[1] == 2 * chunked[0] and recurrent[1] == 2 * recurrent[0]  # O(l)
    assert recurrent[0] < chunked[0] < quadratic[0]
    assert ssd_duality.flops("chunked", l=65, **shape) == ssd_duality.flops("chunked", l=128, **shape)  # padded


def test_relative_error_is_zero_for_equal_tensors_and_scale_free():
    a = torch.randn(3, 4, dtype=torch.float64)
    assert ssd_duality.relative_error(a, a) == 0
    assert abs(ssd_duality.relative_error(1.1 * a, a) - 0.1) < 1e-12
    assert abs(ssd_duality.relative_error(1e-30 * 1.1 * a, 1e-30 * a) - 0.1) < 1e-12
