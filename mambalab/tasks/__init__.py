"""Synthetic tasks and the language-modelling task, by name.

    selective_copying   Mamba paper §4.1           induction_heads   Mamba paper §4.1 / Table 3
    mqar                Zoology (arXiv 2312.04927)  copying           arXiv 2402.01032
    phonebook           arXiv 2402.01032 §4         lm                a text corpus (embedded default)

`build_task(name, **options)` returns a `Task`; options are the task's dataclass fields (for "lm":
`corpus` = a text file, or None for the embedded corpus, and `tokenizer`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mambalab.tasks.base import IGNORE_INDEX, Task, accuracy_metrics, seeded
from mambalab.tasks.copying import Copying
from mambalab.tasks.induction_heads import InductionHeads
from mambalab.tasks.language_modelling import LanguageModelling
from mambalab.tasks.mqar import MQAR
from mambalab.tasks.phonebook import PhoneBook
from mambalab.tasks.selective_copying import SelectiveCopying

SYNTHETIC_TASKS: dict[str, type[Task]] = {
    "selective_copying": SelectiveCopying,
    "induction_heads": InductionHeads,
    "mqar": MQAR,
    "copying": Copying,
    "phonebook": PhoneBook,
}
TASK_NAMES = (*SYNTHETIC_TASKS, "lm")


def build_task(name: str, **options) -> Task:
    """The task called `name`, configured by `options` (its dataclass fields)."""
    if name == "lm":
        return lm_task(**options)
    if name not in SYNTHETIC_TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {TASK_NAMES}")
    return SYNTHETIC_TASKS[name](**options)


def lm_task(
    corpus: str | Path | None = None,
    tokenizer: str = "byte",
    max_bytes: int | None = None,
    val_fraction: float = 0.1,
    corpus_sha256: str | None = None,
) -> LanguageModelling:
    """Language modelling on a text file (default: the corpus embedded in the package, no download).
    `max_bytes` keeps only the start of the text (small runs need no more). With `corpus_sha256` the file
    must still have that content (a comparison's cached runs are keyed on it)."""
    from mambalab.atomic import file_sha256
    from mambalab.tokenizer import load_tokenizer
    from mambalab.train.corpus import embedded_corpus_path

    path = Path(corpus) if corpus is not None else embedded_corpus_path()
    if not path.is_file():
        raise ValueError(f"lm: corpus must be a text file, got {str(path)!r} (not found)")
    if corpus_sha256 is not None and file_sha256(path) != corpus_sha256:
        raise ValueError(f"lm: corpus {str(path)!r} changed (sha256 differs from {corpus_sha256[:12]}…)")
    text = path.read_text(encoding="utf-8", errors="replace")
    if max_bytes is not None:
        text = text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
    tok = load_tokenizer(tokenizer)
    ids = _token_ids(tok, text)  # (n,)
    bytes_per_token = tok.bytes_per_token or len(text.encode("utf-8")) / max(1, ids.numel())
    return LanguageModelling(
        ids, vocab_size=tok.vocab_size, bytes_per_token=bytes_per_token, val_fraction=val_fraction
    )


def _token_ids(tok, text: str) -> torch.Tensor:
    """The text's token ids; for the byte tokenizer straight from the UTF-8 bytes as uint8 (the same ids as
    `tok.encode`, without a Python int per byte: a 100 MB corpus would take gigabytes that way)."""
    from mambalab.tokenizer import ByteTokenizer

    if isinstance(tok, ByteTokenizer):
        data = bytearray(text.encode("utf-8", errors="surrogateescape"))
        return torch.frombuffer(data, dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)
    return torch.tensor(tok.encode(text), dtype=torch.long)


__all__ = [
    "IGNORE_INDEX",
    "MQAR",
    "TASK_NAMES",
    "Copying",
    "InductionHeads",
    "LanguageModelling",
    "PhoneBook",
    "SelectiveCopying",
    "Task",
    "accuracy_metrics",
    "build_task",
    "lm_task",
    "seeded",
]
