"""The embedded default corpus: English prose from CPython's own documentation (see mambalab/data/ORIGIN.md)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

EMBEDDED_CORPUS_NAME = "embedded"


def embedded_corpus_path() -> Path:
    """Path of the packaged corpus.txt (1.18 MB, UTF-8), usable as a `prepare` input."""
    path = Path(str(resources.files("mambalab") / "data" / "corpus.txt"))
    if not path.is_file():
        raise FileNotFoundError(f"the embedded corpus is missing from the installation: {path}")
    return path


def embedded_corpus_text() -> str:
    return embedded_corpus_path().read_text(encoding="utf-8")
