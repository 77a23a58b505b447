"""`backend="triton"`: the fused kernels of triton_kernels.py as differentiable torch ops.

Two torch.library custom ops, `mambalab::selective_scan_fwd` and `mambalab::selective_scan_bwd`, with fake
implementations and autograd (fused.py), so `torch.compile` traces a mixer using them without graph breaks. The
forward stores per-chunk state checkpoints only when a gradient is needed.

Inputs are used in place with their strides (no copies, non-contiguous is fine), except D and delta_bias,
which the kernels read without a stride (`dense`: copied when not contiguous); y and the gradients of u, Δ
and z take their input's layout (channels-last stays channels-last: `common.empty_like_layout`).
Float64 is not supported here (the kernels keep state in float32): use the torch backend for it.
"""

from __future__ import annotations

import functools

import torch

from mambalab.ops.backends import BackendUnavailable
from mambalab.ops.selective_scan.fused import FusedScan, sequence_count
from mambalab.ops.triton import dense

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def load_triton_scan():
    """The triton `selective_scan`, or BackendUnavailable saying why it cannot run here."""
    from mambalab.ops import triton as kernels

    kernels.require("selective_scan")
    return selective_scan_triton


def _check_runnable(tensors) -> None:
    from mambalab.ops import triton as kernels

    where = kernels.device()
    for name, t in tensors.items():
        if t is None:
            continue
        if t.device.type != where:
            raise BackendUnavailable(
                f"selective_scan backend 'triton': {name} is on {t.device}, but the kernels run "
                + ("nowhere here (interpreted, and TRITON_INTERPRET is unset)" if where is None else f"on {where} tensors")
            )
        if t.is_floating_point() and t.dtype not in _FLOAT_DTYPES:
            raise BackendUnavailable(
                f"selective_scan backend 'triton': {name} is {t.dtype}; the kernels take float32/float16/bfloat16 "
                "(use backend='torch' for float64)"
            )


def selective_scan_triton(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    initial_state=None, return_final_state=False, cu_seqlens=None,
):
    """Same signature and semantics as `mambalab.ops.selective_scan.selective_scan` (arguments validated there)."""
    _check_runnable({"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias,
                     "initial_state": initial_state})
    return _OPS(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state, cu_seqlens)


def _config(u, A, B, cu_seqlens):
    from mambalab.ops.selective_scan.triton_kernels import default_config

    groups = 1 if B.dim() == 3 else B.shape[1]
    return default_config(u.shape[1] // groups, A.shape[1], u.shape[0], groups, u.shape[2],
                          sm_count=_sm_count(u.device), varlen=cu_seqlens is not None)


@functools.cache
def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (0 elsewhere: the interpreter has no occupancy to fill)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 0


def _forward(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, store_checkpoints):
    from mambalab.ops.selective_scan.triton_kernels import scan_forward

    return scan_forward(u, delta, A, B, C, dense(D), z, dense(delta_bias), initial_state, cu_seqlens,
                        delta_softplus, store_checkpoints, _config(u, A, B, cu_seqlens))


def _backward(dy, d_final, u, delta, A, B, C, D, z, delta_bias, cu_seqlens, ckpt, delta_softplus):
    from mambalab.ops.selective_scan.triton_kernels import scan_backward

    return scan_backward(dy, d_final, u, delta, A, B, C, dense(D), z, dense(delta_bias), cu_seqlens, ckpt,
                         delta_softplus, _config(u, A, B, cu_seqlens))


def _checkpoint_slots(u, A, B, cu_seqlens):
    from mambalab.ops.selective_scan.triton_kernels import checkpoint_slots

    return checkpoint_slots(sequence_count(u, cu_seqlens), u.shape[2], _config(u, A, B, cu_seqlens).chunk,
                            cu_seqlens is not None)


def _like_layout(t):
    from mambalab.ops.triton import common

    return common.empty_like_layout(t)


_OPS = FusedScan("selective_scan", _forward, _backward, _checkpoint_slots, state_dtype=lambda u: torch.float32,
                 index_dtype=torch.int32, like_layout=_like_layout)
