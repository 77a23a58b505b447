"""TEMPORARY (until the ssd branch lands `mambalab.ops.ssd`): a for-loop stand-in with the op's contract,
installed as `mambalab.ops.ssd` only when that module does not exist. Delete once ssd is merged."""

from __future__ import annotations

import importlib.util
import sys
import types

import torch
import torch.nn.functional as F


def _prepare(x, dt, A, B, C, D, dt_bias, dt_softplus):
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    dt = dt.to(compute) + (0 if dt_bias is None else dt_bias.to(compute))
    dt = F.softplus(dt) if dt_softplus else dt
    rep = x.shape[-2] // B.shape[-2]
    B, C = B.to(compute).repeat_interleave(rep, -2), C.to(compute).repeat_interleave(rep, -2)
    D = None if D is None else (D[:, None] if D.dim() == 1 else D).to(compute)
    return compute, dt, A.to(compute), B, C, D


def _advance(state, x_t, dt_t, A, B_t, C_t, D, z_t, dt_bias, dt_softplus):
    compute, dt, A, B, C, D = _prepare(x_t, dt_t, A, B_t, C_t, D, dt_bias, dt_softplus)
    x = x_t.to(compute)
    new = torch.exp(dt * A)[..., None, None] * state.to(compute) + (dt[..., None] * x)[..., None] * B[:, :, None]
    y = (new * C[:, :, None]).sum(-1) + (0 if D is None else D * x)
    y = y if z_t is None else y * F.silu(z_t.to(compute))
    return new, y.to(x_t.dtype)


def ssd_state_update(state, x_t, dt_t, A, B_t, C_t, D=None, z_t=None, dt_bias=None, dt_softplus=False):
    new, y = _advance(state, x_t, dt_t, A, B_t, C_t, D, z_t, dt_bias, dt_softplus)
    state.copy_(new)
    return y


def ssd_scan(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None,
             return_final_state=False, cu_seqlens=None, chunk_size=64, backend="auto"):
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    b, l, h, p = x.shape
    state = torch.zeros(b, h, p, B.shape[-1], dtype=compute) if initial_state is None else initial_state.to(compute)
    ys = []
    for t in range(l):
        state, y = _advance(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D, None if z is None else z[:, t],
                            dt_bias, dt_softplus)
        ys.append(y)
    y = torch.stack(ys, 1) if ys else x.new_empty(b, 0, h, p)
    return (y, state.float() if compute == torch.float32 else state) if return_final_state else y


def install() -> None:
    if importlib.util.find_spec("mambalab.ops.ssd") is None:
        module = types.ModuleType("mambalab.ops.ssd")
        module.ssd_scan, module.ssd_state_update = ssd_scan, ssd_state_update
        sys.modules["mambalab.ops.ssd"] = module
        from mambalab.ops import backends

        backends.set_auto("ssd_scan", lambda device: "reference")
