"""`mambalab demo`: the backends agree with the for-loop reference, recurrent decoding matches the parallel
forward, and the timing table has the loop and every fast CPU backend available here."""

from __future__ import annotations

from typer.testing import CliRunner

from mambalab.cli import app
from mambalab.demo import FAST_CPU_BACKENDS, run_demo
from mambalab.ops import backends
from mambalab.ops.selective_scan import OP


def test_demo_numbers():
    result = run_demo(seed=1)
    for row in result.agreement:
        if "error" in row:  # a backend that cannot take these inputs (Triton under the interpreter: no float64)
            assert row["backend"] not in FAST_CPU_BACKENDS, row
            continue
        tol = 1e-10 if row["dtype"] == "float64" else 1e-5
        assert row["y_rel_err"] <= tol and row["state_rel_err"] <= tol, row
    assert result.decode["max_rel_err_recurrent_vs_parallel"] <= 1e-5
    available = [n for n in FAST_CPU_BACKENDS if backends.is_available(OP, n)]
    assert "torch" in available
    for row in result.timing:
        assert row["reference_ms"] > 0 and all(row[f"{n}_ms"] > 0 for n in available)


def test_demo_command_prints_its_three_parts():
    out = CliRunner().invoke(app, ["demo"])
    assert out.exit_code == 0, out.output
    for part in ("1. selective_scan backends", "2. prefill", "3. per-timestep loop", "torch ms"):
        assert part in out.output
