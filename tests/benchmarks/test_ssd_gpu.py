"""benchmarks/ssd_gpu.py: how the sweep's rows combine into its best config, --also, and the whole script at
tiny shapes in Triton's interpreter (--smoke), so that a device call never finds it broken."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import common, ssd_gpu
from mambalab.ops.ssd.triton_ssd import SSDConfig


def _row(fields, fwd, fwdbwd):
    return {"fields": fields, "fwd_ms": fwd, "fwdbwd_ms": fwdbwd}


def test_shape_option_parses_three_integers_and_names_a_bad_one():
    assert ssd_gpu.parse_shape("8,24,8192") == (8, 24, 8192)
    with pytest.raises(SystemExit, match="'8,24': expected three integers batch,heads,length"):
        ssd_gpu.parse_shape("8,24")


def test_best_combination_never_mixes_state_modes():
    """The fastest forward is a walk row and the fastest backward a parallel row: the combination does not
    pair them (the parallel forward was never timed with the walk's backward); the group with the least
    estimated forward+backward wins."""
    rows = {
        "default": _row({}, 1.0, 4.0),  # backward 3.0
        "fused": _row({"forward_mode": "fused"}, 0.5, 3.8),  # fastest forward, backward 3.3
        "parallel": _row({"state_mode": "parallel"}, 1.2, 3.4),  # fastest backward 2.2
        "parallel_chunked": _row({"state_mode": "parallel", "forward_mode": "chunked"}, 1.1, 3.9),
    }
    best, estimate = ssd_gpu.best_combination(rows)
    assert best == SSDConfig(state_mode="parallel", forward_mode="chunked")
    assert estimate == pytest.approx(1.1 + 2.2)
    rows["parallel"] = _row({"state_mode": "parallel"}, 1.2, 4.9)  # now walk's 0.5 + 3.0 wins
    best, estimate = ssd_gpu.best_combination(rows)
    assert best == SSDConfig(forward_mode="fused") and estimate == pytest.approx(3.5)


def test_parse_config():
    assert ssd_gpu.parse_config("state_mode=parallel,block_pass=512") == {"state_mode": "parallel",
                                                                         "block_pass": 512}
    with pytest.raises(SystemExit, match="not an SSDConfig field"):
        ssd_gpu.parse_config("mode=parallel")
    with pytest.raises(ValueError, match="state_mode"):
        ssd_gpu.parse_config("state_mode=scan")


@pytest.mark.slow
def test_smoke_run_writes_every_stage(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": f"{common.REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run([sys.executable, "benchmarks/ssd_gpu.py", "--smoke", "--also", "state_mode=parallel",
                    "--out", str(tmp_path)], cwd=common.REPO, env=env, check=True, capture_output=True, timeout=600)
    record = json.loads((tmp_path / "ssd_gpu.json").read_text())
    assert "errors" not in record, record.get("errors")
    (row,) = record["shapes"].values()
    for name in ("ours", "ours_state_mode=parallel"):
        assert row[f"{name}_fwd_ms"] > 0 and row[f"{name}_fwdbwd_ms"] > 0
    assert record["sweep"]["best"] is not None and set(record["decode_step"]) == {"b1", "b64"}
    assert max(record["correctness_vs_torch_fp32"]["ours"].values()) < 2e-2
    assert record["kernel_resources"] == []  # interpreted: nothing compiled
