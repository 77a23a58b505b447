"""selective_state_update equals one step of the reference scan."""

from __future__ import annotations

import pytest
import torch

from mambalab.ops.selective_scan import selective_scan
from mambalab.ops.state_update import selective_state_update
from tests.conftest import rel_error


@pytest.mark.parametrize("groups", [None, 1, 2])
@pytest.mark.parametrize("full", [False, True])
def test_equals_one_reference_step(groups, full):
    batch, dim, n = 3, 4, 5
    f64 = torch.float64
    state = torch.randn(batch, dim, n, dtype=f64)
    x, dt, z = (torch.randn(batch, dim, dtype=f64) for _ in range(3))
    A = -(torch.rand(dim, n, dtype=f64) + 0.1)
    bc = (batch, n) if groups is None else (batch, groups, n)
    B, C = torch.randn(*bc, dtype=f64), torch.randn(*bc, dtype=f64)
    D, bias = torch.randn(dim, dtype=f64), torch.randn(dim, dtype=f64)
    opt = {"D": D, "z": z[..., None], "delta_bias": bias, "delta_softplus": True} if full else {}
    if not full:
        dt = dt.abs()
    y_ref, h_ref = selective_scan(
        x[..., None], dt[..., None], A, B[..., None], C[..., None], initial_state=state, return_final_state=True,
        backend="reference", **opt,
    )
    new_state = state.clone()
    y = selective_state_update(
        new_state, x, dt, A, B, C, D=opt.get("D"), z_t=z if full else None, dt_bias=opt.get("delta_bias"), dt_softplus=full
    )
    assert rel_error(y, y_ref[..., 0]) <= 1e-12
    assert rel_error(new_state, h_ref) <= 1e-12


def test_float32_state_bf16_input():
    state = torch.randn(2, 4, 3)
    x = torch.randn(2, 4).bfloat16()
    y = selective_state_update(state, x, torch.rand(2, 4), -torch.rand(4, 3), torch.randn(2, 3), torch.randn(2, 3))
    assert y.dtype == torch.bfloat16 and state.dtype == torch.float32 and torch.isfinite(state).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"state": torch.randn(2, 4)}, "state must be"),
        ({"x_t": torch.randn(2, 5)}, "x_t must be"),
        ({"dt_t": torch.randn(3, 4)}, "dt_t must be"),
        ({"A": torch.randn(4, 2)}, "A must be"),
        ({"B_t": torch.randn(2, 2)}, "B_t must be"),
        ({"B_t": torch.randn(2, 3, 3), "C_t": torch.randn(2, 3, 3)}, "B_t must be"),
        ({"C_t": torch.randn(2, 1, 3)}, "C_t must have"),
        ({"D": torch.randn(3)}, "D must be"),
        ({"z_t": torch.randn(2, 3)}, "z_t must be"),
        ({"dt_bias": torch.randn(5)}, "dt_bias must be"),
    ],
)
def test_validation(change, message):
    args = {"state": torch.randn(2, 4, 3), "x_t": torch.randn(2, 4), "dt_t": torch.randn(2, 4),
            "A": -torch.rand(4, 3), "B_t": torch.randn(2, 3), "C_t": torch.randn(2, 3)}
    args.update(change)
    with pytest.raises(ValueError, match=f"selective_state_update: {message}"):
        selective_state_update(**args)
