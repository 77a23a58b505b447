"""The Triton cross-entropy of a chunk of logits (mambalab/ops/triton/cross_entropy.py) against a float64
oracle, and `linear_cross_entropy` using it: loss and the gradients of the hidden states and the weight
against F.cross_entropy on float64 logits, in float32 and bf16; vocabularies ragged in the column block,
padded vocabularies, ignored rows, a chunk of one row, logits of ±1e4; outputs poisoned with NaN first. On CPU
the kernel runs in Triton's interpreter."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mambalab.ops import linear_cross_entropy as lce
from mambalab.ops.linear_cross_entropy import IGNORE_INDEX, linear_cross_entropy
from tests.conftest import rel_error
from tests.ops.conftest import TRITON_DEVICE

pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("triton_kernels", "poisoned_kernel_outputs")]


def oracle(logits, labels, vocab, scale=1.0):
    """Per-row loss and (softmax − one-hot) · scale of the real vocabulary in float64; 0 on ignored rows and
    padding columns."""
    x = logits.double()[:, :vocab]  # (r, v)
    valid = labels != IGNORE_INDEX
    loss = F.cross_entropy(x, labels, ignore_index=IGNORE_INDEX, reduction="none")  # (r,)
    grad = torch.zeros_like(logits, dtype=torch.float64)  # (r, v_padded)
    onehot = F.one_hot(labels.clamp(0), vocab)
    grad[:, :vocab] = (x.softmax(-1) - onehot) * scale * valid[:, None]
    return loss, grad


def chunk(rows, v_padded, vocab, dtype, seed):
    """Logits (rows, v_padded) with ordinary rows, a row at +1e4 on a few columns, a row at -1e4 everywhere,
    and labels with ignored rows (one of them extreme)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, v_padded, generator=g) * 4  # (r, v_padded)
    logits[1, :: 3] = 1e4
    logits[2] = -1e4 + torch.randn(v_padded, generator=g)
    logits[:, vocab:] = torch.randn(rows, v_padded - vocab, generator=g) * 1e4  # padding: never read
    labels = torch.randint(vocab, (rows,), generator=g)
    labels[0], labels[3] = IGNORE_INDEX, vocab - 1
    labels[1] = IGNORE_INDEX if rows > 5 else 0
    return logits.to(device=TRITON_DEVICE, dtype=dtype), labels.to(TRITON_DEVICE)


def _row_scale(logits, vocab):
    """1 + the largest |logit| of each row: float32 carries about 6e-8 of it, in lse and in logit − lse."""
    return 1 + logits.double()[:, :vocab].abs().amax(-1)  # (r,)


GRAD_TOL = {torch.float32: 2e-6, torch.bfloat16: 1.6e-2}  # bf16: one rounding (the interpreter truncates)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "v_padded", "vocab", "block"), [
    (7, 48, 37, 16),  # vocabulary ends inside the third block, padding to 48
    (6, 48, 48, 32),  # no padding; the second block ragged
    (5, 40, 40, 64),  # one block wider than the row
])
def test_kernel_matches_float64(dtype, rows, v_padded, vocab, block):
    from mambalab.ops.triton.cross_entropy import cross_entropy_rows

    logits, labels = chunk(rows, v_padded, vocab, dtype, seed=rows * v_padded + block)
    want_loss, want_grad = oracle(logits, labels, vocab, scale=2.5)
    grad = torch.full_like(logits, math.nan)
    loss = cross_entropy_rows(logits, labels, vocab, IGNORE_INDEX, grad=grad, scale=2.5, block=block)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    row_err = (loss.double() - want_loss).abs() / _row_scale(logits, vocab)
    assert torch.isfinite(loss).all() and row_err.max() <= 4e-7
    assert loss[0] == 0 and grad[0].abs().max() == 0  # ignored row
    assert not grad[:, vocab:].any()  # padding columns
    # the ordinary rows to one rounding; the ±1e4 rows to float32's resolution of their logits (as torch's)
    assert rel_error(grad[3:], want_grad[3:]) <= GRAD_TOL[dtype]
    extreme = (grad[1:3].double() - want_grad[1:3]).abs().amax(-1) / _row_scale(logits[1:3], vocab)
    assert extreme.max() <= 2.5 * max(4e-7, GRAD_TOL[dtype] / 1e4)


def test_kernel_in_place_and_loss_only():
    from mambalab.ops.triton.cross_entropy import cross_entropy_rows

    logits, labels = chunk(6, 48, 37, torch.bfloat16, seed=3)
    original = logits.clone()
    _, want_grad = oracle(original, labels, 37)
    loss_only = cross_entropy_rows(logits, labels, 37, IGNORE_INDEX, write_grad=False, block=16)
    assert torch.equal(logits, original)  # no gradient written
    loss = cross_entropy_rows(logits, labels, 37, IGNORE_INDEX, block=16)  # gradient over the logits
    assert torch.equal(loss_only, loss)
    assert rel_error(logits[3:], want_grad[3:]) <= GRAD_TOL[torch.bfloat16]
    assert logits[:, 37:].abs().max() == 0


def test_kernel_one_row_and_strided_inputs():
    from mambalab.ops.triton.cross_entropy import cross_entropy_rows

    logits = torch.randn(1, 37, device=TRITON_DEVICE)
    labels = torch.tensor([[5, IGNORE_INDEX], [36, 1]], device=TRITON_DEVICE)[:1, 0]  # (1,)
    _, want_grad = oracle(logits, labels, 37)
    grad = torch.full_like(logits, math.nan)
    loss = cross_entropy_rows(logits, labels, 37, IGNORE_INDEX, grad=grad, block=16)
    assert rel_error(loss, oracle(logits, labels, 37)[0]) <= 1e-6 and rel_error(grad, want_grad) <= 2e-6
    rows = torch.randn(2, 41, device=TRITON_DEVICE)[:, 1:38]  # (2, 37), row stride 41, unaligned rows
    strided = torch.tensor([[3, 0], [IGNORE_INDEX, 0]], device=TRITON_DEVICE)[:, 0]  # (2,), stride 2
    want_loss, want_grad = oracle(rows, strided, 37)
    out = torch.full((2, 40), math.nan, device=TRITON_DEVICE)[:, :37]  # a gradient buffer with row stride 40
    assert rel_error(cross_entropy_rows(rows, strided, 37, IGNORE_INDEX, grad=out), want_loss) <= 1e-6
    assert rel_error(out, want_grad) <= 2e-6


@pytest.mark.skipif(TRITON_DEVICE != "cuda", reason="the model's vocabulary: too slow for the interpreter")
def test_kernel_in_place_at_the_model_vocabulary():
    """mamba-130m's head (50277 padded to 50280: aligned rows, whole blocks, a partial one and the padding),
    the gradient written over the logits by the compiled kernel as linear_cross_entropy does."""
    from mambalab.ops.triton.cross_entropy import cross_entropy_rows

    logits, labels = chunk(300, 50280, 50277, torch.bfloat16, seed=11)
    want_loss, want_grad = oracle(logits, labels, 50277)
    row_scale = _row_scale(logits, 50277)
    loss = cross_entropy_rows(logits, labels, 50277, IGNORE_INDEX)
    assert ((loss.double() - want_loss).abs() / row_scale).max() <= 4e-7
    assert rel_error(logits[3:], want_grad[3:]) <= 8e-3 and not logits[:, 50277:].any()


def test_row_alignment_hint():
    """The kernel is told rows are 16-byte aligned only when they are (a wrong hint corrupts GPU loads)."""
    from mambalab.ops.triton.cross_entropy import _row_alignment

    bf16 = torch.zeros(3, 50280, dtype=torch.bfloat16)
    assert _row_alignment(bf16) == 8 and _row_alignment(bf16, torch.zeros_like(bf16)) == 8
    assert _row_alignment(torch.zeros(3, 50277, dtype=torch.bfloat16)) == 1
    assert _row_alignment(torch.zeros(3, 50280)) == 4
    assert _row_alignment(torch.zeros(3, 50296)[:, 1:50281]) == 1  # rows start 4 bytes into the buffer
    assert _row_alignment(bf16, torch.zeros(3, 50288, dtype=torch.bfloat16)[:, 1:]) == 1


@pytest.mark.parametrize(("logits", "labels", "vocab", "grad", "message"), [
    ((3, 8), (3,), 8, None, "float64 stays in torch"),
    ((3, 8), (2,), 8, None, r"labels must be integers of shape \(3,\)"),
    ((3, 8), (3,), 9, None, r"vocab_size=9 must be in \[1, 8\]"),
    ((3, 8), (3,), 8, (3, 9), r"grad must be the logits' shape \(3, 8\)"),
])
def test_bad_arguments_are_named(logits, labels, vocab, grad, message):
    from mambalab.errors import InputError
    from mambalab.ops.triton.cross_entropy import cross_entropy_rows

    dtype = torch.float64 if "float64" in message else torch.float32
    x = torch.zeros(logits, dtype=dtype)
    with pytest.raises(InputError, match=message):
        cross_entropy_rows(x, torch.zeros(labels, dtype=torch.long), vocab, IGNORE_INDEX,
                           grad=None if grad is None else torch.zeros(grad))


@pytest.fixture
def kernel_calls(monkeypatch):
    """How many times linear_cross_entropy launched the kernel (a test of the fused path must reach it)."""
    from mambalab.ops.triton import cross_entropy

    calls = []
    launch = cross_entropy.cross_entropy_rows

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return launch(*args, **kwargs)

    monkeypatch.setattr(cross_entropy, "cross_entropy_rows", counted)
    monkeypatch.setattr(cross_entropy, "BLOCK_V", 16)  # several column blocks per row
    monkeypatch.setattr(lce, "_kernels_take", lambda t: True)  # the kernel also on CPU, in the interpreter
    return calls


def lm_inputs(tokens, d, v_padded, vocab, dtype):
    g = torch.Generator().manual_seed(tokens * 7 + v_padded)
    hidden = torch.randn(tokens, d, generator=g, dtype=dtype).to(TRITON_DEVICE).requires_grad_()
    weight = torch.randn(v_padded, d, generator=g, dtype=dtype) * 2 / d**0.5
    weight = weight.to(TRITON_DEVICE).requires_grad_()
    labels = torch.randint(vocab, (tokens,), generator=g)
    labels[::4] = IGNORE_INDEX
    return hidden, weight, labels.to(TRITON_DEVICE)


def loss_and_grads(hidden, weight, labels, vocab, autocast):
    with torch.autocast(TRITON_DEVICE, dtype=torch.bfloat16, enabled=autocast):
        total, count = linear_cross_entropy(hidden, weight, labels, vocab_size=vocab)
    return (total, count, *torch.autograd.grad(2.5 * total, (hidden, weight)))


def float64_reference(hidden, weight, labels, vocab):
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    total = F.cross_entropy(h64 @ w64[:vocab].t(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return (total, *torch.autograd.grad(2.5 * total, (h64, w64)))


@pytest.mark.parametrize(("mode", "tol"),
                         [("float32", 2e-6), ("bf16 autocast", None), ("bf16 weights", None)])
def test_linear_cross_entropy_uses_the_kernel(monkeypatch, kernel_calls, mode, tol):
    """Chunks of 11, 11 and 1 token over a vocabulary of 37 padded to 48; against float64, and (bf16) no
    further from it than the torch softmax on the same bf16 logits."""
    monkeypatch.setattr(lce, "CHUNK_LOGITS", 48 * 11)
    dtype = torch.bfloat16 if mode == "bf16 weights" else torch.float32
    hidden, weight, labels = lm_inputs(23, 8, 48, 37, dtype)
    got = loss_and_grads(hidden, weight, labels, 37, autocast=mode == "bf16 autocast")
    assert [shape[0] for shape in kernel_calls] == [11, 11, 1]
    assert got[0].dtype == torch.float32 and int(got[1]) == int((labels != IGNORE_INDEX).sum())
    assert got[3][37:].abs().max() == 0  # padded vocabulary rows get no gradient
    want = float64_reference(hidden, weight, labels, 37)
    if tol is None:
        monkeypatch.setattr(lce, "TRITON_SOFTMAX", False)
        torch_softmax = loss_and_grads(hidden, weight, labels, 37, autocast=mode == "bf16 autocast")
        torch_errors = [rel_error(t, w) for t, w in zip((torch_softmax[0], *torch_softmax[2:]), want)]
        bounds = [2 * max(err, 1e-3) for err in torch_errors]
    else:
        bounds = [tol] * 3
    for value, exact, bound in zip((got[0], got[2], got[3]), want, bounds):
        assert rel_error(value, exact) <= bound


def test_float64_stays_in_torch(kernel_calls):
    hidden, weight, labels = lm_inputs(9, 5, 16, 13, torch.float64)
    got = loss_and_grads(hidden, weight, labels, 13, autocast=False)
    want = float64_reference(hidden, weight, labels, 13)
    assert kernel_calls == []
    for value, exact in zip((got[0], got[2], got[3]), want):
        assert rel_error(value, exact) <= 1e-12
