"""Token shards and loaders: prepare from text/folders/JSONL, manifest, split, dtypes, resumable sampling."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from mambalab.errors import InputError
from mambalab.tokenizer import ByteTokenizer
from mambalab.train.data import (
    RandomBatches,
    SequentialBatches,
    TokenDataset,
    iter_documents,
    prepare_dataset,
    read_manifest,
)


class WideByteTokenizer(ByteTokenizer):
    """Byte tokenizer pretending to a vocabulary above 65535, to exercise uint32 shards."""

    vocab_size = 70_000
    name = "wide"

    def fingerprint(self) -> str:
        return "wide"


def _random_text(n: int) -> str:
    words = ["state", "space", "model", "selective", "scan", "ünï", "✓", "token"]
    return " ".join(words[i] for i in torch.randint(len(words), (n,)).tolist())


def test_prepare_text_folder_jsonl(tmp_path):
    docs = [_random_text(int(n)) for n in torch.randint(50, 400, (6,))]
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text(docs[0], encoding="utf-8")
    (src / "sub" / "b.md").write_text(docs[1], encoding="utf-8")
    (src / "ignored.bin").write_bytes(b"\x00\x01")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs[2:])) + "\n")
    tok = ByteTokenizer()
    assert list(iter_documents([src, jsonl])) == docs
    manifest = prepare_dataset([src, jsonl], tmp_path / "ds", tok, val_fraction=0.25, chunk_tokens=64)
    assert read_manifest(tmp_path / "ds") == manifest
    expected = [t for d in docs for t in tok.encode(d, add_eos=True)]
    assert manifest["tokens"] == len(expected) and manifest["documents"] == 6 and manifest["dtype"] == "uint16"
    assert manifest["bytes"] == sum(len(d.encode()) for d in docs)
    train, val = TokenDataset(tmp_path / "ds", "train", tok), TokenDataset(tmp_path / "ds", "val", tok)
    # chunk i >= 1 of 64 tokens is validation iff ceil(i/4) > ceil((i-1)/4): chunks 1, 5, 9, ...
    chunks = [expected[i : i + 64] for i in range(0, len(expected), 64)]
    assert train.slice(0, len(train)).tolist() == [t for i, c in enumerate(chunks) if i % 4 != 1 for t in c]
    assert val.slice(0, len(val)).tolist() == [t for i, c in enumerate(chunks) if i % 4 == 1 for t in c]
    assert not list(tmp_path.glob(".ds.tmp-*"))
    with pytest.raises(ValueError, match="not empty"):
        prepare_dataset([src], tmp_path / "ds", tok)


def test_uint32_shards_and_shard_boundaries(tmp_path):
    text = _random_text(300)
    manifest = prepare_dataset([_write(tmp_path / "t.txt", text)], tmp_path / "ds", WideByteTokenizer(),
                               val_fraction=0.0, shard_tokens=100)
    assert manifest["dtype"] == "uint32" and len(manifest["splits"]["train"]["shards"]) > 3
    ds = TokenDataset(tmp_path / "ds", "train")
    expected = ByteTokenizer().encode(text, add_eos=True)
    assert ds.slice(0, len(ds)).tolist() == expected
    assert ds.slice(95, 215).tolist() == expected[95:215]  # crosses two shard boundaries


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_bad_inputs_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": broken}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
        prepare_dataset([bad], tmp_path / "ds", ByteTokenizer())
    bad.write_text('{"text": "ok"}\n\n{"body": "no text field"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:3: expected an object with a string field 'text'"):
        prepare_dataset([bad], tmp_path / "ds", ByteTokenizer())
    assert not (tmp_path / "ds").exists()
    with pytest.raises(ValueError, match="nowhere"):
        prepare_dataset([tmp_path / "nowhere"], tmp_path / "ds", ByteTokenizer())


def test_tokenizer_mismatch_and_truncated_shard(tmp_path):
    prepare_dataset([_write(tmp_path / "t.txt", _random_text(200))], tmp_path / "ds", ByteTokenizer())
    with pytest.raises(ValueError, match="fingerprints differ"):
        TokenDataset(tmp_path / "ds", "train", WideByteTokenizer())
    shard = tmp_path / "ds" / "train-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ValueError, match="train-00000.bin: expected"):
        TokenDataset(tmp_path / "ds", "train")


def test_embedded_corpus_is_prose(embedded_ds):
    manifest = read_manifest(embedded_ds)
    assert 500_000 < manifest["bytes"] < 2_000_000 and manifest["splits"]["val"]["tokens"] > 10_000
    text = ByteTokenizer().decode(TokenDataset(embedded_ds, "train").slice(0, 20_000).tolist())
    assert text.count(" the ") > 100


def test_random_batches_shift_resume_and_ranks(embedded_ds):
    ds = TokenDataset(embedded_ds, "train")
    seed = int(torch.randint(1000, ()))
    loader = RandomBatches(ds, batch_size=4, seq_len=32, seed=seed)
    first = [next(loader) for _ in range(3)]
    for b in first:
        assert b["input_ids"].shape == b["labels"].shape == (4, 32) and b["input_ids"].dtype == torch.long
        assert torch.equal(b["input_ids"][:, 1:], b["labels"][:, :-1])
    state = loader.state_dict()
    expected_next = [next(loader) for _ in range(2)]
    resumed = RandomBatches(ds, batch_size=4, seq_len=32, seed=seed)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    for want in expected_next:
        got = next(resumed)
        assert torch.equal(got["input_ids"], want["input_ids"])
    # two ranks at batch 2 see exactly the one-process batch of 4, split in order
    ranks = [RandomBatches(ds, batch_size=2, seq_len=32, seed=seed, rank=r, world_size=2) for r in range(2)]
    for want in first:
        got = torch.cat([next(r)["input_ids"] for r in ranks])
        assert torch.equal(got, want["input_ids"])
    with pytest.raises(ValueError, match="seq_len"):
        RandomBatches(ds, 4, 16, seed=seed).load_state_dict(state)


def test_random_batches_epochs_are_permutations(tmp_path):
    prepare_dataset([_write(tmp_path / "t.txt", _random_text(100))], tmp_path / "ds", ByteTokenizer(),
                    val_fraction=0.0)
    loader = RandomBatches(TokenDataset(tmp_path / "ds", "train"), batch_size=3, seq_len=8, seed=1)
    n = loader.n_windows
    epochs = [[loader._window(p) for p in range(e * n, (e + 1) * n)] for e in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(n)) and epochs[0] != epochs[1]
    for _ in range(n):  # batches run across the epoch boundary
        assert next(loader)["input_ids"].shape == (3, 8)


def test_sequential_batches_restart(embedded_ds):
    ds = TokenDataset(embedded_ds, "val")
    loader = SequentialBatches(ds, batch_size=2, seq_len=16, max_batches=3)
    a, b = list(loader), list(loader)
    assert len(a) == 3 and all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    assert torch.equal(a[0]["input_ids"][0], torch.from_numpy(ds.slice(0, 16)))
    with pytest.raises(ValueError, match="fewer than one global batch"):
        SequentialBatches(ds, batch_size=len(ds), seq_len=16)


def test_invalid_utf8_in_jsonl_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: not UTF-8"):
        prepare_dataset([bad], tmp_path / "ds", ByteTokenizer())


def test_stale_temp_dirs_of_a_killed_preparation_are_removed(tmp_path):
    stale = tmp_path / ".ds.tmp-killed"  # what a SIGKILL during prepare_dataset leaves
    stale.mkdir()
    (stale / "train-00000.bin").write_bytes(b"\0" * 8)
    other = tmp_path / ".dsx.tmp-keep"  # another dataset's: not ours to remove
    other.mkdir()
    prepare_dataset([_write(tmp_path / "t.txt", _random_text(50))], tmp_path / "ds", ByteTokenizer())
    assert not stale.exists() and other.is_dir()


class TerminatedTokenizer(ByteTokenizer):
    """Sends this process SIGTERM while encoding, as a preemption during preparation would."""

    def encode(self, text, add_bos=False, add_eos=False):
        os.kill(os.getpid(), signal.SIGTERM)
        return super().encode(text, add_bos=add_bos, add_eos=add_eos)


def test_sigterm_during_preparation_exits_and_removes_the_temp_dir(tmp_path):
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("SIGTERM has a handler in this process; preparation leaves it alone")
    with pytest.raises(SystemExit) as exit_info:
        prepare_dataset([_write(tmp_path / "t.txt", "text")], tmp_path / "ds", TerminatedTokenizer())
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
