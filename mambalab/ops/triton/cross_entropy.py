"""The softmax cross-entropy of one chunk of logits in one Triton launch: each row's loss, and its gradient
written once over the logits (mambalab/ops/linear_cross_entropy.py, the language-model head's loss).

Per row of logits (rows, v_padded), columns ≥ vocab_size being padding (logit −inf): in float32,
lse = log Σ_j e^{x_j}, loss = lse − x[label] (0 where label = ignore_index), and gradient
(softmax − one-hot(label)) · scale (0 on ignored rows and padding columns), rounded to the logits' dtype.
Two passes over the row: a running maximum and sum of exponentials per lane (no overflow at any logit), then
the gradient; whole blocks of the real vocabulary without masks (vectorised loads and stores), the rest after.
The same in torch ops is 9 full-size kernels (upcast, logsumexp's four, subtraction, exp, mask, downcast) over
float32 copies of the chunk, 10× the bytes: benchmarks/notes/train.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mambalab.errors import InputError
from mambalab.ops.triton import common
from mambalab.ops.triton.common import INTERPRETED, LOG2E

__all__ = ["BLOCK_V", "INTERPRETED", "cross_entropy_rows"]

BLOCK_V = 2048  # columns per step: 8 per thread of 8 warps, per pass (see benchmarks/notes/train.md)
_FLOOR = tl.constexpr(-3.0e38)  # the running maximum's start: finite, so that a lane without a real column
# adds 2^{-inf - floor} = 0 rather than 2^{-inf + inf} = NaN


@triton.jit
def _online_add(x, m, s):
    """Fold x (log2 units) into the per-lane running maximum m and sum s = Σ 2^{x - m}: of the two
    exponentials of an update (rescaling s, adding x) one is 2^0, so one ex2 of -|x - m| per element."""
    d = x - m
    e = tl.exp2(-tl.abs(d))
    return tl.maximum(m, x), tl.where(d > 0, s * e + 1.0, s + e)


@triton.jit
def _cross_entropy_kernel(logits_ptr, labels_ptr, loss_ptr, grad_ptr, s_logits, s_labels, s_grad, n_cols,
                          vocab_size, ignore_index, scale, BLOCK: tl.constexpr, ALIGN: tl.constexpr,
                          WRITE_GRAD: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = logits_ptr + tl.multiple_of(row * s_logits, ALIGN)
    label = tl.load(labels_ptr + row * s_labels)
    valid = label != ignore_index
    target = tl.minimum(tl.maximum(label, 0), vocab_size - 1)  # the reference's clamp: any label is in range
    cols = tl.arange(0, BLOCK)
    whole = vocab_size // BLOCK * BLOCK  # columns in whole blocks of the real vocabulary: no masks
    # Pass 1, in log2 units (e^x = 2^{x log2 e}): per lane, the running maximum and sum of exponentials.
    m = tl.full((BLOCK,), _FLOOR, tl.float32)
    s = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, whole, BLOCK):
        m, s = _online_add(tl.load(x_row + start + cols).to(tl.float32) * LOG2E, m, s)
    for start in range(whole, vocab_size, BLOCK):  # the last, partial block
        x = tl.load(x_row + start + cols, mask=start + cols < vocab_size, other=-float("inf"))
        m, s = _online_add(x.to(tl.float32) * LOG2E, m, s)
    m_row = tl.max(m, axis=0)
    lse2 = m_row + tl.log2(tl.sum(s * tl.exp2(m - m_row), axis=0))  # log2 Σ_j 2^{x_j log2 e}
    picked = tl.load(x_row + target).to(tl.float32)
    tl.store(loss_ptr + row, tl.where(valid, lse2 / LOG2E - picked, 0.0))
    if WRITE_GRAD:
        # Pass 2: softmax · the row's scale (0 when ignored), 2^-inf = 0 past vocab_size; then the label's
        # column once more, with the one-hot: no comparison per element.
        g_row = grad_ptr + tl.multiple_of(row * s_grad, ALIGN)
        tl.debug_barrier()  # every thread has read the label's logit before a gradient may overwrite it
        row_scale = tl.where(valid, scale, 0.0)
        dtype = grad_ptr.dtype.element_ty
        for start in range(0, whole, BLOCK):
            p = tl.exp2(tl.load(x_row + start + cols).to(tl.float32) * LOG2E - lse2)
            tl.store(g_row + start + cols, (p * row_scale).to(dtype))
        for start in range(whole, n_cols, BLOCK):  # the partial block and the padding
            x = tl.load(x_row + start + cols, mask=start + cols < vocab_size, other=-float("inf"))
            p = tl.exp2(x.to(tl.float32) * LOG2E - lse2)
            tl.store(g_row + start + cols, (p * row_scale).to(dtype), mask=start + cols < n_cols)
        tl.debug_barrier()  # every thread's store of the label's column lands before this one
        p_target = tl.exp2(picked * LOG2E - lse2)
        tl.store(g_row + target, ((p_target - 1.0) * row_scale).to(dtype))


def cross_entropy_rows(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, ignore_index: int,
                       grad: torch.Tensor | None = None, scale: float = 1.0, write_grad: bool = True,
                       block: int | None = None) -> torch.Tensor:
    """logits (r, v_padded) in bf16/fp16/fp32, labels (r,) -> loss (r,) float32 (0 on ignored rows).

    With write_grad, the gradient (softmax − one-hot) · scale of the loss goes into `grad` (r, v_padded), the
    logits' dtype; grad=None writes it over the logits (each row is read wholly before it is written). block:
    columns per step (a power of 2; BLOCK_V by default)."""
    validate(logits, labels, vocab_size, grad)
    rows, n_cols = logits.shape
    out = logits if grad is None else grad
    loss = common.empty(rows, device=logits.device, dtype=torch.float32)
    if rows:
        _cross_entropy_kernel[(rows,)](
            logits, labels, loss, out, logits.stride(0), labels.stride(0), out.stride(0), n_cols, vocab_size,
            ignore_index, scale,
            BLOCK=min(block or BLOCK_V, triton.next_power_of_2(n_cols)), ALIGN=_row_alignment(logits, out),
            WRITE_GRAD=write_grad, num_warps=8)
    return loss


def _row_alignment(*tensors: torch.Tensor) -> int:
    """Elements in 16 bytes if every row of these (r, v) tensors starts 16-byte aligned, else 1: Triton
    vectorises loads and stores from what it can prove, and it marks a row stride like 50280 (a vocabulary
    padded to a multiple of 8) as a multiple of nothing."""
    vector = 16 // tensors[0].element_size()
    aligned = all(t.data_ptr() % 16 == 0 and t.stride(0) % vector == 0 for t in tensors)
    return vector if aligned else 1


def validate(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, grad: torch.Tensor | None) -> None:
    """InputError naming the bad argument unless logits are (r, v) with unit column stride in a 16- or 32-bit
    float, labels (r,) integers, vocab_size in [1, v], and grad (if given) like the logits."""
    _expect(logits.dim() == 2 and logits.stride(-1) == 1,
            f"logits must be (rows, v) with contiguous rows, got shape {tuple(logits.shape)} strides "
            f"{tuple(logits.stride())}")
    _expect(logits.dtype in (torch.bfloat16, torch.float16, torch.float32),
            f"logits must be bfloat16, float16 or float32 (float64 stays in torch), got {logits.dtype}")
    _expect(tuple(labels.shape) == tuple(logits.shape[:1]) and not labels.is_floating_point(),
            f"labels must be integers of shape ({logits.shape[0]},), got {labels.dtype} "
            f"{tuple(labels.shape)}")
    _expect(0 < vocab_size <= logits.shape[1], f"vocab_size={vocab_size} must be in [1, {logits.shape[1]}]")
    like = grad is None or (grad.shape == logits.shape and grad.dtype == logits.dtype and grad.stride(1) == 1)
    _expect(like,
            f"grad must be the logits' shape {tuple(logits.shape)} and dtype {logits.dtype} with contiguous "
            f"rows, got {None if grad is None else (grad.dtype, tuple(grad.shape), tuple(grad.stride()))}")


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise InputError(f"cross_entropy_rows: {message}")
