"""AdamW parameter groups (no weight decay where it does not belong) and the warmup + cosine schedule."""

from __future__ import annotations

import itertools

import pytest
import torch

from mambalab import LanguageModel, ModelConfig
from mambalab.train.optim import build_optimizer, lr_at, no_weight_decay_names


def _tiny(**kw) -> LanguageModel:
    return LanguageModel(ModelConfig(d_model=32, n_layer=2, vocab_size=64, **kw))


@pytest.mark.parametrize("tie", [True, False])
def test_no_weight_decay_groups(tie):
    model = _tiny(tie_embeddings=tie)
    names = no_weight_decay_names(model)
    for name, p in model.named_parameters():
        expect_plain = (
            name.endswith(("A_log", ".D", "dt_proj.bias", "norm.weight", "norm_f.weight", ".bias"))
            or "embeddings" in name
        )
        assert (name in names) == expect_plain, name
    assert "lm_head.weight" not in dict(model.named_parameters()) or not tie
    groups = build_optimizer(model, lr=1e-3, weight_decay=0.1).param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_decay_applies_only_to_decay_group():
    """With zero gradients, one AdamW step shrinks exactly the decayed weights by lr·wd."""
    model = _tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, lr=0.5, weight_decay=0.2)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    plain = no_weight_decay_names(model)
    for name, p in model.named_parameters():
        expected = before[name] if name in plain else before[name] * (1 - 0.5 * 0.2)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0), name


def test_flag_survives_renaming():
    model = _tiny()
    model.backbone.layers[0].mixer.in_proj.weight._no_weight_decay = True
    assert "backbone.layers.0.mixer.in_proj.weight" in no_weight_decay_names(model)
    with pytest.raises(ValueError, match="lr"):
        build_optimizer(model, lr=0.0, weight_decay=0.1)


def test_warmup_cosine_schedule():
    lr, min_lr, warmup, total = 1e-3, 1e-4, 10, 110
    values = [lr_at(s, lr, min_lr, warmup, total) for s in range(total + 5)]
    assert values[0] == pytest.approx(lr / warmup) and values[warmup - 1] == pytest.approx(lr)
    assert all(a < b for a, b in itertools.pairwise(values[:warmup]))
    decay = values[warmup:total + 1]
    assert all(a >= b for a, b in itertools.pairwise(decay))
    assert values[warmup + 50] == pytest.approx((lr + min_lr) / 2)
    assert values[total] == pytest.approx(min_lr) and values[-1] == min_lr
