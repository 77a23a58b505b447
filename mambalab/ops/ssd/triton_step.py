"""`ssd_state_update` backend "triton": one fused launch per decode step (grid: batch rows × heads × channel
blocks), the state updated in place, optionally in the slots `state_batch_indices` of a pool."""

from __future__ import annotations

import torch

from mambalab.ops.ssd.triton_ssd import _empty, _next_pow2, _or, _strides2, check_runnable, kernels
from mambalab.ops.triton import dense


def load_triton_step():
    """The triton `ssd_state_update`, or BackendUnavailable saying why it cannot run here."""
    from mambalab.ops.triton import require

    require("ssd_state_update")
    return ssd_state_update_triton


def _strides3(t):
    return tuple(t.stride()) if t is not None else (0, 0, 0)


def ssd_state_update_triton(state, x_t, dt_t, A, B_t, C_t, D=None, z_t=None, dt_bias=None, dt_softplus=False,
                            state_batch_indices=None, block_p: int = 32, num_warps: int = 4, A_is_log: bool = False):
    """Same signature and semantics as `mambalab.ops.ssd.ssd_state_update` (arguments validated there);
    `block_p` channels per program, `num_warps` warps each (benchmarks/ssd_gpu.py times the choices). With
    `A_is_log`, A holds log(−A) (a mixer's A_log parameter) and the kernel takes A = −exp of it: a decoding
    mixer then launches no kernels of its own to compute A each token."""
    import triton.language as tl

    check_runnable("ssd_state_update", {"state": state, "x_t": x_t, "dt_t": dt_t, "A": A, "B_t": B_t, "C_t": C_t,
                                        "D": D, "z_t": z_t, "dt_bias": dt_bias})
    A, dt_bias = dense(A), dense(dt_bias)  # read per head without a stride
    batch, heads, head_dim = x_t.shape
    groups, n = B_t.shape[1], B_t.shape[2]
    fp64 = torch.float64 in (state.dtype, x_t.dtype, dt_t.dtype, A.dtype, B_t.dtype, C_t.dtype)
    y = _empty(batch, heads, head_dim, device=x_t.device, dtype=x_t.dtype)
    Dm = D if D is None or D.dim() == 2 else D[:, None].expand(heads, head_dim)
    block_p = min(block_p, _next_pow2(head_dim))
    grid = (batch, heads, -(-head_dim // block_p))
    kernels().ssd_step_kernel[grid](
        state, x_t, dt_t, A, B_t, C_t, _or(Dm, x_t), _or(z_t, x_t), _or(dt_bias, x_t),
        _or(state_batch_indices, x_t), y,
        *state.stride(), *x_t.stride(), *dt_t.stride(), *B_t.stride(), *C_t.stride(), *_strides2(Dm),
        *_strides3(z_t), *y.stride(),
        heads // groups, head_dim, n,
        BLOCK_P=block_p, BLOCK_N=_next_pow2(n), ACC=tl.float64 if fp64 else tl.float32,
        HAS_D=D is not None, HAS_Z=z_t is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        HAS_IDX=state_batch_indices is not None, A_IS_LOG=A_is_log, num_warps=num_warps,
    )
    return y
