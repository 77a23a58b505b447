"""`TextStream` with real subword tokenizers: the streamed pieces add up to the decoding of all the tokens,
for byte-level BPE (multi-byte characters split over tokens) and for Metaspace pieces (leading spaces that
depend on the token before)."""

from __future__ import annotations

import random

import pytest

from mambalab.serve.text import TextStream
from mambalab.tokenizer import load_tokenizer

BYTES = load_tokenizer("byte")

TEXTS = ["the state space model reads the sequence", "é è ê – naïve café 日本語 テキスト", "a  b   c\n\td",
         "selective scans, hardware-aware: 3× faster", "🙂 emoji and ∑ symbols ≠ ascii"]


def _tokenizer(kind: str, path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>" if kind == "metaspace" else None))
    if kind == "bytelevel":
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        alphabet = sorted(set("".join(TEXTS)) | {"▁"})
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<unk>"],
                                  initial_alphabet=alphabet)
    tok.train_from_iterator(TEXTS * 3, trainer)
    tok.save(str(path / "tokenizer.json"))
    return load_tokenizer(path)


@pytest.mark.parametrize("kind", ["bytelevel", "metaspace"])
def test_streamed_pieces_add_up_to_the_whole_decoding(tmp_path, kind):
    pytest.importorskip("tokenizers")
    tok = _tokenizer(kind, tmp_path)
    rng = random.Random(0)
    for text in [*TEXTS, " ".join(rng.sample(TEXTS, 3))]:
        ids = tok.encode(text)
        stream = TextStream(tok)
        pieces = [stream.push(t) for t in ids] + [stream.finish()]
        assert "".join(pieces) == tok.decode(ids) == stream.emitted
        whole = TextStream(tok, incremental=False)  # a reader that wants only the end: decoded once
        assert [whole.push(t) for t in ids] == [""] * len(ids) and whole.finish() == tok.decode(ids)


def test_stop_strings_across_subword_tokens(tmp_path):
    pytest.importorskip("tokenizers")
    tok = _tokenizer("bytelevel", tmp_path)
    ids = tok.encode("selective scans, hardware-aware: 3× faster")
    stream = TextStream(tok, stop=["hardware"])
    text = "".join(stream.push(t) for t in ids) + stream.finish()
    assert stream.stopped and text == "selective scans, "


def test_text_stream_holds_back_partial_characters_and_stop_strings():
    stream = TextStream(BYTES, stop=["END"])
    out = [stream.push(t) for t in BYTES.encode("é a E")]
    assert out == ["", "é", " ", "a", " ", ""]  # é is two bytes; "E" may start "END"
    assert [stream.push(t) for t in BYTES.encode("x EN")] == ["Ex", " ", "", ""]
    assert stream.push(BYTES.encode("D")[0]) == "" and stream.stopped
    assert stream.emitted == "é a Ex " and stream.finish() == ""
    tail = TextStream(BYTES, stop=["END"])
    assert [tail.push(t) for t in BYTES.encode("aEN")] == ["a", "", ""] and tail.finish() == "EN"
    broken = TextStream(BYTES)  # bytes that never form a character are handed out as U+FFFD
    assert "".join(broken.push(t) for t in [0xFF] * 6) + broken.finish() == BYTES.decode([0xFF] * 6)
