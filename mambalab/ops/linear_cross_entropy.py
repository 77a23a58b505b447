"""The language-model head and its cross-entropy in one op, chunked over tokens: the (tokens, vocab) logits are
never stored.

`linear_cross_entropy(hidden, weight, labels, vocab_size)` = Σ_t CE(hidden_t · weight[:vocab_size]ᵀ, labels_t) over
the labelled tokens, and their count. A 50K vocabulary at 16K tokens per step makes 0.8 G logits: stored for the
backward as bf16 plus their float32 upcast, log-softmax and gradient, that is ~10 GB of memory traffic and
several GB of peak memory for what is an elementwise epilogue of one matrix product. Here each chunk of tokens
computes its logits, its loss and its gradients (softmax − one-hot, times the weight for the hidden states,
times the hidden states for the weight) at once in the forward; the backward only scales the stored gradients
by the incoming one. The matrix products run in the autocast dtype when autocast is on (as `nn.Linear` would),
the softmax in float32: one Triton kernel per chunk where the kernels run (ops/triton/cross_entropy.py: reads
the chunk's logits twice, writes the gradient once in the matmul dtype), else torch ops on a float32 copy, the
reference (and the float64 path).
"""

from __future__ import annotations

import math

import torch

from mambalab.errors import InputError

IGNORE_INDEX = -100
CHUNK_LOGITS = 1 << 27  # logits per chunk (tokens × vocab): 512 MB of float32 scratch
TRITON_SOFTMAX = True  # the per-chunk softmax by the Triton kernel where it runs; False: torch ops (A/B runs)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, vocab_size: int,
                         ignore_index: int = IGNORE_INDEX, check_label_values: bool = True
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden (t, d), weight (v_padded, d) with v_padded ≥ vocab_size, labels (t,) int64 or int32 in
    [0, vocab_size) or ignore_index -> (sum of the cross-entropy over labelled tokens, float32 (float64 for
    float64 inputs), their count). Differentiable in hidden and weight (rows past vocab_size get zero gradient).

    A label out of range is an InputError naming the first one; that check reads the labels on the host (one
    synchronisation on a GPU). `check_label_values=False` skips it, for a caller that has checked them already
    (the language model's forward); unchecked, an out-of-range label is scored as the nearest valid id."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise InputError(f"linear_cross_entropy: hidden (t, d) and weight (v, d) must share d, got "
                         f"{tuple(hidden.shape)} and {tuple(weight.shape)}")
    if labels.shape != hidden.shape[:1]:
        raise InputError(f"linear_cross_entropy: labels must be ({hidden.shape[0]},), got {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise InputError(f"linear_cross_entropy: labels must be an integer tensor (int64 or int32), got {labels.dtype}")
    if not 0 < vocab_size <= weight.shape[0]:
        raise InputError(f"linear_cross_entropy: vocab_size={vocab_size} must be in [1, {weight.shape[0]}]")
    if check_label_values:
        _check_label_values(labels, vocab_size, ignore_index)
    total, count = _LinearCrossEntropy.apply(hidden, weight, labels, vocab_size, ignore_index)
    return total, count


def _check_label_values(labels: torch.Tensor, vocab_size: int, ignore_index: int) -> None:
    """InputError naming the first label outside [0, vocab_size) that is not ignore_index, and its position."""
    bad = ((labels < 0) | (labels >= vocab_size)) & (labels != ignore_index)  # (t,)
    if bad.any():
        position = int(bad.nonzero()[0, 0])
        raise InputError(f"linear_cross_entropy: labels must be in [0, vocab_size={vocab_size}) or "
                         f"ignore_index={ignore_index}, got labels[{position}] = {int(labels[position])}")


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    device = weight.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


def _kernels_take(t: torch.Tensor) -> bool:
    """Whether the per-chunk softmax runs in the Triton kernel for t: compiled, on CUDA. On CPU it stays in
    torch ops, also under Triton's interpreter, where the kernel would be orders of magnitude slower (its
    tests reach it there by patching this function)."""
    from mambalab.ops import triton as kernels

    return kernels.runs_on(t.device)


def _softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, ignore_index: int,
                           needs_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference of the Triton kernel (mambalab/ops/triton/cross_entropy.py), in torch ops and in the
    logits' dtype: logits (c, v_padded) -> (Σ of the labelled rows' losses, (softmax − one-hot) masked to the
    labelled rows and the real vocabulary, in place of the logits; None without needs_grad)."""
    valid = labels != ignore_index  # (c,)
    target = labels.clamp(0, vocab_size - 1)[:, None]  # (c, 1); ignore_index rows: any valid id, masked below
    logits[:, vocab_size:] = -math.inf
    lse = torch.logsumexp(logits, dim=-1)  # (c,)
    picked = logits.gather(1, target)[:, 0]  # (c,)
    total = torch.where(valid, lse - picked, 0.0).sum()
    if not needs_grad:
        return total, None
    grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits   (c, v_padded)
    grad.scatter_add_(1, target, torch.full_like(picked, -1.0)[:, None])  # − one-hot
    grad.mul_(valid[:, None])
    return total, grad


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, vocab_size, ignore_index):
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        dtype = _compute_dtype(weight)
        # All rows of the (padded) weight: a vocabulary like 50277 makes (tokens, vocab) operands whose rows are
        # not 16-byte aligned, which sends every matrix product to slow kernels. Padded columns get logit −inf.
        w = weight.to(dtype)  # (v_padded, d)
        tokens = hidden.shape[0]
        chunk = max(1, CHUNK_LOGITS // weight.shape[0])
        acc = torch.float64 if torch.float64 in (dtype, hidden.dtype) else torch.float32  # the softmax's dtype
        total = torch.zeros((), device=hidden.device, dtype=acc)
        grad_hidden = torch.empty_like(hidden) if needs_grad else None  # (t, d)
        grad_weight = torch.zeros(weight.shape, device=weight.device, dtype=acc) if needs_grad else None
        valid_all = labels != ignore_index  # (t,)
        fused = TRITON_SOFTMAX and acc == torch.float32 and _kernels_take(hidden)  # float64 stays in torch
        for start in range(0, tokens, chunk):
            h = hidden[start : start + chunk].to(dtype)  # (c, d)
            labels_chunk = labels[start : start + chunk]  # (c,)
            logits = h @ w.t()  # (c, v_padded)
            if fused:
                from mambalab.ops.triton.cross_entropy import cross_entropy_rows

                losses = cross_entropy_rows(logits, labels_chunk, vocab_size, ignore_index,
                                            write_grad=needs_grad)
                total += losses.sum()
                grad = logits  # (c, v_padded), overwritten by the gradient
            else:
                loss, grad = _softmax_cross_entropy(logits.to(acc), labels_chunk, vocab_size, ignore_index,
                                                    needs_grad)
                total += loss
            if not needs_grad:
                continue
            grad = grad.to(dtype)
            grad_hidden[start : start + chunk] = grad @ w  # (c, d)
            grad_weight.add_(grad.t() @ h)  # (v_padded, d); zero on the padded rows
        if needs_grad:
            ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total, valid_all.sum()

    @staticmethod
    def backward(ctx, grad_total, grad_count):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_hidden = grad_hidden * grad_total.to(grad_hidden.dtype) if ctx.needs_input_grad[0] else None
        grad_weight = (grad_weight * grad_total).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None, None, None
