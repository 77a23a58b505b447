"""Token shards: `prepare_dataset` (text files, folders, JSONL -> memmap shards + manifest) and batch loaders.

A prepared dataset is a directory:

    manifest.json        format, tokenizer (name, fingerprint, vocab_size, eos), dtype, token/byte counts, shards
    train-00000.bin ...  raw token ids, uint16 when vocab_size <= 65535 else uint32 (read with np.memmap)
    val-00000.bin ...

Every document is tokenized and followed by EOS; the concatenated stream is cut into chunks of `chunk_tokens`
and chunk i >= 1 goes to the validation split iff ceil(i·f) > ceil((i-1)·f) for f = val_fraction: a fraction
f of the chunks, spread evenly, chunks 1, 1 + 1/f, ... (chunk 0 trains, so a tiny corpus still trains, and
two chunks already give a validation split). Chunks are assigned while streaming, and a large text file is
read and tokenized in blocks (`_text_blocks`, cut where the tokenization is unchanged), so inputs of any size
pass through in one pass with bounded memory.

Loaders yield `{"input_ids": (b, l) long, "labels": (b, l) long}` with labels[:, t] = the token after
input_ids[:, t] (the shift is done here; the trainer scores logits[:, t] against labels[:, t]). Windows of
l+1 tokens start at multiples of l. `RandomBatches` walks a seeded permutation of the windows per epoch;
its position counts windows consumed by all ranks, so it resumes exactly and splits one global batch over
`world_size` ranks: rank r takes windows [p + r·b, p + (r+1)·b) of the global micro-batch starting at p.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from mambalab.atomic import read_versioned_json
from mambalab.errors import InputError
from mambalab.tokenizer import Tokenizer
from mambalab.train.corpus import EMBEDDED_CORPUS_NAME, embedded_corpus_path

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "mambalab-token-shards"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
TEXT_BLOCK_BYTES = 8 << 20  # a text file is read and tokenized in blocks of about this size
CUT_CHECK_CHARS = 1024  # context each side of a cut between two blocks, tokenized whole to check the cut


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when vocab_size <= 65535, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


# Reading documents --------------------------------------------------------------------------------------------
def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    with path.open("rb") as f:  # decoded line by line, so that invalid UTF-8 is reported with its line
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{path}:{lineno}: not UTF-8 ({exc.reason} at byte {exc.start} of the line)"
                ) from exc
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
            text = record.get(text_field) if isinstance(record, dict) else None
            if isinstance(text, str):
                yield text
                continue
            raise InputError(f"{path}:{lineno}: expected an object with a string field {text_field!r}")


def _text_blocks(path: Path, block_bytes: int) -> Iterator[str]:
    """A text file's text in blocks of about `block_bytes` (at least one block, maybe empty), so that a file of
    any size is read with bounded memory. A block ends after a newline that a non-space character follows,
    where tokenizers start a new word anyway; a file with no such newline is one block. Invalid UTF-8 raises
    InputError naming its byte offset in the file."""
    data, offset, yielded = bytearray(), 0, False  # data starts at byte `offset` of the file
    with path.open("rb") as f:
        while True:
            block = f.read(block_bytes)
            data += block
            # Only the new bytes (and the newline before them) can hold a cut: the rest had none.
            cut = len(data) if not block else _last_word_start(data, len(data) - len(block) - 1)
            if cut > 0 or (not block and not yielded):
                try:
                    yield data[:cut].decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InputError(
                        f"{path}: not UTF-8 text ({exc.reason} at byte {offset + exc.start})"
                    ) from exc
                yielded = True
                del data[:cut]
                offset += cut
            if not block:
                return


def _last_word_start(data: bytearray, start: int = 0) -> int:
    """The position after the last newline of `data[start:]` that a non-space byte follows; 0 when none."""
    end = len(data)
    while (newline := data.rfind(b"\n", max(start, 0), end)) >= 0:
        if newline + 1 < len(data) and not data[newline + 1 : newline + 2].isspace():
            return newline + 1
        end = newline
    return 0


def _file_documents(path: Path, text_field: str) -> Iterator[Iterator[str]]:
    """Each document of a file, as its text in pieces: a JSONL line is one piece, a text file is read in
    blocks of TEXT_BLOCK_BYTES."""
    if path.suffix.lower() in JSONL_SUFFIXES:
        for text in _jsonl_documents(path, text_field):
            yield iter((text,))
    else:
        yield _text_blocks(path, TEXT_BLOCK_BYTES)


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files named directly, the text/JSONL files under named folders (sorted), "embedded" = the corpus."""
    files: list[Path] = []
    for item in inputs:
        if str(item) == EMBEDDED_CORPUS_NAME:
            files.append(embedded_corpus_path())
            continue
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES
            )
            if not found:
                raise InputError(f"inputs: folder {path} holds no {TEXT_SUFFIXES + JSONL_SUFFIXES} files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"inputs: {str(item)!r} is not a file, a folder, or {EMBEDDED_CORPUS_NAME!r}")
    if not files:
        raise InputError("inputs: expected at least one file or folder, got none")
    return files


def iter_documents(inputs: Iterable[str | Path], text_field: str = "text") -> Iterator[str]:
    """Every document of the inputs in order: a text file is one document, a JSONL line is one document."""
    for path in expand_inputs(inputs):
        for pieces in _file_documents(path, text_field):
            yield "".join(pieces)


def _document_tokens(pieces: Iterator[str], tokenizer: Tokenizer, name: str) -> Iterator[tuple[np.ndarray, int]]:
    """(token ids, UTF-8 bytes) of one document of the file `name`, given in pieces; EOS after its last ids.
    A cut between two pieces is kept only where the text around it (CUT_CHECK_CHARS each side) tokenizes whole
    as its two halves do, so the ids are the whole document's whenever the tokenizer decides each token from
    that much context; elsewhere (a tokenizer that marks the start of a text, say) the pieces are joined and
    tokenized together."""
    held: list[str] = []  # pieces tokenized together, once the cut after them is known to be safe
    for piece in pieces:
        if held and _cut_is_safe(tokenizer, held[-1], piece):
            yield _tokens_and_bytes(tokenizer, "".join(held), add_eos=False)
            held = []
        elif held and len(held) == 1:
            logger.warning("tokenizer %s tokenizes across a cut between blocks of %s differently: the document"
                           " is tokenized in larger pieces (more memory)", tokenizer.name, name)
        held.append(piece)
    yield _tokens_and_bytes(tokenizer, "".join(held), add_eos=True)


def _cut_is_safe(tokenizer: Tokenizer, left: str, right: str) -> bool:
    before, after = left[-CUT_CHECK_CHARS:], right[:CUT_CHECK_CHARS]
    return tokenizer.encode(before + after) == tokenizer.encode(before) + tokenizer.encode(after)


def _tokens_and_bytes(tokenizer: Tokenizer, text: str, add_eos: bool) -> tuple[np.ndarray, int]:
    ids = np.asarray(tokenizer.encode(text, add_eos=add_eos), dtype=np.int64)
    return ids, len(text.encode("utf-8", errors="surrogateescape"))


# Writing shards -----------------------------------------------------------------------------------------------
class _ShardWriter:
    """Appends token arrays to `{split}-{k:05d}.bin`, starting a new shard every `shard_tokens` tokens."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self._file = None

    def write(self, tokens: np.ndarray) -> None:
        while tokens.size:
            if self._file is None or self.shards[-1]["tokens"] == self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            piece, tokens = tokens[:room], tokens[room:]
            self._file.write(piece.astype(self.dtype, copy=False).tobytes())
            self.shards[-1]["tokens"] += int(piece.size)

    def _open_next(self) -> None:
        self.close()
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._file = open(self.directory / name, "wb")  # noqa: SIM115 - closed in close()
        self.shards.append({"file": name, "tokens": 0})

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def _is_val_chunk(index: int, fraction: Fraction) -> bool:
    return index >= 1 and math.ceil(index * fraction) > math.ceil((index - 1) * fraction)


def _remove_stale_temps(out_dir: Path) -> None:
    """Delete the `.{name}.tmp-*` siblings of `out_dir` that an earlier preparation killed before its cleanup
    (SIGKILL, or SIGTERM outside `_sigterm_as_exit`) left behind."""
    prefix = f".{out_dir.name}.tmp-"
    for stale in out_dir.parent.iterdir():
        if stale.name.startswith(prefix) and stale.is_dir():
            logger.warning("removing %s, left by an interrupted preparation", stale)
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def _sigterm_as_exit():
    """SIGTERM raises SystemExit(143) instead of killing the process, so the temp directory is removed; only
    in the main thread and while SIGTERM has its default action (a handler of the caller's is left alone)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def exit_now(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def prepare_dataset(
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    tokenizer: Tokenizer,
    val_fraction: float = 0.05,
    chunk_tokens: int = 8192,
    shard_tokens: int = 1 << 26,
    text_field: str = "text",
    overwrite: bool = False,
) -> dict:
    """Tokenize `inputs` into token shards under `out_dir` (written to a temp dir, then renamed); returns the
    manifest. An existing prepared dataset is replaced only with `overwrite=True`."""
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if chunk_tokens < 2 or shard_tokens < 1:
        raise InputError(f"chunk_tokens must be >= 2 and shard_tokens >= 1, got {chunk_tokens}, {shard_tokens}")
    if tokenizer.eos_token_id is None:
        raise InputError(f"tokenizer {tokenizer!r} has no EOS token to separate documents")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise InputError(f"out_dir {out_dir} exists and is not empty (pass overwrite=True to replace it)")
    sources = [str(p) for p in expand_inputs(inputs)]
    fraction = Fraction(val_fraction).limit_denominator(1_000_000)
    dtype = token_dtype(tokenizer.vocab_size)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out_dir)
    with _sigterm_as_exit():  # a preempted preparation removes its temp directory
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        try:
            writers = {split: _ShardWriter(tmp, split, dtype, shard_tokens) for split in SPLITS}
            buffer: list[np.ndarray] = []
            buffered = n_chunks = n_docs = n_bytes = 0

            def flush(final: bool) -> None:
                nonlocal buffer, buffered, n_chunks
                stream = np.concatenate(buffer) if buffer else np.zeros(0, dtype=np.int64)
                while stream.size >= chunk_tokens or (final and stream.size):
                    chunk, stream = stream[:chunk_tokens], stream[chunk_tokens:]
                    writers["val" if _is_val_chunk(n_chunks, fraction) else "train"].write(chunk)
                    n_chunks += 1
                buffer, buffered = [stream], stream.size

            for path in sources:
                for pieces in _file_documents(Path(path), text_field):
                    n_docs += 1
                    for ids, size in _document_tokens(pieces, tokenizer, path):
                        n_bytes += size
                        buffer.append(ids)
                        buffered += ids.size
                        if buffered >= chunk_tokens:
                            flush(final=False)
            flush(final=True)
            for writer in writers.values():
                writer.close()
            splits = {split: {"tokens": sum(s["tokens"] for s in w.shards), "shards": w.shards}
                      for split, w in writers.items()}
            total = sum(s["tokens"] for s in splits.values())
            if total == 0:
                raise InputError(f"inputs: no text found in {sources}")
            manifest = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "tokenizer": {
                    "name": tokenizer.name,
                    "fingerprint": tokenizer.fingerprint(),
                    "vocab_size": tokenizer.vocab_size,
                    "eos_token_id": tokenizer.eos_token_id,
                },
                "dtype": dtype.name,
                "sources": sources,
                "documents": n_docs,
                "bytes": n_bytes,
                "tokens": total,
                "bytes_per_token": n_bytes / total,
                "val_fraction": val_fraction,
                "chunk_tokens": chunk_tokens,
                "splits": splits,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            if out_dir.exists():
                shutil.rmtree(out_dir)
            os.replace(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info("prepared %s: %d documents, %d train + %d val tokens (%s)", out_dir, n_docs,
                splits["train"]["tokens"], splits["val"]["tokens"], dtype.name)
    return manifest


# Reading shards -----------------------------------------------------------------------------------------------
def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    return read_versioned_json(path / MANIFEST, FORMAT, FORMAT_VERSION, InputError,
                               missing=f"{path} is not a prepared dataset (run `mambalab prepare`)")


class TokenDataset:
    """One split of a prepared dataset as a single token stream over memory-mapped shards."""

    def __init__(self, path: str | Path, split: str = "train", tokenizer: Tokenizer | None = None):
        if split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, got {split!r}")
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        if tokenizer is not None and tokenizer.fingerprint() != self.manifest["tokenizer"]["fingerprint"]:
            raise InputError(
                f"{self.path}: prepared with tokenizer {self.manifest['tokenizer']['name']!r}, which differs from"
                f" {tokenizer!r} (fingerprints differ); prepare the data again with this tokenizer"
            )
        dtype = np.dtype(self.manifest["dtype"])
        self.shards = []
        for shard in self.manifest["splits"][split]["shards"]:
            file = self.path / shard["file"]
            expected = shard["tokens"] * dtype.itemsize
            if not file.is_file() or file.stat().st_size != expected:
                size = file.stat().st_size if file.is_file() else "missing"
                raise InputError(f"{file}: expected {expected} bytes per {MANIFEST}, found {size}")
            self.shards.append(np.memmap(file, dtype=dtype, mode="r", shape=(shard["tokens"],)))
        self.offsets = np.cumsum([0] + [s.size for s in self.shards])
        self.split = split

    @property
    def bytes_per_token(self) -> float:
        return float(self.manifest["bytes_per_token"])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) as int64, crossing shard boundaries when needed."""
        pieces = []
        k = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < stop:
            lo = start - int(self.offsets[k])
            take = min(stop - start, self.shards[k].size - lo)
            pieces.append(self.shards[k][lo : lo + take])
            start, k = start + take, k + 1
        return np.concatenate(pieces).astype(np.int64)


def n_windows(tokens: int, seq_len: int) -> int:
    """How many windows of seq_len + 1 tokens, starting at multiples of seq_len, `tokens` tokens hold."""
    return max(tokens - 1, 0) // seq_len


class _Windows:
    """Windows of seq_len + 1 tokens starting at multiples of seq_len; shared by both loaders."""

    def __init__(self, dataset: TokenDataset, batch_size: int, seq_len: int, rank: int, world_size: int):
        if batch_size < 1 or seq_len < 1:
            raise InputError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
        if not 0 <= rank < world_size:
            raise InputError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.dataset, self.batch_size, self.seq_len = dataset, batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.n_windows = n_windows(len(dataset), seq_len)
        if self.n_windows < 1:
            raise InputError(
                f"{dataset.path} split {dataset.split!r} has {len(dataset)} tokens, fewer than seq_len + 1 ="
                f" {seq_len + 1}"
            )

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def batch(self, window_ids: list[int]) -> dict[str, torch.Tensor]:
        rows = np.stack([self.dataset.slice(w * self.seq_len, w * self.seq_len + self.seq_len + 1) for w in window_ids])
        rows = torch.from_numpy(rows)  # (b, l + 1)
        return {"input_ids": rows[:, :-1].contiguous(), "labels": rows[:, 1:].contiguous()}  # (b, l) each


class RandomBatches(_Windows):
    """Endless shuffled batches for training; `state_dict()` / `load_state_dict()` resume exactly."""

    def __init__(self, dataset: TokenDataset, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        super().__init__(dataset, batch_size, seq_len, rank, world_size)
        self.seed = seed
        self.position = 0  # windows consumed by all ranks together
        self._perm_epoch, self._perm = -1, np.zeros(0, dtype=np.int64)

    def _window(self, p: int) -> int:
        epoch, index = divmod(p, self.n_windows)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._perm_epoch = epoch
        return int(self._perm[index])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        start = self.position + self.rank * self.batch_size
        batch = self.batch([self._window(p) for p in range(start, start + self.batch_size)])
        self.position += self.global_batch
        return batch

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        if state["seq_len"] != self.seq_len or state["seed"] != self.seed:
            raise InputError(
                f"data state was saved with seq_len={state['seq_len']}, seed={state['seed']}; this loader has"
                f" seq_len={self.seq_len}, seed={self.seed}"
            )
        self.position = int(state["position"])


class SequentialBatches(_Windows):
    """The first `max_batches` global batches in order (all of them when None); each `iter()` restarts, so
    every evaluation sees the same tokens. Incomplete trailing batches are dropped."""

    def __init__(self, dataset: TokenDataset, batch_size: int, seq_len: int, max_batches: int | None = None,
                 rank: int = 0, world_size: int = 1):
        super().__init__(dataset, batch_size, seq_len, rank, world_size)
        self.n_batches = self.n_windows // self.global_batch
        if max_batches is not None:
            self.n_batches = min(self.n_batches, max_batches)
        if self.n_batches < 1:
            raise InputError(
                f"{dataset.path} split {dataset.split!r} has {self.n_windows} windows of {seq_len + 1} tokens,"
                f" fewer than one global batch of {self.global_batch}"
            )

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for g in range(self.n_batches):
            start = g * self.global_batch + self.rank * self.batch_size
            yield self.batch(list(range(start, start + self.batch_size)))
