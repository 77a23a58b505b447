"""ssd_scan's PyTorch backends (quadratic, torch) and the decode step against the float64 for-loop:
outputs, final state and the gradients of every input; continuation, packed sequences, validation."""

from __future__ import annotations

import pytest
import torch

import mambalab
from mambalab.errors import InputError
from mambalab.ops import backends
from mambalab.ops.ssd import OP, ssd_scan, ssd_state_update
from tests.conftest import rel_error
from tests.ops.ssd_cases import (
    ALL_OPTIONS,
    check_against_reference,
    grads_of,
    make_inputs,
    requiring_grad,
    run,
    with_one_float64,
)

OPTIONS = {
    "none": frozenset(),
    "all": ALL_OPTIONS,
    "D+softplus": frozenset({"D", "softplus"}),
    "z+bias+state": frozenset({"z", "dt_bias", "initial_state"}),
}


@pytest.mark.parametrize("backend,chunk_size", [("quadratic", 64), ("torch", 8), ("torch", 5), ("torch", 64)])
@pytest.mark.parametrize("options", list(OPTIONS))
@pytest.mark.parametrize("length", [1, 13, 40])
def test_matches_reference_float64(backend, chunk_size, length, options):
    # odd sizes: l not a multiple of the chunk, g < h, p and n odd
    kw = make_inputs(2, length, 4, 3, 2, 5, OPTIONS[options])
    check_against_reference(backend, kw, chunk_size=chunk_size)


@pytest.mark.parametrize("backend", ["quadratic", "torch"])
def test_d_per_channel_and_one_group(backend):
    kw = make_inputs(1, 19, 3, 5, 1, 3, d_matrix=True)
    check_against_reference(backend, kw, chunk_size=4)


@pytest.mark.parametrize("backend", ["quadratic", "torch"])
@pytest.mark.parametrize("name", ["dt", "A", "B", "C", "D", "initial_state"])
def test_one_float64_input_among_float32_ones(backend, name):
    kw = with_one_float64(make_inputs(1, 19, 2, 3, 1, 4, frozenset({"D", "softplus", "initial_state"})), name)
    check_against_reference(backend, kw, 1e-5, 3e-5, chunk_size=8)


def test_reference_is_the_recurrence():
    """The oracle itself, checked against the formulas written out for one head, one step at a time."""
    kw = make_inputs(1, 6, 2, 2, 1, 3, frozenset({"D", "initial_state"}))
    y, final = run("reference", kw, return_final_state=True)
    for head in range(2):
        state = kw["initial_state"][0, head].clone()
        for t in range(6):
            dt = kw["dt"][0, t, head]
            state = torch.exp(dt * kw["A"][head]) * state + dt * torch.outer(kw["x"][0, t, head], kw["B"][0, t, 0])
            expected = state @ kw["C"][0, t, 0] + kw["D"][head] * kw["x"][0, t, head]
            torch.testing.assert_close(y[0, t, head], expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(final[0, head], state, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "quadratic", "torch"])
def test_continuation_with_initial_state_equals_full_scan(backend):
    kw = make_inputs(2, 23, 4, 3, 2, 5, frozenset({"D", "z", "softplus", "dt_bias"}))
    y_full, h_full = run(backend, kw, return_final_state=True, chunk_size=4)
    split = 10
    head = {k: (v[:, :split] if k in ("x", "dt", "B", "C", "z") else v) for k, v in kw.items()}
    tail = {k: (v[:, split:] if k in ("x", "dt", "B", "C", "z") else v) for k, v in kw.items()}
    y1, h1 = run(backend, head, return_final_state=True, chunk_size=4)
    y2, h2 = run(backend, tail, initial_state=h1, return_final_state=True, chunk_size=4)
    assert rel_error(torch.cat([y1, y2], dim=1), y_full) <= 1e-12
    assert rel_error(h2, h_full) <= 1e-12


@pytest.mark.parametrize("backend", ["reference", "quadratic", "torch"])
def test_packed_sequences_equal_separate_ones(backend):
    lengths = [5, 0, 12, 1, 9]
    kw = make_inputs(1, sum(lengths), 4, 3, 2, 5, rows=len(lengths))
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    kw, sep_kw = requiring_grad(kw), requiring_grad(kw)
    y, h = run(backend, kw, return_final_state=True, cu_seqlens=offsets, chunk_size=4)
    ys, hs = [], []
    for s in range(len(lengths)):
        seq = slice(int(offsets[s]), int(offsets[s + 1]))
        one = {k: (v[:, seq] if k in ("x", "dt", "B", "C", "z") else v) for k, v in sep_kw.items()}
        one["initial_state"] = sep_kw["initial_state"][s : s + 1]
        y_s, h_s = run(backend, one, return_final_state=True, chunk_size=4)
        ys.append(y_s)
        hs.append(h_s)
    y_sep, h_sep = torch.cat(ys, dim=1), torch.cat(hs)
    assert rel_error(y, y_sep) <= 1e-12 and rel_error(h, h_sep) <= 1e-12
    assert rel_error(h[1], kw["initial_state"][1]) == 0  # an empty sequence keeps its initial state
    gy, gh = torch.randn_like(y), torch.randn_like(h)
    g, g_sep = grads_of(kw, y, h, gy, gh), grads_of(sep_kw, y_sep, h_sep, gy, gh)
    for name in g:
        assert rel_error(g[name], g_sep[name]) <= 1e-10, name


def test_output_dtypes_and_return_forms():
    kw = make_inputs(1, 9, 2, 4, 1, 4, frozenset({"D"}), dtype=torch.float32)
    kw = {k: (v.bfloat16() if k in ("x", "B", "C") else v) for k, v in kw.items()}
    y = run("torch", kw)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.bfloat16 and y.shape == kw["x"].shape
    y, h = run("torch", kw, return_final_state=True)
    assert h.dtype == torch.float32 and h.shape == (1, 2, 4, 4)
    y_ref = run("reference", kw)
    assert rel_error(y, y_ref) <= 1e-2


def test_public_export_and_auto_backend():
    assert mambalab.ssd_scan is ssd_scan and "ssd_scan" in mambalab.__all__
    assert backends.resolve(OP, "auto", torch.device("cpu")) == "torch"
    assert {"reference", "quadratic", "torch", "triton"} <= set(backends.names(OP))


def _bad(**changes):
    kw = make_inputs(2, 6, 4, 3, 2, 5)
    kw.update(changes)
    return kw


@pytest.mark.parametrize("changes,match", [
    ({"x": torch.randn(2, 6, 4)}, "x must be"),
    ({"dt": torch.randn(2, 6, 3, dtype=torch.float64)}, "dt must be"),
    ({"A": -torch.rand(3, dtype=torch.float64)}, "A must be"),
    ({"A": torch.tensor([-1.0, 0.5, -1.0, -1.0], dtype=torch.float64)}, "A must be negative"),
    ({"A": torch.tensor([-1.0, float("nan"), -1.0, -1.0], dtype=torch.float64)}, "A must be negative and finite"),
    ({"B": torch.randn(2, 6, 3, 5, dtype=torch.float64), "C": torch.randn(2, 6, 3, 5, dtype=torch.float64)},
     "g=3 must divide h=4"),
    ({"B": torch.randn(2, 5, 2, 5, dtype=torch.float64)}, "B must be"),
    ({"C": torch.randn(2, 6, 2, 4, dtype=torch.float64)}, "C must have B's shape"),
    ({"D": torch.randn(3, dtype=torch.float64)}, "D must be"),
    ({"D": torch.randn(4, 2, dtype=torch.float64)}, "D must be"),
    ({"z": torch.randn(2, 6, 4, 2, dtype=torch.float64)}, "z must have x's shape"),
    ({"dt_bias": torch.randn(2, dtype=torch.float64)}, "dt_bias must be"),
    ({"initial_state": torch.randn(2, 4, 3, 4, dtype=torch.float64)}, "initial_state must be"),
    ({"x": torch.randint(0, 3, (2, 6, 4, 3))}, "x must be a floating-point tensor"),
    ({"dt_bias": torch.ones(4, dtype=torch.int64)}, "dt_bias must be a floating-point tensor"),
    ({"x": [1.0]}, "x must be a torch.Tensor"),
])
def test_validation_errors_name_the_argument(changes, match):
    with pytest.raises(InputError, match=match):
        run("torch", _bad(**changes))


@pytest.mark.parametrize("cu_seqlens,match", [
    (torch.tensor([0, 3, 6]), "batch must be 1"),
])
def test_cu_seqlens_needs_batch_one(cu_seqlens, match):
    with pytest.raises(InputError, match=match):
        run("torch", _bad(initial_state=None), cu_seqlens=cu_seqlens)


@pytest.mark.parametrize("cu_seqlens,match", [
    (torch.tensor([0.0, 6.0]), "integer tensor"),
    (torch.tensor([[0, 6]]), "1-D"),
    (torch.tensor([0, 4, 3, 6]), "non-decreasing"),
    (torch.tensor([0, 5]), "end at l=6"),
    (torch.tensor([1, 6]), "start at 0"),
    ([0, 6], "must be a torch.Tensor"),
    (torch.tensor([0, 6], device="meta"), "on x's device"),
])
def test_cu_seqlens_errors(cu_seqlens, match):
    kw = make_inputs(1, 6, 4, 3, 2, 5, frozenset())
    with pytest.raises(InputError, match=match):
        run("torch", kw, cu_seqlens=cu_seqlens)


def test_initial_state_rows_follow_cu_seqlens():
    kw = make_inputs(1, 6, 4, 3, 2, 5, rows=1)
    with pytest.raises(InputError, match=r"initial_state must be \(2,"):
        run("torch", kw, cu_seqlens=torch.tensor([0, 2, 6]))


@pytest.mark.parametrize("chunk_size", [0, -4, 2.0, True])
def test_chunk_size_must_be_positive_int(chunk_size):
    with pytest.raises(InputError, match="chunk_size must be a positive int"):
        run("torch", _bad(), chunk_size=chunk_size)


def test_tensors_on_one_device():
    kw = _bad()
    kw["D"] = kw["D"].to("meta")
    with pytest.raises(InputError, match="one device"):
        run("torch", kw)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        run("nope", _bad())


def step_inputs(batch, heads, head_dim, groups, n, dtype=torch.float64, slots=None):
    return {
        "state": torch.randn(slots or batch, heads, head_dim, n, dtype=dtype),
        "x_t": torch.randn(batch, heads, head_dim, dtype=dtype),
        "dt_t": torch.randn(batch, heads, dtype=dtype),
        "A": -(torch.rand(heads, dtype=dtype) + 0.1),
        "B_t": torch.randn(batch, groups, n, dtype=dtype),
        "C_t": torch.randn(batch, groups, n, dtype=dtype),
        "D": torch.randn(heads, head_dim, dtype=dtype),
        "z_t": torch.randn(batch, heads, head_dim, dtype=dtype),
        "dt_bias": torch.randn(heads, dtype=dtype),
    }


def test_state_update_steps_equal_the_scan():
    kw = make_inputs(2, 7, 4, 3, 2, 5, d_matrix=True)
    y_scan, h_scan = run("reference", kw, return_final_state=True)
    state = kw["initial_state"].clone()
    for t in range(7):
        y_t = ssd_state_update(state, kw["x"][:, t], kw["dt"][:, t], kw["A"], kw["B"][:, t], kw["C"][:, t],
                               D=kw["D"], z_t=kw["z"][:, t], dt_bias=kw["dt_bias"], dt_softplus=True)
        assert rel_error(y_t, y_scan[:, t]) <= 1e-12
    assert rel_error(state, h_scan) <= 1e-12


def test_state_update_slot_pool():
    kw = step_inputs(3, 4, 3, 2, 5, slots=6)
    indices = torch.tensor([4, 0, 2])
    pool = kw["state"].clone()
    rows = kw["state"][indices].clone()
    args = {k: v for k, v in kw.items() if k != "state"}
    y_pool = ssd_state_update(pool, **args, state_batch_indices=indices)
    y_rows = ssd_state_update(rows, **args)
    assert rel_error(y_pool, y_rows) == 0
    assert rel_error(pool[indices], rows) == 0
    untouched = torch.tensor([1, 3, 5])
    assert torch.equal(pool[untouched], kw["state"][untouched])


@pytest.mark.parametrize("change,match", [
    ({"x_t": torch.randn(3, 4)}, "x_t must be"),
    ({"dt_t": torch.randn(3, 3, dtype=torch.float64)}, "dt_t must be"),
    ({"B_t": torch.randn(3, 3, 5, dtype=torch.float64), "C_t": torch.randn(3, 3, 5, dtype=torch.float64)},
     "must divide h=4"),
    ({"state": torch.randn(3, 4, 3, 4, dtype=torch.float64)}, "state must be"),
    ({"A": torch.ones(4, dtype=torch.float64)}, "A must be negative"),
    ({"state_batch_indices": torch.tensor([0.0, 1.0, 2.0])}, "state_batch_indices must be"),
])
def test_state_update_validation(change, match):
    kw = step_inputs(3, 4, 3, 2, 5)
    kw.update(change)
    with pytest.raises(InputError, match=match):
        ssd_state_update(**kw)
