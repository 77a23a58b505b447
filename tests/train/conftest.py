"""Fixtures of the training tests: the embedded corpus prepared once, tiny seeded models."""

from __future__ import annotations

import pytest

from mambalab import LanguageModel, ModelConfig
from mambalab.tokenizer import ByteTokenizer
from mambalab.train.data import prepare_dataset
from mambalab.train.trainer import seed_everything


@pytest.fixture(scope="session")
def embedded_ds(tmp_path_factory):
    """The embedded corpus as byte-level token shards (5% validation)."""
    path = tmp_path_factory.mktemp("embedded") / "ds"
    prepare_dataset(["embedded"], path, ByteTokenizer())
    return path


@pytest.fixture
def tiny_model():
    """Factory of d_model 32, 2-layer Mamba models on bytes; identical for identical seeds."""

    def make(seed: int = 0, model_class=LanguageModel) -> LanguageModel:
        seed_everything(seed)
        return model_class(ModelConfig(d_model=32, n_layer=2, vocab_size=ByteTokenizer.vocab_size))

    return make
