"""A fused forward/backward kernel pair as differentiable torch ops: what the "triton" and "cpu" backends share.

`FusedScan(name, ...)` registers two torch.library custom ops, `mambalab::{name}_fwd` and
`mambalab::{name}_bwd`, each with a fake (meta) implementation, and autograd on the forward, so that
`torch.compile(fullgraph=True)` traces a mixer using them without graph breaks. Calling the instance is the
backend's `selective_scan` (arguments validated by `mambalab.ops.selective_scan.selective_scan`). The forward
stores state checkpoints only when a gradient will be needed; the backward recomputes the states from them.

A backend supplies the kernels' two entry points:

- `forward(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, store_checkpoints)`
  -> y (b, d, l) in u's dtype, final state (rows, d, n) and checkpoints (slots, d, n) in `state_dtype(u)`
  (checkpoints empty unless store_checkpoints); rows = batch, or the number of packed sequences;
- `backward(dy, d_final, u, delta, A, B, C, D, z, delta_bias, cu_seqlens, checkpoints, delta_softplus)`
  -> (du, dΔ, dz, dA, dB, dC, dD, dΔ-bias, dh_init): dB/dC shaped like B/C, dA (d, n), dD/dΔ-bias (d,),
  dh_init (rows, d, n) (dz, dD, dΔ-bias: anything when that input is absent); d_final may be None;
- `checkpoint_slots(u, A, B, cu_seqlens)`: how many checkpoints `forward` stores (the fake needs it).
"""

# ruff: noqa: UP045  (typing.Optional: torch.library infers the ops' schemas from these annotations)

from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor

from mambalab.ops.backends import records_grad


def sequence_count(u: Tensor, cu_seqlens: Optional[Tensor]) -> int:
    """Rows of the initial/final states: the batch, or the number of sequences packed by cu_seqlens."""
    return u.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


class FusedScan:
    """One backend's kernels as custom ops; see the module docstring.

    state_dtype(u): the dtype of the final state and checkpoints; index_dtype: what cu_seqlens is converted to
    before the kernels see it; like_layout(t): an empty (b, d, l) tensor laid out as the backend lays out its
    output or gradient for input t (the fakes must match the kernels' strides; default: contiguous).
    """

    def __init__(self, name: str, forward: Callable, backward: Callable, checkpoint_slots: Callable,
                 state_dtype: Callable[[Tensor], torch.dtype], index_dtype: torch.dtype,
                 like_layout: Callable[[Tensor], Tensor] = lambda t: t.new_empty(t.shape)):
        self.index_dtype = index_dtype
        self._forward = forward

        # The ops' annotations are real types (no `from __future__ import annotations`): torch infers schemas.
        def fwd(
            u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
            delta_bias: Optional[Tensor], initial_state: Optional[Tensor], cu_seqlens: Optional[Tensor],
            delta_softplus: bool, store_checkpoints: bool,
        ) -> tuple[Tensor, Tensor, Tensor]:
            """(y, final_state, checkpoints); checkpoints is empty unless store_checkpoints."""
            return forward(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus,
                           store_checkpoints)

        def fwd_fake(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus,
                     store_checkpoints):
            dim = u.shape[1]
            rows, n, dtype = sequence_count(u, cu_seqlens), A.shape[1], state_dtype(u)
            slots = checkpoint_slots(u, A, B, cu_seqlens) if store_checkpoints else 0
            return (like_layout(u), u.new_empty(rows, dim, n, dtype=dtype),
                    u.new_empty(slots, dim, n, dtype=dtype))

        def bwd(
            dy: Tensor, d_final: Optional[Tensor], u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
            D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor], initial_state: Optional[Tensor],
            cu_seqlens: Optional[Tensor], ckpt: Tensor, delta_softplus: bool,
        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
            """(du, dΔ, dA, dB, dC, dD, dz, dΔ-bias, dh_init) in the inputs' dtypes; empty for absent inputs."""
            du, ddelta, dz, dA, dB, dC, dD, dbias, dh0 = backward(
                dy, d_final, u, delta, A, B, C, D, z, delta_bias, cu_seqlens, ckpt, delta_softplus
            )
            return (  # absent inputs get distinct empty tensors (custom-op outputs must not alias)
                du, ddelta, dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
                dD.to(D.dtype) if D is not None else u.new_empty(0),
                dz if z is not None else u.new_empty(0),
                dbias.to(delta_bias.dtype) if delta_bias is not None else u.new_empty(0),
                dh0.to(initial_state.dtype) if initial_state is not None else u.new_empty(0),
            )

        def bwd_fake(dy, d_final, u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, ckpt,
                     delta_softplus):
            like = lambda t: t.new_empty(t.shape) if t is not None else u.new_empty(0)  # contiguous
            return (like_layout(u), like_layout(delta), like(A), like(B), like(C), like(D),
                    like_layout(z) if z is not None else u.new_empty(0), like(delta_bias), like(initial_state))

        self.forward_op = torch.library.custom_op(f"mambalab::{name}_fwd", fwd, mutates_args=())
        self.forward_op.register_fake(fwd_fake)
        self.backward_op = torch.library.custom_op(f"mambalab::{name}_bwd", bwd, mutates_args=())
        self.backward_op.register_fake(bwd_fake)
        self.forward_op.register_autograd(self._backward, setup_context=self._setup_context)

    @staticmethod
    def _setup_context(ctx, inputs, output):
        u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, _ = inputs
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, output[2])
        ctx.delta_softplus = delta_softplus
        ctx.mark_non_differentiable(output[2])
        # No zero gradients for unused outputs: the checkpoints' would be a large fill (two float32 per (b, d, l)
        # element at n = 16), and an unused final state reaches the kernels as None (no dh_T to load).
        ctx.set_materialize_grads(False)

    def _backward(self, ctx, dy, d_final, _d_checkpoints):
        u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, ckpt = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(u)
        du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = self.backward_op(
            dy, d_final, u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, ckpt, ctx.delta_softplus
        )
        present = lambda g, t: g if t is not None else None
        return (du, ddelta, dA, dB, dC, present(dD, D), present(dz, z), present(dbias, delta_bias),
                present(dh0, initial_state), None, None, None)

    def __call__(
        self, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
        initial_state=None, return_final_state=False, cu_seqlens=None,
    ):
        """`selective_scan` through the kernels: same signature and semantics (arguments validated there)."""
        if u.shape[-1] == 0:  # nothing to scan: the oracle returns y (b, d, 0) and final = initial state
            from mambalab.ops.selective_scan.reference import selective_scan_reference

            return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                            return_final_state, cu_seqlens)
        if cu_seqlens is not None:
            cu_seqlens = cu_seqlens.to(device=u.device, dtype=self.index_dtype).contiguous()
        args = (u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus)
        needs_grad = records_grad(u, delta, A, B, C, D, z, delta_bias, initial_state)
        if needs_grad or torch.compiler.is_compiling():  # the op: autograd, or tracing
            y, final_state, _ = self.forward_op(*args, needs_grad)
        else:  # inference: the kernels without the op's dispatch
            y, final_state, _ = self._forward(*args, False)
        return (y, final_state) if return_final_state else y
