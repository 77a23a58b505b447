"""Study (a): the error measure and the float64 agreement of the parallel and recurrent modes."""

from __future__ import annotations

import torch

from mambalab.experiments.precision import op_rows, position_errors
from mambalab.experiments.presets import PrecisionStudy


def test_position_errors_measures_per_position_and_fails_on_nan():
    ref = torch.randn(2, 3, 5)  # (b, d, l)
    out = ref.clone()
    out[..., 4] *= 1.5  # only the last position is off, by 50%
    err = position_errors(out, ref, time_dim=-1)
    assert (
        abs(err["max_rel_error"] - 0.5) < 1e-6 and abs(err["mean_rel_error"] - 0.1) < 1e-6
    )  # float32 inputs
    out[0, 0, 0] = float("nan")
    assert position_errors(out, ref, time_dim=-1)["max_rel_error"] == float("inf")


def test_scan_modes_agree_in_float64_and_lower_precisions_are_measured():
    study = PrecisionStudy(lengths=(24,), dtypes=("float64", "float32", "bfloat16"), batch_size=1)
    rows = op_rows(study, dim=4, n=3, seed=int(torch.randint(0, 1000, ()).item()))
    by = {(r["dtype"], r["mode"]): r["max_rel_error"] for r in rows}
    assert by[("float64", "parallel")] < 1e-12 and by[("float64", "recurrent")] < 1e-12
    assert 1e-9 < by[("float32", "parallel")] < 1e-4
    assert by[("bfloat16", "recurrent")] > by[("float32", "recurrent")]
