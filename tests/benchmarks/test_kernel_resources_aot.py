"""benchmarks/kernel_resources_aot.py: the launches it captures from ssd_triton's host code on meta tensors, and
(compiled on this CPU for sm_90 by Triton's own compiler, in a process without the interpreter) rows with
positive register counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks import kernel_resources_aot as aot
from mambalab.ops.ssd.triton_ssd import SSDConfig

TINY = {"chunk": 16, "chunk_fused": 16, "block_p_forward": 16, "block_p_backward": 16, "block_p_state": 16,
        "warps_fused": 1, "warps_state": 1, "warps_adjoint": 1, "warps_backward": 1, "stages": 1, "stages_backward": 1,
        "forward_mode": "fused", "block_p_state_side": 16, "warps_state_side": 1, "stages_state_side": 1}
KERNELS = ["ssd_forward_kernel", "ssd_forward_kernel", "ssd_adjoint_kernel", "ssd_chunk_backward_kernel",
           "ssd_chunk_state_side_kernel"]


def test_captures_every_launch_of_forward_and_backward(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the launches the compiled kernels would get
    launches = aot.captured_launches(aot.model_inputs(1, 40, 2), SSDConfig(**TINY))
    assert [launch.kernel for launch in launches] == KERNELS
    fused, states = launches[0].kwargs, launches[1].kwargs
    assert fused["STORE_Y"] and not fused["STORE_STATES"] and states["STORE_STATES"] and not states["STORE_Y"]
    assert launches[3].kwargs["num_warps"] == 1 and launches[3].kwargs["BLOCK_P"] == 16
    assert not launches[3].kwargs["STATE_SIDE"] and launches[4].kwargs["num_warps"] == 1


def test_compiled_rows_have_resources(tmp_path):
    out = tmp_path / "rows.json"
    spec = ",".join(f"{k}={v}" for k, v in TINY.items())
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": os.getcwd()}
    subprocess.run([sys.executable, "benchmarks/kernel_resources_aot.py", "--batch", "1", "--heads", "2",
                    "--lengths", "40", "--no-default", "--also", spec, "--json", str(out)], check=True, env=env,
                   capture_output=True)
    rows = json.loads(out.read_text())
    assert [r["kernel"] for r in rows] == KERNELS
    for row in rows:
        assert row["registers"] > 0 and row["num_warps"] == 1 and row["shared_bytes"] >= 0, row
        assert row["spilled_bytes"] == row["stack_bytes"] + row["local_bytes"] >= 0
    assert rows[-1]["constexprs"]["BLOCK_Q"] == 16 and rows[-1]["config"]["warps_backward"] == 1
