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
        ({"x_t": torch.ones(2, 4, dtype=torch.int64)}, "x_t must be a floating-point tensor, got torch.int64"),
        ({"state": torch.zeros(2, 4, 3, dtype=torch.int32)}, "state must be a floating-point tensor"),
        ({"D": torch.randn(4, device="meta")}, "all tensors must be on one device"),
    ],
)
def test_validation(change, message):
    args = {"state": torch.randn(2, 4, 3), "x_t": torch.randn(2, 4), "dt_t": torch.randn(2, 4),
            "A": -torch.rand(4, 3), "B_t": torch.randn(2, 3), "C_t": torch.randn(2, 3)}
    args.update(change)
    with pytest.raises(ValueError, match=f"selective_state_update: {message}"):
        selective_state_update(**args)


def test_reference_steps_with_slot_indices_update_only_their_slots():
    """The reference state update, conv update and mixer step with state_batch_indices equal the plain steps on
    the gathered slots; the other slots are untouched."""
    from mambalab.ops.causal_conv1d import causal_conv1d_update
    from mambalab.ops.state_update import mixer_step

    batch, slots, dim, n, width, rank = 2, 5, 6, 3, 4, 2
    idx = torch.tensor([3, 0])
    x, z, dt = (torch.randn(batch, dim, dtype=torch.float64) for _ in range(3))
    A, B, C = -torch.rand(dim, n, dtype=torch.float64), torch.randn(batch, n, dtype=torch.float64), torch.randn(
        batch, n, dtype=torch.float64)
    ssm, conv = torch.randn(slots, dim, n, dtype=torch.float64), torch.randn(slots, dim, width, dtype=torch.float64)
    weight, bias = torch.randn(dim, width, dtype=torch.float64), torch.full((dim,), -2.0, dtype=torch.float64)
    x_proj, dt_proj = torch.randn(rank + 2 * n, dim, dtype=torch.float64), torch.randn(dim, rank, dtype=torch.float64)
    steps = [
        (lambda s, i: selective_state_update(s[0], x, dt, A, B, C, z_t=z, state_batch_indices=i), (ssm,)),
        (lambda s, i: causal_conv1d_update(x, s[0], weight, None, "silu", state_batch_indices=i), (conv,)),
        (lambda s, i: mixer_step(x, z, s[0], s[1], weight, None, x_proj, dt_proj, bias,
                                 A.neg().log(), state_batch_indices=i), (conv, ssm)),
    ]
    for step, states in steps:
        pooled = [s.clone() for s in states]
        rows = [s[idx].clone() for s in states]
        y = step(pooled, idx)
        y_ref = step(rows, None)
        assert rel_error(y, y_ref) < 1e-12
        for pool, row, original in zip(pooled, rows, states):
            expected = original.clone()
            expected[idx] = row
            assert torch.equal(pool, expected)


def _mixer_args(dim=4, n=3, rank=2, width=3, batch=2):
    return {"x_t": torch.randn(batch, dim), "z_t": torch.randn(batch, dim), "conv_state": torch.randn(batch, dim, width),
            "ssm_state": torch.randn(batch, dim, n), "conv_weight": torch.randn(dim, width),
            "conv_bias": torch.randn(dim), "x_proj_weight": torch.randn(rank + 2 * n, dim),
            "dt_proj_weight": torch.randn(dim, rank), "dt_proj_bias": torch.randn(dim), "A_log": torch.randn(dim, n),
            "D": torch.randn(dim)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"D": torch.randn(1)}, r"D must be None or \(4,\), got \(1,\)"),
        ({"D": torch.randn(7)}, r"D must be None or \(4,\), got \(7,\)"),
        ({"conv_bias": torch.randn(1)}, r"conv_bias must be None or \(4,\), got \(1,\)"),
        ({"conv_bias": torch.randn(4, 1)}, r"conv_bias must be None or \(4,\), got \(4, 1\)"),
        ({"x_t": torch.ones(2, 4, dtype=torch.int64)}, "x_t must be a floating-point tensor"),
    ],
)
def test_mixer_step_validation(change, message):
    """D and conv_bias are None or (dim,) as in the single ops (the kernels read dim entries of them)."""
    from mambalab.ops.state_update import mixer_step

    with pytest.raises(ValueError, match=f"mixer_step: {message}"):
        mixer_step(**{**_mixer_args(), **change}, backend="reference")


def test_mixer_step_takes_no_d_and_no_conv_bias():
    from mambalab.ops.state_update import mixer_step

    assert mixer_step(**{**_mixer_args(), "D": None, "conv_bias": None}, backend="reference").shape == (2, 4)
