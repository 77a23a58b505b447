"""`mambalab eval`'s tokenizer: prepared data must match the model's, and a model directory that does not say
which tokenizer it reads (a checkpoint of a non-byte vocabulary) needs --tokenizer rather than bytes."""

from __future__ import annotations

import pytest
import torch

from mambalab import LanguageModel, ModelConfig
from mambalab.errors import InputError
from mambalab.tokenizer import ByteTokenizer
from mambalab.train.evaluate import evaluate_model
from mambalab.train.trainer import TrainConfig, Trainer, seed_everything

SCORE = {"batch_size": 2, "seq_len": 32, "max_batches": 1, "device": "cpu"}


def _write_other_tokenizer(directory):
    """A tokenizer.json of the byte tokenizer's vocabulary but another fingerprint (no byte-export mark)."""
    ByteTokenizer().save_hf_files(directory)
    (directory / "tokenizer_config.json").unlink()


def test_prepared_data_of_another_tokenizer_is_refused(embedded_ds, tiny_model, tmp_path):
    byte_model, other_model = tmp_path / "byte", tmp_path / "other"
    tiny_model(0).save_pretrained(byte_model)
    assert evaluate_model(byte_model, embedded_ds, **SCORE)["tokens"] == 64  # byte model, byte data: scored
    tiny_model(0).save_pretrained(other_model)
    _write_other_tokenizer(other_model)
    with pytest.raises(InputError, match="prepared with tokenizer 'byte'.*fingerprints differ"):
        evaluate_model(other_model, embedded_ds, **SCORE)
    with pytest.raises(InputError, match="fingerprints differ"):
        evaluate_model(byte_model, embedded_ds, tokenizer=str(other_model / "tokenizer.json"), **SCORE)


def test_checkpoint_of_a_non_byte_vocabulary_needs_the_tokenizer(embedded_ds, tmp_path):
    seed_everything(0)
    model = LanguageModel(ModelConfig(d_model=16, n_layer=1, vocab_size=300))
    ids = torch.randint(259, (2, 33))  # (b, l + 1)
    cfg = TrainConfig(max_steps=1, eval_every=0, progress=False, device="cpu")
    checkpoint = Trainer(model, cfg, [{"input_ids": ids[:, :-1], "labels": ids[:, 1:]}], out_dir=tmp_path).save()
    with pytest.raises(InputError, match=r"vocabulary of 300 is not the byte tokenizer's 259: pass --tokenizer"):
        evaluate_model(checkpoint, embedded_ds, **SCORE)
    assert evaluate_model(checkpoint, embedded_ds, tokenizer="byte", **SCORE)["tokens"] == 64
