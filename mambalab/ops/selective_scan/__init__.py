"""`selective_scan`: validate the arguments once, then dispatch to a named backend.

Backends: "reference" (for-loops, the oracle), "torch" (parallel chunked scan, any device), "triton"
(fused GPU kernels: triton_scan.py, kernels in triton_kernels.py), "cpu" (fused C/OpenMP kernels, compiled on first use), "auto" (see `resolve_backend`).
All share this signature and these semantics; see reference.py for the math and the glossary.
"""

from __future__ import annotations

import torch

from mambalab.errors import InputError
from mambalab.ops import backends
from mambalab.ops.checks import check_cu_seqlens, check_negative

OP = "selective_scan"


def _load_reference():
    from mambalab.ops.selective_scan.reference import selective_scan_reference

    return selective_scan_reference


def _load_torch():
    from mambalab.ops.selective_scan.torch_scan import selective_scan_torch

    return selective_scan_torch


def _load_triton():
    from mambalab.ops.selective_scan.triton_scan import load_triton_scan

    return load_triton_scan()


def _load_cpu():
    from mambalab.ops.selective_scan.cpu_scan import load_cpu_scan

    return load_cpu_scan()


backends.register(OP, "reference", _load_reference)
backends.register(OP, "torch", _load_torch)
backends.register(OP, "triton", _load_triton)
backends.register(OP, "cpu", _load_cpu)


def _choose_auto(device: torch.device) -> str:
    """'auto' -> 'triton' on CUDA when it can run there; on CPU 'cpu' when its kernels compile and load here
    (compiled on the first call, cached on disk; when they cannot be, the reason is logged once as a warning);
    else 'torch'."""
    if device.type == "cuda" and backends.is_available(OP, "triton"):
        return "triton"
    if device.type == "cpu" and backends.is_available(OP, "cpu"):
        return "cpu"
    return "torch"


backends.set_auto(OP, _choose_auto)


def resolve_backend(name: str, device: torch.device) -> str:
    """The backend `name` stands for on `device` ("auto" resolved as `_choose_auto` says)."""
    return backends.resolve(OP, name, device)


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    initial_state=None, return_final_state=False, cu_seqlens=None, backend="auto",
):
    """y = selective_scan(u, Δ, A, B, C, ...): the Mamba-1 selective SSM over the whole sequence.

    u, delta, z: (batch, dim, L); A: (dim, N) negative; B, C: (batch, N, L) or (batch, G, N, L);
    D, delta_bias: (dim,); initial_state: (batch, dim, N) (or (num_seqs, dim, N) with cu_seqlens).
    Returns y (u's dtype), or (y, final_state) with final_state float32 (float64 for float64 inputs).
    A's values (negative, finite) are checked only on CPU tensors, where reading them costs no host sync.
    """
    validate(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens)
    impl = backends.get(OP, resolve_backend(backend, u.device))
    return impl(
        u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
        initial_state=initial_state, return_final_state=return_final_state, cu_seqlens=cu_seqlens,
    )


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise InputError(f"selective_scan: {message}")


def validate(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None, cu_seqlens=None):
    """Check every argument's type, dtype and shape against u (batch, dim, L) and A (dim, N); an InputError
    names the bad argument. u is a real float tensor and z shares its dtype; delta, B and C have u's dtype or,
    for a 16-bit u, float32 (never a lower precision than u's); A, D, delta_bias and initial_state are real
    float tensors of any precision."""
    args = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias,
            "initial_state": initial_state}
    for name, t in args.items():
        _expect(t is None and name not in _REQUIRED or isinstance(t, torch.Tensor),
                f"{name} must be a torch.Tensor, got {type(t).__name__}")
        _expect(t is None or t.dtype in _FLOATS, f"{name} must be a real float tensor {_FLOAT_NAMES}, got {_dtype(t)}")
    _expect(u.dim() == 3, f"u must be (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    _expect(delta.shape == u.shape, f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    _expect(A.dim() == 2 and A.shape[0] == dim, f"A must be (dim={dim}, N), got {tuple(A.shape)}")
    n = A.shape[1]
    _expect(B.dim() in (3, 4), f"B must be (batch, N, L) or (batch, G, N, L), got {tuple(B.shape)}")
    groups = 1 if B.dim() == 3 else B.shape[1]
    expected_b = (batch, n, length) if B.dim() == 3 else (batch, groups, n, length)
    _expect(tuple(B.shape) == expected_b, f"B must be {expected_b} (batch, [G,] N, L), got {tuple(B.shape)}")
    _expect(C.shape == B.shape, f"C must have B's shape {tuple(B.shape)}, got {tuple(C.shape)}")
    _expect(groups >= 1 and dim % groups == 0, f"B's group count G={groups} must divide dim={dim}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        _expect(t is None or tuple(t.shape) == (dim,), f"{name} must be (dim={dim},), got {_shape(t)}")
    _expect(z is None or z.shape == u.shape, f"z must have u's shape {tuple(u.shape)}, got {_shape(z)}")
    rows = batch if cu_seqlens is None else check_cu_seqlens(OP, cu_seqlens, batch, length, u.device, ("u", "L"))
    if initial_state is not None:
        _expect(tuple(initial_state.shape) == (rows, dim, n),
                f"initial_state must be ({rows}, dim={dim}, N={n}), got {tuple(initial_state.shape)}")
    devices = {t.device for t in (u, delta, A, B, C, D, z, delta_bias, initial_state) if t is not None}
    _expect(len(devices) == 1, f"all tensors must be on one device, got {sorted(map(str, devices))}")
    check_negative(OP, A)
    _expect(z is None or z.dtype == u.dtype, f"z must have u's dtype {u.dtype}, got {_dtype(z)}")
    wider = (torch.float32,) if u.dtype in (torch.float16, torch.bfloat16) else ()
    for name in ("delta", "B", "C"):
        _expect(args[name].dtype in (u.dtype, *wider),
                f"{name} must have u's dtype {u.dtype}{' or float32' if wider else ''}, got {args[name].dtype}"
                " (a lower or another precision than u's is refused)")


_REQUIRED = ("u", "delta", "A", "B", "C")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FLOAT_NAMES = "(float16, bfloat16, float32 or float64)"


def _dtype(t):
    return None if t is None else t.dtype


def _shape(t):
    return None if t is None else tuple(t.shape)
