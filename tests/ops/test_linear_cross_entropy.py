"""The chunked fused head + cross-entropy against `F.cross_entropy` of the full logits: loss, count and the
gradients of the hidden states and the weight, in float64 and under bf16 autocast, chunk boundaries included."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from mambalab.errors import InputError
from mambalab.ops import linear_cross_entropy as lce
from mambalab.ops.linear_cross_entropy import IGNORE_INDEX, linear_cross_entropy


def rel_err(a, b):
    err = ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()
    assert math.isfinite(err), "NaN"
    return err


def reference(hidden, weight, labels, vocab):
    logits = hidden @ weight[:vocab].t()  # (t, v)
    total = F.cross_entropy(logits.double(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (labels != IGNORE_INDEX).sum()


def inputs(tokens, d, vocab_padded, vocab, dtype, ignore_every=5):
    g = torch.Generator().manual_seed(tokens * 31 + d)
    hidden = torch.randn(tokens, d, generator=g, dtype=dtype, requires_grad=True)
    weight = (torch.randn(vocab_padded, d, generator=g, dtype=dtype) / d**0.5).requires_grad_()
    labels = torch.randint(vocab, (tokens,), generator=g)
    labels[::ignore_every] = IGNORE_INDEX
    return hidden, weight, labels


@pytest.mark.parametrize("chunk_logits", [7 * 13, 1 << 27])  # several chunks with a ragged last one / one chunk
def test_matches_full_logits_float64(monkeypatch, chunk_logits):
    monkeypatch.setattr(lce, "CHUNK_LOGITS", chunk_logits)
    hidden, weight, labels = inputs(tokens=37, d=11, vocab_padded=16, vocab=13, dtype=torch.float64)
    total, count = linear_cross_entropy(hidden, weight, labels, vocab_size=13)
    ref_total, ref_count = reference(hidden, weight, labels, 13)
    assert int(count) == int(ref_count) == 37 - 8
    assert rel_err(total, ref_total) < 1e-12
    grads = torch.autograd.grad(2.5 * total, (hidden, weight))
    ref_grads = torch.autograd.grad(2.5 * ref_total, (hidden, weight))
    for got, want in zip(grads, ref_grads):
        assert rel_err(got, want) < 1e-12
    assert grads[1][13:].abs().max() == 0  # padded vocabulary rows get no gradient


def test_bf16_autocast_close_to_float64(monkeypatch):
    monkeypatch.setattr(lce, "CHUNK_LOGITS", 64 * 50)
    hidden, weight, labels = inputs(tokens=129, d=32, vocab_padded=64, vocab=50, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = linear_cross_entropy(hidden, weight, labels, vocab_size=50)
    total.backward()
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ref_total, _ = reference(h64, w64, labels, 50)
    ref_total.backward()
    assert total.dtype == torch.float32 and hidden.grad.dtype == torch.float32
    assert rel_err(total, ref_total) < 1e-2
    assert rel_err(hidden.grad, h64.grad) < 2e-2
    assert rel_err(weight.grad, w64.grad) < 2e-2


def test_no_grad_gives_the_loss_only():
    hidden, weight, labels = inputs(tokens=9, d=4, vocab_padded=8, vocab=8, dtype=torch.float64)
    with torch.no_grad():
        total, count = linear_cross_entropy(hidden, weight, labels, vocab_size=8)
    assert rel_err(total, reference(hidden, weight, labels, 8)[0]) < 1e-12 and int(count) == 9 - 2


def test_model_labels_path_equals_logits_path():
    from mambalab import LanguageModel, ModelConfig

    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(d_model=16, n_layer=2, vocab_size=50)).double()
    ids = torch.randint(50, (2, 9))
    labels = torch.randint(50, (2, 9))
    labels[0, :3] = IGNORE_INDEX
    total, count = model(ids, labels=labels)
    logits = model(ids)
    ref = F.cross_entropy(logits.reshape(-1, 50), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    assert int(count) == 15 and rel_err(total, ref) < 1e-12
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(total, params, allow_unused=True)
    want = torch.autograd.grad(ref, params, allow_unused=True)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            assert rel_err(g, w) < 1e-10


@pytest.mark.parametrize("bad, match", [
    (lambda h, w, y: (h[:, :3], w, y), "share d"),
    (lambda h, w, y: (h, w, y[:-1]), "labels must be"),
])
def test_bad_shapes_are_named(bad, match):
    hidden, weight, labels = inputs(tokens=6, d=4, vocab_padded=8, vocab=8, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        linear_cross_entropy(*bad(hidden, weight, labels), vocab_size=8)


@pytest.mark.parametrize(("labels", "bad"), [([1, 2, 3, 13], "labels[3] = 13"), ([1, 500, 3, 2], "labels[1] = 500"),
                                             ([-1, 2, IGNORE_INDEX, 2], "labels[0] = -1")])
def test_out_of_range_labels_are_refused(labels, bad):
    """No silent clamping: the first label outside [0, vocab_size) other than ignore_index is named."""
    hidden, weight, _ = inputs(tokens=4, d=4, vocab_padded=16, vocab=13, dtype=torch.float64)
    with pytest.raises(InputError, match=re.escape(f"labels must be in [0, vocab_size=13) or ignore_index=-100, got {bad}")):
        linear_cross_entropy(hidden, weight, torch.tensor(labels), vocab_size=13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool, torch.uint8])
def test_labels_must_be_int64_or_int32(dtype):
    hidden, weight, labels = inputs(tokens=4, d=4, vocab_padded=8, vocab=8, dtype=torch.float64, ignore_every=9)
    with pytest.raises(InputError, match=f"labels must be an integer tensor \\(int64 or int32\\), got {dtype}"):
        linear_cross_entropy(hidden, weight, labels.to(dtype), vocab_size=8)


def test_int32_labels_and_unchecked_values_give_the_same_loss():
    """int32 labels are taken; check_label_values=False (a caller that checked them) skips only the check."""
    hidden, weight, labels = inputs(tokens=9, d=4, vocab_padded=8, vocab=8, dtype=torch.float64)
    expected = linear_cross_entropy(hidden, weight, labels, vocab_size=8)
    for got in (linear_cross_entropy(hidden, weight, labels.int(), vocab_size=8),
                linear_cross_entropy(hidden, weight, labels, vocab_size=8, check_label_values=False)):
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_model_rejects_out_of_range_labels():
    from mambalab import LanguageModel, ModelConfig

    model = LanguageModel(ModelConfig(d_model=16, n_layer=1, vocab_size=50))
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="labels"):
        model(ids, labels=torch.tensor([[1, 2, 50, -100]]))
