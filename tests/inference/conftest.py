"""Tiny float64 models for the inference tests (float64 so that argmax never flips on rounding)."""

from __future__ import annotations

import pytest
import torch

from mambalab import LanguageModel, ModelConfig, SSMConfig

VOCAB = 61  # not a multiple of 8: the padded vocabulary rows must never be produced


def tiny_model(seed: int = 0, d_model: int = 32, dtype=torch.float64) -> LanguageModel:
    torch.manual_seed(seed)
    config = ModelConfig(d_model=d_model, n_layer=2, vocab_size=VOCAB, ssm=SSMConfig(d_state=8))
    return LanguageModel(config).to(dtype).eval()


@pytest.fixture
def model() -> LanguageModel:
    return tiny_model()


def random_prompts(lengths: list[int]) -> list[list[int]]:
    return [torch.randint(0, VOCAB, (n,)).tolist() for n in lengths]
