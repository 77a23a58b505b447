"""Random SSD arguments and gradient helpers shared by the ssd test files."""

from __future__ import annotations

import torch

from mambalab import ssd_scan
from tests.conftest import rel_error

TENSOR_ARGS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")
ALL_OPTIONS = frozenset({"D", "z", "dt_bias", "softplus", "initial_state"})


def make_inputs(batch, length, heads, head_dim, groups, n, options=ALL_OPTIONS, dtype=torch.float64, rows=None,
                d_matrix=False, device="cpu"):
    """Fresh random arguments of realistic scale; without softplus Δ + bias stays positive."""
    softplus = "softplus" in options
    kw = {
        "x": torch.randn(batch, length, heads, head_dim, dtype=dtype),
        "dt": torch.randn(batch, length, heads, dtype=dtype) if softplus
        else torch.rand(batch, length, heads, dtype=dtype) * 0.5,
        "A": -(torch.rand(heads, dtype=dtype) * 2 + 0.1),
        "B": torch.randn(batch, length, groups, n, dtype=dtype),
        "C": torch.randn(batch, length, groups, n, dtype=dtype),
    }
    if "D" in options:
        kw["D"] = torch.randn(heads, head_dim, dtype=dtype) if d_matrix else torch.randn(heads, dtype=dtype)
    if "z" in options:
        kw["z"] = torch.randn(batch, length, heads, head_dim, dtype=dtype)
    if "dt_bias" in options:
        bias = torch.randn(heads, dtype=dtype) * 0.5
        kw["dt_bias"] = bias if softplus else bias.abs()
    if "initial_state" in options:
        kw["initial_state"] = torch.randn(rows or batch, heads, head_dim, n, dtype=dtype)
    kw = {k: v.to(device) for k, v in kw.items()}
    kw["dt_softplus"] = softplus
    return kw


def run(backend, kw, **extra):
    args = {k: v for k, v in kw.items() if k not in ("x", "dt", "A", "B", "C")}
    return ssd_scan(kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], **args, **extra, backend=backend)


def requiring_grad(kw):
    return {k: v.clone().requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}


def grads_of(kw, y, final_state, gy, gh):
    """Gradients of <y, gy> + <final_state, gh> with respect to every tensor argument present."""
    names = [k for k in TENSOR_ARGS if k in kw]
    loss = (y * gy).sum() + (final_state * gh).sum()
    return dict(zip(names, torch.autograd.grad(loss, [kw[k] for k in names]), strict=True))


def check_against_reference(backend, kw, out_bound=1e-9, grad_bound=1e-7, device="cpu", **extra):
    """Outputs, final state and the gradients of every input of `backend` (run on `device`) against the
    for-loop on the same inputs (on CPU); the final state is float64 when any of x, dt, A, B, C is, else float32."""
    ref_kw = requiring_grad(kw)
    kw = requiring_grad({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
    extra_dev = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in extra.items()}
    y_ref, h_ref = run("reference", ref_kw, return_final_state=True, **extra)
    y, h = run(backend, kw, return_final_state=True, **extra_dev)
    assert y.dtype == kw["x"].dtype and y.device == kw["x"].device
    state_inputs = ("x", "dt", "A", "B", "C")
    assert h.dtype == (torch.float64 if any(kw[k].dtype == torch.float64 for k in state_inputs) else torch.float32)
    assert rel_error(y, y_ref) <= out_bound
    assert rel_error(h, h_ref) <= out_bound
    gy, gh = torch.randn_like(y_ref), torch.randn_like(h_ref)
    g_ref = grads_of(ref_kw, y_ref, h_ref, gy, gh)
    g = grads_of(kw, y, h, gy.to(device), gh.to(device))
    for name, grad in g_ref.items():
        assert g[name].dtype == kw[name].dtype, name
        assert rel_error(g[name], grad) <= grad_bound, name


def with_one_float64(kw, name):
    """float32 inputs but `name`, left in float64 (mixed-precision callers)."""
    return {k: v.float() if isinstance(v, torch.Tensor) and k != name else v for k, v in kw.items()}
