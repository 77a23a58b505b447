"""`prepare` reads a large text file in blocks: the same shards as reading it whole, with bounded memory."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mambalab.errors import InputError
from mambalab.tokenizer import ByteTokenizer, HFTokenizer
from mambalab.train import data
from mambalab.train.data import TokenDataset, _text_blocks, prepare_dataset

LINES = ["state space models", "  indented ünïcode ✓ line", "", "\tselective scan", "   ", "token token."]


def _text(n_lines: int) -> str:
    picks = torch.randint(len(LINES), (n_lines,)).tolist()
    return "\n".join(LINES[i] for i in picks) + ("\n" if n_lines % 2 else "")


def _hf_tokenizer(tmp_path, pre_tokenizer: str) -> HFTokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>" if pre_tokenizer == "metaspace" else None))
    if pre_tokenizer == "metaspace":  # marks the start of every text: a cut changes the first token after it
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        alphabet = sorted(set("".join(LINES) + "\n\t▁"))
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder, alphabet = decoders.ByteLevel(), pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<|endoftext|>", "<unk>"],
                                  initial_alphabet=alphabet)
    tok.train_from_iterator([_text(200) for _ in range(4)], trainer)
    tok.save(str(tmp_path / f"{pre_tokenizer}.json"))
    return HFTokenizer(tmp_path / f"{pre_tokenizer}.json")


@pytest.mark.parametrize("block_bytes", [1, 7, 64, 1000])
def test_blocks_join_to_the_file_and_end_where_a_word_starts(tmp_path, block_bytes):
    text = _text(120)
    path = tmp_path / "a.txt"
    path.write_text(text, encoding="utf-8")
    blocks = list(_text_blocks(path, block_bytes))
    assert "".join(blocks) == text and len(blocks) > 1
    for left, right in itertools.pairwise(blocks):
        assert left.endswith("\n") and right and not right[0].isspace()
    raw = text.encode()
    starts = [0] + [i + 1 for i in range(len(raw) - 1) if raw[i] == 10 and not raw[i + 1 : i + 2].isspace()]
    longest_gap = max(b - a for a, b in zip(starts, starts[1:] + [len(raw)]))  # no cut possible inside one
    assert max(len(b.encode()) for b in blocks) <= block_bytes + longest_gap


def test_an_empty_file_is_one_empty_block(tmp_path):
    (tmp_path / "e.txt").write_bytes(b"")
    assert list(_text_blocks(tmp_path / "e.txt", 8)) == [""]


def test_invalid_utf8_past_the_first_block_names_its_byte_in_the_file(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good line\n" * 50 + b"bad \xff byte\n" + b"more\n" * 10)
    with pytest.raises(InputError, match=r"bad\.txt: not UTF-8 text \(invalid start byte at byte 504\)"):
        list(_text_blocks(path, 16))


@pytest.mark.parametrize("tokenizer", ["byte", "bytelevel-bpe", "metaspace"])
def test_prepare_in_small_blocks_equals_prepare_whole(tmp_path, monkeypatch, caplog, tokenizer):
    tok = ByteTokenizer() if tokenizer == "byte" else _hf_tokenizer(tmp_path, tokenizer.split("-")[-1])
    src = tmp_path / "src"
    src.mkdir()
    texts = [_text(int(n)) for n in torch.randint(40, 300, (3,))]
    for i, text in enumerate(texts):
        (src / f"{i}.txt").write_text(text, encoding="utf-8")
    whole = prepare_dataset([src], tmp_path / "whole", tok, val_fraction=0.2, chunk_tokens=97)
    monkeypatch.setattr(data, "TEXT_BLOCK_BYTES", 50)
    monkeypatch.setattr(data, "CUT_CHECK_CHARS", 40)
    blocks = prepare_dataset([src], tmp_path / "blocks", tok, val_fraction=0.2, chunk_tokens=97)
    assert {k: v for k, v in blocks.items() if k != "splits"} == {k: v for k, v in whole.items() if k != "splits"}
    expected = [t for text in texts for t in tok.encode(text, add_eos=True)]
    assert whole["tokens"] == len(expected)
    for split in ("train", "val"):
        a, b = TokenDataset(tmp_path / "whole", split, tok), TokenDataset(tmp_path / "blocks", split, tok)
        assert np.array_equal(a.slice(0, len(a)), b.slice(0, len(b)))
    refused = "tokenizes across a cut between blocks" in caplog.text
    assert refused == (tokenizer == "metaspace")  # its cuts are joined back; the others' are kept
