"""Tokenizers: byte-level round trips (incl. invalid UTF-8), HF tokenizer.json wrapping, loading rules."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mambalab.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer


def _train_hf_tokenizer(path, texts):
    """A tiny BPE tokenizer.json trained offline, with an <|endoftext|> special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    tok.save(str(path))
    return path


@given(st.text())
@settings(max_examples=200, deadline=None)
def test_byte_roundtrip_any_text(text):
    tok = ByteTokenizer()
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids, errors="surrogateescape") == text


def test_byte_invalid_utf8_is_lossless_with_surrogateescape():
    tok = ByteTokenizer()
    raw = bytes(random.randrange(256) for _ in range(512))
    text = tok.decode(list(raw), errors="surrogateescape")
    assert tok.encode(text) == list(raw)
    assert tok.decode_bytes(list(raw) + [tok.eos_token_id, tok.pad_token_id]) == raw
    assert "\ufffd" in tok.decode([0xFF, 0xFE])  # default: replacement characters, printable


def test_byte_decode_rejects_out_of_range():
    with pytest.raises(ValueError, match="259"):
        ByteTokenizer().decode([300])


def test_hf_tokenizer_wraps_tokenizer_json(tmp_path):
    texts = ["the quick brown fox jumps over the lazy dog"] * 20 + ["héllo wörld ✓"] * 5
    path = _train_hf_tokenizer(tmp_path / "tokenizer.json", texts)
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, HFTokenizer)
    assert tok.eos_token_id == 0 and tok.bos_token_id is None
    for text in texts[-1:] + ["unseen words, ünïcödé"]:
        ids = tok.encode(text, add_eos=True)
        assert ids[-1] == tok.eos_token_id
        assert tok.decode(ids) == text
    with pytest.raises(ValueError, match="no BOS"):
        tok.encode("x", add_bos=True)
    assert load_tokenizer(path).fingerprint() == tok.fingerprint()
    assert tok.fingerprint() != ByteTokenizer().fingerprint()


def test_load_tokenizer_rules(tmp_path):
    assert isinstance(load_tokenizer(None), ByteTokenizer)
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)  # a model dir without tokenizer.json
    assert ByteTokenizer().fingerprint() == ByteTokenizer().fingerprint()
    bad = tmp_path / "broken" / "tokenizer.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="broken/tokenizer.json"):
        load_tokenizer(bad.parent)
    with pytest.raises(ValueError, match="no downloads"):
        load_tokenizer(tmp_path / "missing")
