"""Tokenizers: a built-in byte-level one and a wrapper over HF `tokenizers` (tokenizer.json).

Both share one small interface used by data preparation, training, evaluation and generation:

    encode(text, add_bos=False, add_eos=False) -> list[int]
    decode(ids, errors="replace") -> str          (special tokens are skipped)
    vocab_size, bos_token_id, eos_token_id, pad_token_id
    fingerprint() -> str                          (stable hash, recorded in token-shard manifests)
    bytes_per_token                               (1.0 for bytes; None when it depends on the text)

`ByteTokenizer` ids:  0..255 are the raw UTF-8 bytes,  256 = BOS,  257 = EOS,  258 = PAD  (vocab_size 259).
Encoding uses UTF-8 with "surrogateescape", so `decode(encode(s), errors="surrogateescape") == s` for every
string, and any id sequence decodes: invalid UTF-8 becomes U+FFFD by default, or lone surrogates with
`errors="surrogateescape"` (lossless: they encode back to the same bytes). `decode_bytes` gives raw bytes.

`load_tokenizer(path_or_name)`: a directory with tokenizer.json, or a tokenizer.json file -> `HFTokenizer`;
"byte", a directory without tokenizer.json, or one holding the byte tokenizer's own export -> `ByteTokenizer`.

`save_hf_files(directory)` writes files `transformers.AutoTokenizer.from_pretrained(directory)` loads: the
HF tokenizer's own files, or for bytes a generated tokenizer.json (byte-level BPE without merges, so id i is
byte i, and "<bos>" 256, "<eos>" 257, "<pad>" 258) whose tokenizer_config.json sets `split_special_tokens`,
so that text spelling "<eos>" stays bytes, exactly as `ByteTokenizer.encode` does.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from mambalab.errors import InputError

BYTE_TOKENIZER_NAME = "byte"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# tokenizer_config.json key marking the byte tokenizer's export, loaded back as a `ByteTokenizer`.
_BYTE_EXPORT_MARK = "mambalab_tokenizer"
# Names under which HF tokenizers commonly spell their special tokens, most specific first.
_EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]")
_BOS_NAMES = ("<|startoftext|>", "<s>", "<bos>", "<|begin_of_text|>", "[CLS]")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ByteTokenizer:
    """Byte-level tokenizer: one token per UTF-8 byte plus BOS/EOS/PAD. Needs no files, never fails."""

    bos_token_id = 256
    eos_token_id = 257
    pad_token_id = 258
    vocab_size = 259
    bytes_per_token = 1.0
    name = BYTE_TOKENIZER_NAME

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"ByteTokenizer.encode: text must be a str, got {type(text).__name__}")
        ids = list(text.encode("utf-8", errors="surrogateescape"))
        return ([self.bos_token_id] if add_bos else []) + ids + ([self.eos_token_id] if add_eos else [])

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The raw bytes of `ids`, special tokens skipped; ids outside [0, vocab_size) are an error."""
        out = bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < 256:
                out.append(i)
            elif not 256 <= i < self.vocab_size:
                raise InputError(f"ByteTokenizer.decode: token id {i} is outside [0, {self.vocab_size})")
        return bytes(out)

    def decode(self, ids: Sequence[int], errors: str = "replace") -> str:
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def save_hf_files(self, directory: str | Path) -> list[Path]:
        """Write tokenizer.json and tokenizer_config.json into `directory` for `transformers.AutoTokenizer`
        (needs the `tokenizers` package); the ids are this tokenizer's. Returns the files written."""
        from tokenizers import AddedToken, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizerModel

        tok = HFTokenizerModel(models.BPE({char: i for i, char in enumerate(_byte_level_chars())}, []))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(t, special=True) for t in ("<bos>", "<eos>", "<pad>")])  # 256..258
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>",
                  "pad_token": "<pad>", "split_special_tokens": True, "clean_up_tokenization_spaces": False,
                  "model_max_length": 1 << 60, _BYTE_EXPORT_MARK: BYTE_TOKENIZER_NAME}
        directory = Path(directory)
        tok.save(str(directory / TOKENIZER_FILE))
        (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return [directory / TOKENIZER_FILE, directory / TOKENIZER_CONFIG_FILE]

    def fingerprint(self) -> str:
        spec = {"type": "byte", "version": 1, "bos": 256, "eos": 257, "pad": 258, "vocab_size": 259}
        return _sha256(json.dumps(spec, sort_keys=True))

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=259)"


def read_tokenizer_config(path: Path) -> dict:
    """A tokenizer_config.json as a dict ({} when the file is absent or not an object); InputError naming the
    file when it is not valid JSON."""
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot parse {path}: {exc}") from exc
    return config if isinstance(config, dict) else {}


class HFTokenizer:
    """A `tokenizers.Tokenizer` loaded from tokenizer.json, behind the same interface as `ByteTokenizer`.

    Special tokens are found by their usual spellings (e.g. "<|endoftext|>" for GPT-NeoX / Mamba); a missing
    one is None. `tokenizer_config.json` beside the file, when present, overrides them by name.
    """

    bytes_per_token = None

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        path = Path(path)
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for malformed files
            raise InputError(f"cannot load tokenizer file {path}: {exc}") from exc
        self.path = path
        self.name = str(path)
        names = self._configured_special_tokens(path.parent / "tokenizer_config.json")
        self.bos_token_id = self._find(names.get("bos_token"), _BOS_NAMES)
        self.eos_token_id = self._find(names.get("eos_token"), _EOS_NAMES)
        self.pad_token_id = self._find(names.get("pad_token"), _PAD_NAMES)

    @staticmethod
    def _configured_special_tokens(config_path: Path) -> dict[str, str]:
        config = read_tokenizer_config(config_path)
        found = {}
        for key in ("bos_token", "eos_token", "pad_token"):
            value = config.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                found[key] = value
        return found

    def _find(self, configured: str | None, candidates: tuple[str, ...]) -> int | None:
        for token in ((configured,) if configured else ()) + candidates:
            token_id = self._tok.token_to_id(token)
            if token_id is not None:
                return token_id
        return None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"HFTokenizer.encode: text must be a str, got {type(text).__name__}")
        ids = self._tok.encode(text, add_special_tokens=False).ids
        for flag, token_id, what in ((add_bos, self.bos_token_id, "BOS"), (add_eos, self.eos_token_id, "EOS")):
            if flag and token_id is None:
                raise InputError(f"tokenizer {self.path} has no {what} token; cannot add one")
        return ([self.bos_token_id] if add_bos else []) + ids + ([self.eos_token_id] if add_eos else [])

    def decode(self, ids: Sequence[int], errors: str = "replace") -> str:
        """Special tokens are skipped. `errors` is accepted for interface parity; HF decoding already
        replaces invalid byte sequences with U+FFFD."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def fingerprint(self) -> str:
        return _sha256(json.dumps(json.loads(self._tok.to_str()), sort_keys=True))

    def save_hf_files(self, directory: str | Path) -> list[Path]:
        """Copy tokenizer.json (and tokenizer_config.json when it sits beside it) into `directory`."""
        directory = Path(directory)
        written = []
        for source in (self.path, self.path.parent / TOKENIZER_CONFIG_FILE):
            if source.is_file():
                target = directory / (TOKENIZER_FILE if source == self.path else TOKENIZER_CONFIG_FILE)
                if source.resolve() != target.resolve():
                    shutil.copyfile(source, target)
                written.append(target)
        return written

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


Tokenizer = ByteTokenizer | HFTokenizer


def _byte_level_chars() -> list[str]:
    """The printable stand-in character of each byte in byte-level BPE (GPT-2's, which the `tokenizers`
    ByteLevel pre-tokenizer uses): printable Latin-1 bytes stand for themselves, the others, in order, for
    chr(256), chr(257), ..."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    chars, extra = [], 0
    for byte in range(256):
        chars.append(chr(byte) if byte in printable else chr(256 + extra))
        extra += byte not in printable
    return chars


def _is_byte_export(directory: Path) -> bool:
    """Whether `directory`'s tokenizer files are `ByteTokenizer.save_hf_files`' (marked in its config)."""
    config = directory / TOKENIZER_CONFIG_FILE
    try:
        return json.loads(config.read_text(encoding="utf-8")).get(_BYTE_EXPORT_MARK) == BYTE_TOKENIZER_NAME
    except (OSError, ValueError, AttributeError):
        return False


def load_tokenizer(path_or_name: str | Path | None = None) -> Tokenizer:
    """The tokenizer of a model directory, a tokenizer.json file, or the name "byte" (also None).

    A directory holding tokenizer.json gives an `HFTokenizer`; any other existing directory (for example a
    mambalab checkpoint trained on bytes) gives a `ByteTokenizer`.
    """
    if path_or_name is None or str(path_or_name) == BYTE_TOKENIZER_NAME:
        return ByteTokenizer()
    path = Path(path_or_name)
    if path.is_dir():
        file = path / TOKENIZER_FILE
        return HFTokenizer(file) if file.is_file() and not _is_byte_export(path) else ByteTokenizer()
    if path.is_file():
        return ByteTokenizer() if _is_byte_export(path.parent) else HFTokenizer(path)
    raise InputError(
        f"tokenizer: {str(path_or_name)!r} is neither {BYTE_TOKENIZER_NAME!r}, a directory, nor a tokenizer.json"
        " file (no downloads are made)"
    )
