"""`ssd_scan` (Mamba-2's state space duality layer) and its decode step `ssd_state_update`: validate the
arguments once, then dispatch to a named backend.

Backends of "ssd_scan": "reference" (the for-loop, the oracle; glossary in reference.py), "quadratic" (the
dual, attention-like form), "torch" (chunked, pure PyTorch, any device), "triton" (fused chunked kernels),
"auto" (triton on CUDA when it can run there, else torch). Backends of "ssd_state_update": "reference",
"triton", "auto". Every backend of an op has the same signature and semantics.
"""

from __future__ import annotations

import torch

from mambalab.ops import backends
from mambalab.ops.checks import check_cu_seqlens, check_negative, check_tensors
from mambalab.ops.checks import expect as _expect
from mambalab.ops.triton import auto_chooser

OP = "ssd_scan"
STEP_OP = "ssd_state_update"


def _load_reference():
    from mambalab.ops.ssd.reference import ssd_reference

    return ssd_reference


def _load_quadratic():
    from mambalab.ops.ssd.quadratic import ssd_quadratic

    return ssd_quadratic


def _load_torch():
    from mambalab.ops.ssd.torch_ssd import ssd_torch

    return ssd_torch


def _load_triton():
    from mambalab.ops.ssd.triton_ssd import load_triton_ssd

    return load_triton_ssd()


def _load_step_reference():
    from mambalab.ops.ssd.step import ssd_state_update_reference

    return ssd_state_update_reference


def _load_step_triton():
    from mambalab.ops.ssd.triton_step import load_triton_step

    return load_triton_step()


backends.register(OP, "reference", _load_reference)
backends.register(OP, "quadratic", _load_quadratic)
backends.register(OP, "torch", _load_torch)
backends.register(OP, "triton", _load_triton)
backends.register(STEP_OP, "reference", _load_step_reference)
backends.register(STEP_OP, "triton", _load_step_triton)


def _choose_auto(device: torch.device) -> str:
    """'auto' -> 'triton' on CUDA when the kernels can run there, else 'torch' (quadratic and reference only
    by name)."""
    if device.type == "cuda" and backends.is_available(OP, "triton"):
        return "triton"
    return "torch"


backends.set_auto(OP, _choose_auto)
backends.set_auto(STEP_OP, auto_chooser(STEP_OP))


def ssd_scan(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None,
             return_final_state=False, cu_seqlens=None, chunk_size=64, backend="auto"):
    """y = ssd_scan(x, Δ, A, B, C, ...): the Mamba-2 SSD layer over whole sequences (official
    `mamba_chunk_scan_combined` layout).

    x, z: (b, l, h, p); dt: (b, l, h); A: (h,) negative; B, C: (b, l, g, n) with g dividing h; D: (h,) or
    (h, p); dt_bias: (h,); initial_state: (b, h, p, n), or (num_seqs, h, p, n) with cu_seqlens
    ((num_seqs + 1,) integer offsets of sequences packed along l, batch 1).
    Δ = softplus(dt + dt_bias) if dt_softplus else dt + dt_bias; H_t = exp(Δ_t A) H_{t-1} + Δ_t x_t ⊗ B_t;
    y_t = H_t · C_t + D x_t; y · silu(z). Returns y (x's dtype), or (y, final_state) with final_state
    (b, h, p, n) (per sequence with cu_seqlens) in float32, float64 when any of x, dt, A, B, C is float64.
    Shapes, dtypes and devices are always checked; A's values (negative, finite) only on CPU tensors, where
    reading them costs no host synchronisation.
    """
    validate(x, dt, A, B, C, D, z, dt_bias, initial_state, cu_seqlens, chunk_size)
    impl = backends.get(OP, backends.resolve(OP, backend, x.device))
    return impl(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, initial_state=initial_state,
                return_final_state=return_final_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)


def ssd_state_update(state, x_t, dt_t, A, B_t, C_t, D=None, z_t=None, dt_bias=None, dt_softplus=False,
                     state_batch_indices=None, backend="auto"):
    """One decode step of `ssd_scan`: updates `state` in place and returns y_t (b, h, p) in x_t's dtype.

    state: (b, h, p, n), or (slots, h, p, n) with state_batch_indices (b,) naming each row's slot (a server's
    pool of states); x_t, z_t: (b, h, p); dt_t: (b, h); A, dt_bias: (h,); B_t, C_t: (b, g, n); D: (h,) or (h, p).
    """
    validate_step(state, x_t, dt_t, A, B_t, C_t, D, z_t, dt_bias, state_batch_indices)
    impl = backends.get(STEP_OP, backends.resolve(STEP_OP, backend, x_t.device))
    return impl(state, x_t, dt_t, A, B_t, C_t, D=D, z_t=z_t, dt_bias=dt_bias, dt_softplus=dt_softplus,
                state_batch_indices=state_batch_indices)


def _shape(t):
    return None if t is None else tuple(t.shape)


def _check_common(op, tensors: dict, A, D, heads, head_dim) -> None:
    """Dtypes floating, one device, A (h,) negative and finite, D (h,) or (h, p)."""
    check_tensors(op, tensors)
    _expect(tuple(A.shape) == (heads,), op, f"A must be (h={heads},), one decay per head, got {tuple(A.shape)}")
    _expect(D is None or tuple(D.shape) in ((heads,), (heads, head_dim)), op,
            f"D must be (h={heads},) or (h={heads}, p={head_dim}), got {_shape(D)}")
    check_negative(op, A)


def validate(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_state=None, cu_seqlens=None, chunk_size=64):
    """Check every argument of `ssd_scan` against x (b, l, h, p) and B (b, l, g, n); an InputError names it."""
    op = OP
    for name, t in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C)):
        _expect(isinstance(t, torch.Tensor), op, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    _expect(x.dim() == 4, op, f"x must be (b, l, h, p), got shape {tuple(x.shape)}")
    batch, length, heads, head_dim = x.shape
    _expect(tuple(dt.shape) == (batch, length, heads), op,
            f"dt must be (b={batch}, l={length}, h={heads}), got {tuple(dt.shape)}")
    _expect(B.dim() == 4 and tuple(B.shape[:2]) == (batch, length), op,
            f"B must be (b={batch}, l={length}, g, n), got {tuple(B.shape)}")
    groups, n = B.shape[2], B.shape[3]
    _expect(groups >= 1 and heads % groups == 0, op, f"B's group count g={groups} must divide h={heads}")
    _expect(tuple(C.shape) == tuple(B.shape), op, f"C must have B's shape {tuple(B.shape)}, got {tuple(C.shape)}")
    _expect(z is None or tuple(z.shape) == tuple(x.shape), op, f"z must have x's shape {tuple(x.shape)}, got {_shape(z)}")
    _expect(dt_bias is None or tuple(dt_bias.shape) == (heads,), op, f"dt_bias must be (h={heads},), got {_shape(dt_bias)}")
    _expect(isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size > 0, op,
            f"chunk_size must be a positive int, got {chunk_size!r}")
    rows = batch if cu_seqlens is None else check_cu_seqlens(op, cu_seqlens, batch, length, x.device)
    _expect(initial_state is None or tuple(initial_state.shape) == (rows, heads, head_dim, n), op,
            f"initial_state must be ({rows}, h={heads}, p={head_dim}, n={n}), got {_shape(initial_state)}")
    tensors = {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z, "dt_bias": dt_bias,
               "initial_state": initial_state}
    _check_common(op, tensors, A, D, heads, head_dim)


def validate_step(state, x_t, dt_t, A, B_t, C_t, D=None, z_t=None, dt_bias=None, state_batch_indices=None):
    """Check every argument of `ssd_state_update` against x_t (b, h, p) and B_t (b, g, n)."""
    op = STEP_OP
    for name, t in (("state", state), ("x_t", x_t), ("dt_t", dt_t), ("A", A), ("B_t", B_t), ("C_t", C_t)):
        _expect(isinstance(t, torch.Tensor), op, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    _expect(x_t.dim() == 3, op, f"x_t must be (b, h, p), got shape {tuple(x_t.shape)}")
    batch, heads, head_dim = x_t.shape
    _expect(tuple(dt_t.shape) == (batch, heads), op, f"dt_t must be (b={batch}, h={heads}), got {tuple(dt_t.shape)}")
    _expect(B_t.dim() == 3 and B_t.shape[0] == batch, op, f"B_t must be (b={batch}, g, n), got {tuple(B_t.shape)}")
    groups, n = B_t.shape[1], B_t.shape[2]
    _expect(groups >= 1 and heads % groups == 0, op, f"B_t's group count g={groups} must divide h={heads}")
    _expect(tuple(C_t.shape) == tuple(B_t.shape), op, f"C_t must have B_t's shape {tuple(B_t.shape)}, got {tuple(C_t.shape)}")
    _expect(z_t is None or tuple(z_t.shape) == tuple(x_t.shape), op,
            f"z_t must have x_t's shape {tuple(x_t.shape)}, got {_shape(z_t)}")
    _expect(dt_bias is None or tuple(dt_bias.shape) == (heads,), op, f"dt_bias must be (h={heads},), got {_shape(dt_bias)}")
    if state_batch_indices is None:
        _expect(tuple(state.shape) == (batch, heads, head_dim, n), op,
                f"state must be (b={batch}, h={heads}, p={head_dim}, n={n}), got {tuple(state.shape)}")
    else:
        _expect(isinstance(state_batch_indices, torch.Tensor) and tuple(state_batch_indices.shape) == (batch,)
                and not state_batch_indices.dtype.is_floating_point and state_batch_indices.dtype != torch.bool, op,
                f"state_batch_indices must be an integer tensor of shape ({batch},), got {_shape(state_batch_indices)}")
        _expect(state.dim() == 4 and tuple(state.shape[1:]) == (heads, head_dim, n), op,
                f"state must be (slots, h={heads}, p={head_dim}, n={n}), got {tuple(state.shape)}")
    tensors = {"state": state, "x_t": x_t, "dt_t": dt_t, "A": A, "B_t": B_t, "C_t": C_t, "D": D, "z_t": z_t,
               "dt_bias": dt_bias}
    _check_common(op, tensors, A, D, heads, head_dim)
