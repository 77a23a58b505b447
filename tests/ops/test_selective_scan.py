"""selective_scan backends against the for-loop reference: forward, final state and every gradient."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from mambalab.ops import backends
from mambalab.ops.selective_scan import OP, _load_cpu, resolve_backend, selective_scan
from mambalab.ops.selective_scan.torch_scan import chunked_selective_scan
from tests.conftest import rel_error

BACKENDS = ["torch"]
OPTIONS = {  # which optional arguments a case passes
    "none": set(),
    "all": {"D", "z", "delta_bias", "softplus", "initial_state"},
    "D+softplus": {"D", "softplus"},
    "z+bias+state": {"z", "delta_bias", "initial_state"},
}
TENSOR_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def make_inputs(batch, dim, n, length, groups, options, dtype=torch.float64, rows=None):
    """Fresh random arguments of realistic scale; groups=1 uses the 3-D B/C layout, rows = initial states."""
    bc_shape = (batch, n, length) if groups == 1 else (batch, groups, n, length)
    kw = {
        "u": torch.randn(batch, dim, length, dtype=dtype),
        # without softplus Δ must be positive already
        "delta": torch.randn(batch, dim, length, dtype=dtype) if "softplus" in options
        else torch.rand(batch, dim, length, dtype=dtype) * 0.5,
        "A": -(torch.rand(dim, n, dtype=dtype) * 2 + 0.1),
        "B": torch.randn(*bc_shape, dtype=dtype),
        "C": torch.randn(*bc_shape, dtype=dtype),
    }
    if "D" in options:
        kw["D"] = torch.randn(dim, dtype=dtype)
    if "z" in options:
        kw["z"] = torch.randn(batch, dim, length, dtype=dtype)
    if "delta_bias" in options:  # without softplus, Δ + bias must stay positive too
        bias = torch.randn(dim, dtype=dtype) * 0.5
        kw["delta_bias"] = bias if "softplus" in options else bias.abs()
    if "initial_state" in options:
        kw["initial_state"] = torch.randn(rows or batch, dim, n, dtype=dtype)
    kw["delta_softplus"] = "softplus" in options
    return kw


def run(backend, kw, **extra):
    args = {k: v for k, v in kw.items() if k not in ("u", "delta", "A", "B", "C")}
    return selective_scan(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], **args, **extra, backend=backend)


def grads_of(kw, y, final_state, gy, gh):
    """Gradients of <y, gy> + <final_state, gh> with respect to every tensor argument present."""
    names = [k for k in TENSOR_ARGS if k in kw]
    loss = (y * gy).sum() + (final_state * gh).sum()
    return dict(zip(names, torch.autograd.grad(loss, [kw[k] for k in names])))


def requiring_grad(kw):
    return {k: v.clone().requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", list(OPTIONS))
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("length", [1, 7, 257, 1000])
def test_matches_reference_float64(backend, length, groups, options):
    kw = make_inputs(2, 4, 3, length, groups, OPTIONS[options])
    ref_kw, kw = requiring_grad(kw), requiring_grad(kw)
    y_ref, h_ref = run("reference", ref_kw, return_final_state=True)
    y, h = run(backend, kw, return_final_state=True)
    assert y.dtype == torch.float64 and h.dtype == torch.float64
    assert rel_error(y, y_ref) <= 1e-10
    assert rel_error(h, h_ref) <= 1e-10
    gy, gh = torch.randn_like(y_ref), torch.randn_like(h_ref)
    g_ref = grads_of(ref_kw, y_ref, h_ref, gy, gh)
    g = grads_of(kw, y, h, gy, gh)
    for name in g_ref:
        assert rel_error(g[name], g_ref[name]) <= 1e-8, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("groups", [1, 2])
def test_float32_matches_float64_reference(backend, groups):
    kw = make_inputs(2, 8, 4, 300, groups, OPTIONS["all"])
    y_ref, h_ref = run("reference", kw, return_final_state=True)
    y, h = run(backend, {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in kw.items()},
               return_final_state=True)
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    assert rel_error(y, y_ref) <= 1e-5
    assert rel_error(h, h_ref) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_dtype_follows_u_and_state_is_float32(backend):
    kw = make_inputs(1, 4, 2, 9, 1, OPTIONS["all"], dtype=torch.float32)
    kw["u"], kw["z"] = kw["u"].bfloat16(), kw["z"].bfloat16()
    y, h = run(backend, kw, return_final_state=True)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    y_ref, h_ref = run("reference", kw, return_final_state=True)
    assert rel_error(y, y_ref) <= 1e-2 and rel_error(h, h_ref) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("groups", [1, 2])
def test_gradcheck(backend, groups):
    kw = requiring_grad(make_inputs(1, 2, 2, 5, groups, OPTIONS["all"]))
    names = [k for k in TENSOR_ARGS if k in kw]

    def f(*tensors):
        args = dict(kw, **dict(zip(names, tensors)))
        return run(backend, args, return_final_state=True)

    assert torch.autograd.gradcheck(f, [kw[k] for k in names])


@pytest.mark.parametrize(("chunk_len", "sub_len"), [(1, 1), (4, 2), (16, 16), (64, 8)])
def test_torch_chunk_sizes(chunk_len, sub_len):
    """Every chunking of the parallel scan (one step per chunk up to one chunk for all) gives the same result."""
    kw = requiring_grad(make_inputs(2, 4, 3, 37, 2, OPTIONS["all"]))
    ref_kw = requiring_grad(kw)
    y_ref, h_ref = run("reference", ref_kw, return_final_state=True)
    y, h = chunked_selective_scan(
        **{k: v for k, v in kw.items()}, return_final_state=True, chunk_len=chunk_len, sub_len=sub_len
    )
    assert rel_error(y, y_ref) <= 1e-10 and rel_error(h, h_ref) <= 1e-10
    gy, gh = torch.randn_like(y), torch.randn_like(h)
    g_ref, g = grads_of(ref_kw, y_ref, h_ref, gy, gh), grads_of(kw, y, h, gy, gh)
    for name in g_ref:
        assert rel_error(g[name], g_ref[name]) <= 1e-8, name


def saved_fraction(backend) -> float:
    """Bytes a backend saves for the backward (n = 64, float32), as a fraction of the (b, d, l, n) states of
    the whole sequence; also checks that the backward then gives every gradient."""
    batch, dim, n, length = 1, 32, 64, 512
    kw = requiring_grad(make_inputs(batch, dim, n, length, 1, OPTIONS["all"], dtype=torch.float32))
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = run(backend, kw)
    y.sum().backward()
    assert all(kw[k].grad is not None for k in TENSOR_ARGS if k in kw)
    return sum(saved) / (batch * dim * length * n * 4)


def test_torch_backward_keeps_no_full_state_tensor():
    """What the torch backend saves for the backward is a few (b, d, l) tensors and one state per sub-chunk:
    far less than the (b, d, l, n) states of the whole sequence (here n = 64, so those would be 64 × (b, d, l))."""
    assert 0 < saved_fraction("torch") < 1 / 3  # 0.24 at these sizes


def test_torch_chunk_len_must_be_multiple_of_sub_len():
    kw = make_inputs(1, 2, 2, 4, 1, set())
    with pytest.raises(ValueError, match="chunk_len"):
        chunked_selective_scan(**kw, chunk_len=6, sub_len=4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_sequence_extreme_steps_stay_finite(backend):
    """Δ from 1e-4 to 30 and |A| up to 64 over 3000 steps: nothing overflows, float32 tracks the reference."""
    batch, dim, n, length = 1, 4, 4, 3000
    kw = {
        "u": torch.randn(batch, dim, length, dtype=torch.float64),
        "delta": 10 ** (torch.rand(batch, dim, length, dtype=torch.float64) * 5.5 - 4),
        "A": -torch.arange(1, n + 1, dtype=torch.float64).repeat(dim, 1) * torch.tensor([[1.0], [4.0], [0.01], [16]]),
        "B": torch.randn(batch, n, length, dtype=torch.float64),
        "C": torch.randn(batch, n, length, dtype=torch.float64),
    }
    y_ref, h_ref = run("reference", kw, return_final_state=True)
    y, h = run(backend, {k: v.float() for k, v in kw.items()}, return_final_state=True)
    assert rel_error(y, y_ref) <= 1e-5 and rel_error(h, h_ref) <= 1e-5


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("split", [0, 1, 130, 299])
def test_continuation(backend, split):
    """Scanning [0, k) then [k, L) from the first part's final state equals scanning [0, L)."""
    length = 300
    kw = make_inputs(2, 4, 3, length, 2, OPTIONS["all"])
    y_full, h_full = run(backend, kw, return_final_state=True)

    def part(sl, state):
        p = {k: (v[..., sl] if k in ("u", "delta", "z", "B", "C") else v) for k, v in kw.items()}
        return run(backend, dict(p, initial_state=state), return_final_state=True)

    y1, h1 = part(slice(0, split), kw["initial_state"])
    y2, h2 = part(slice(split, length), h1)
    assert rel_error(torch.cat([y1, y2], dim=-1), y_full) <= 1e-12
    assert rel_error(h2, h_full) <= 1e-12


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_cu_seqlens_equals_separate_scans(backend):
    """Packed sequences (one of them empty) reset the state at each boundary; per-sequence initial/final states."""
    lengths = [5, 0, 300, 17]
    bounds = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    kw = requiring_grad(make_inputs(1, 4, 3, sum(lengths), 2, OPTIONS["all"], rows=len(lengths)))
    y, h = run(backend, kw, return_final_state=True, cu_seqlens=bounds)
    assert h.shape == (len(lengths), 4, 3)
    gy, gh = torch.randn_like(y), torch.randn_like(h)
    g = grads_of(kw, y, h, gy, gh)

    sep = requiring_grad(kw)
    ys, hs = [], []
    for i, (s, e) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist())):
        p = {k: (v[..., s:e] if k in ("u", "delta", "z", "B", "C") else v) for k, v in sep.items()}
        yi, hi = run(backend, dict(p, initial_state=sep["initial_state"][i : i + 1]), return_final_state=True)
        ys.append(yi)
        hs.append(hi)
    y_sep, h_sep = torch.cat(ys, dim=-1), torch.cat(hs)
    assert rel_error(y, y_sep) <= 1e-12 and rel_error(h, h_sep) <= 1e-12
    g_sep = grads_of(sep, y_sep, h_sep, gy, gh)
    for name in g_sep:
        assert rel_error(g[name], g_sep[name]) <= 1e-12, name


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_without_final_state_returns_only_y(backend):
    kw = make_inputs(1, 2, 2, 6, 1, set())
    y = run(backend, kw)
    assert isinstance(y, torch.Tensor) and y.shape == (1, 2, 6)


def _bad(**changes):
    """A valid call (batch 2, dim 4, N 3, L 5, G 2) with some arguments replaced."""
    kw = make_inputs(2, 4, 3, 5, 2, OPTIONS["all"])
    kw.update(changes)
    return kw


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        (_bad(u=torch.randn(2, 4)), "u"),
        (_bad(delta=torch.randn(2, 4, 6)), "delta"),
        (_bad(A=torch.randn(5, 3)), "A"),
        (_bad(B=torch.randn(2, 2, 4, 5)), "B"),
        (_bad(B=torch.randn(2, 3, 5, 1)), "B"),
        (_bad(C=torch.randn(2, 2, 3, 4)), "C"),
        (_bad(B=torch.randn(2, 3, 3, 5), C=torch.randn(2, 3, 3, 5)), "B's group count"),
        (_bad(D=torch.randn(3)), "D"),
        (_bad(delta_bias=torch.randn(4, 1)), "delta_bias"),
        (_bad(z=torch.randn(2, 4, 4)), "z"),
        (_bad(initial_state=torch.randn(2, 4, 2)), "initial_state"),
    ],
)
def test_validation_names_the_argument(kw, name):
    with pytest.raises(ValueError, match=f"selective_scan: {name}"):
        run("torch", kw)


@pytest.mark.parametrize(
    ("cu_seqlens", "message"),
    [
        (torch.tensor([[0, 5]]), "cu_seqlens must be 1-D"),
        (torch.tensor([0.0, 5.0]), "cu_seqlens must be an integer"),
        (torch.tensor([1, 5]), "cu_seqlens must start at 0"),
        (torch.tensor([0, 4]), "cu_seqlens must start at 0 and end at L=5"),
        (torch.tensor([0, 3, 2, 5]), "cu_seqlens must be non-decreasing"),
        ([0, 5], "cu_seqlens must be a torch.Tensor, got list"),
        (torch.tensor([0, 5], device="meta"), "cu_seqlens must be on u's device cpu, got meta"),
        (torch.tensor([0, 5], dtype=torch.complex64), "cu_seqlens must be an integer tensor, got torch.complex64"),
    ],
)
def test_cu_seqlens_validation(cu_seqlens, message):
    kw = make_inputs(1, 4, 3, 5, 1, set())
    with pytest.raises(ValueError, match=message):
        run("torch", kw, cu_seqlens=cu_seqlens)


@pytest.mark.parametrize("A", [torch.full((4, 3), 0.5), torch.zeros(4, 3), torch.full((4, 3), -float("inf"))])
def test_A_must_be_negative_and_finite(A):
    """As ssd_scan: A = -exp(A_log) < 0 (checked on CPU tensors, where it costs no host sync)."""
    kw = make_inputs(1, 4, 3, 5, 1, set())
    with pytest.raises(ValueError, match="selective_scan: A must be negative and finite"):
        run("torch", {**kw, "A": A.double()})


def test_cu_seqlens_needs_batch_one_and_one_state_per_sequence():
    kw = make_inputs(2, 4, 3, 5, 1, set())
    with pytest.raises(ValueError, match="batch must be 1"):
        run("torch", kw, cu_seqlens=torch.tensor([0, 2, 5]))
    kw = make_inputs(1, 4, 3, 5, 1, {"initial_state"})
    with pytest.raises(ValueError, match=r"initial_state must be \(2, "):
        run("torch", kw, cu_seqlens=torch.tensor([0, 2, 5]))


def test_unknown_backend_is_a_clear_error():
    kw = make_inputs(1, 2, 2, 3, 1, set())
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        run("nope", kw)


def test_auto_on_cpu_is_the_compiled_backend_else_torch():
    """'auto' on CPU is 'cpu' where a C compiler builds its kernels, else 'torch': the fallback is simulated by
    registering a "cpu" loader that raises BackendUnavailable, as a failed compile does."""
    cpu = torch.device("cpu")
    assert {"reference", "torch", "cpu"} <= set(backends.names(OP))
    kw = make_inputs(1, 2, 2, 3, 1, OPTIONS["all"])
    if shutil.which(os.environ.get("CC") or "cc"):
        assert resolve_backend("auto", cpu) == "cpu"
        assert torch.equal(run("auto", kw), run("cpu", kw))

    def unavailable():
        raise backends.BackendUnavailable("simulated: no C compiler")

    backends.register(OP, "cpu", unavailable)
    try:
        assert resolve_backend("auto", cpu) == "torch"
        assert torch.equal(run("auto", kw), run("torch", kw))
        with pytest.raises(backends.BackendUnavailable, match="simulated"):
            run("cpu", kw)
    finally:
        backends.register(OP, "cpu", _load_cpu)
    assert resolve_backend("auto", cpu) == ("cpu" if backends.is_available(OP, "cpu") else "torch")
