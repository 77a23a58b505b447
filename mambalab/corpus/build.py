"""Build the corpus: packages in, `corpus.txt` + `manifest.json` + `documents.jsonl` out, deterministically.

Input: a folder of .deb files (`apt-get download <packages>` fills one; `download_packages` does it). Only the
packages named by the sources are read, in sorted order; each source's matching files are read in sorted path
order, turned into text and cleaned (extract.py). A paragraph already seen (anywhere earlier) is dropped, so
boilerplate repeated on every page counts once. Each file with any prose left is one document.

Split: documents are ordered by the SHA-256 of "package/path"; the first of them in that order go to
validation until it holds at least `val_fraction` of the bytes. corpus.txt holds every training document,
then every validation document (in source order within each, separated by blank lines), so the last
`val_fraction` of its bytes, which the LM task evaluates on (`lm_task(val_fraction=...)`), lie entirely in
validation documents. The manifest records the sources (package, version, .deb sha256 and size, licenses,
files and bytes used), the cleaning constants, the split and corpus.txt's size and sha256; documents.jsonl has
one line per document (source, path, split, byte offset, bytes). Every file is written atomically, the
manifest last: a folder with a manifest holds a complete corpus.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import re
import subprocess
from functools import partial
from pathlib import Path

from mambalab.atomic import write_atomic, write_json_atomic, write_text_atomic
from mambalab.corpus import extract
from mambalab.corpus.extract import CorpusError, file_text, paragraphs, read_deb
from mambalab.corpus.sources import SOURCES, Source

log = logging.getLogger(__name__)

VAL_FRACTION = 0.1
MANIFEST_FORMAT = 1
_LICENSE = re.compile(r"^License:\s*(\S.*)$", re.MULTILINE)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def licenses(files: dict[str, bytes], package: str) -> list[str]:
    """The License: fields of the package's machine-readable copyright file (DEP-5), sorted; a package whose
    copyright file is free-form is recorded as such."""
    copyright_file = files.get(f"usr/share/doc/{package}/copyright")
    if copyright_file is None:
        copyright_file = next(
            (data for path, data in sorted(files.items()) if path.endswith("/copyright")), None
        )
    if copyright_file is None:
        # Debian lets a package link its doc folder to a package built from the same source
        return ["(no copyright file in the package: see its source package's /usr/share/doc/*/copyright)"]
    text = copyright_file.decode("utf-8", "replace")
    if not text.startswith("Format:"):
        return [f"(free-form copyright file: see /usr/share/doc/{package}/copyright)"]
    return sorted({m.group(1).strip() for m in _LICENSE.finditer(text)})


def selected(source: Source, path: str) -> bool:
    return any(fnmatch.fnmatch(path, p) for p in source.include) and not any(
        fnmatch.fnmatch(path, p) for p in source.exclude
    )


def _wanted(source: Source, path: str) -> bool:
    return selected(source, path) or path.endswith("/copyright")


def find_packages(packages_dir: Path, sources: tuple[Source, ...]) -> dict[str, Path]:
    """{package: .deb path} for every source, from the .deb files in `packages_dir` (their names as
    `apt-get download` writes them, package_version_arch.deb). A missing package is an error naming it."""
    if not packages_dir.is_dir():
        raise CorpusError(f"packages folder {str(packages_dir)!r} does not exist")
    debs = {}
    for deb in sorted(packages_dir.glob("*.deb")):
        debs.setdefault(deb.name.split("_", 1)[0], deb)
    missing = [s.package for s in sources if s.package not in debs]
    if missing:
        raise CorpusError(
            f"packages folder {str(packages_dir)!r} lacks {missing}; fetch them with "
            f"`apt-get download {' '.join(missing)}` there (or run `mambalab corpus build` without --packages)"
        )
    return {s.package: debs[s.package] for s in sources}


def download_packages(packages_dir: Path, sources: tuple[Source, ...] | None = None) -> None:
    """`apt-get download` every source package (default SOURCES) not yet in `packages_dir` (needs Debian's
    package lists: `apt-get update` first)."""
    sources = SOURCES if sources is None else sources
    packages_dir.mkdir(parents=True, exist_ok=True)
    have = {deb.name.split("_", 1)[0] for deb in packages_dir.glob("*.deb")}
    wanted = [s.package for s in sources if s.package not in have]
    if wanted:
        result = subprocess.run(
            ["apt-get", "download", *wanted], check=False, cwd=packages_dir, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise CorpusError(f"apt-get download {' '.join(wanted)} failed: {result.stderr.strip()[-500:]}")


def _documents(sources: tuple[Source, ...], debs: dict[str, Path]) -> tuple[list[dict], list[dict]]:
    """(documents, per-source records) in source order; each document {source, path, text}."""
    seen, documents, records = set(), [], []
    for source in sources:
        deb = debs[source.package]
        control, files = read_deb(deb, partial(_wanted, source))
        used = [path for path in sorted(files) if selected(source, path)]
        if not used:
            raise CorpusError(
                f"{deb.name}: no file matches {list(source.include)}; was the package restructured?"
            )
        text_bytes = 0
        for path in used:
            kept = []
            for paragraph in paragraphs(file_text(path, files[path])):
                digest = hashlib.sha1(paragraph.encode()).digest()
                if digest not in seen:
                    seen.add(digest)
                    kept.append(paragraph)
            if kept:
                text = "\n\n".join(kept)
                documents.append({"source": source.package, "path": path, "text": text})
                text_bytes += len(text.encode())
        deb_bytes = deb.read_bytes()
        records.append(
            {
                "package": control.get("Package", source.package),
                "version": control.get("Version", "?"),
                "deb": deb.name,
                "deb_bytes": len(deb_bytes),
                "deb_sha256": _sha256(deb_bytes),
                "licenses": licenses(files, source.package),
                "include": list(source.include),
                "exclude": list(source.exclude),
                "files_matched": len(used),
                "documents": sum(d["source"] == source.package for d in documents),
                "text_bytes": text_bytes,
            }
        )
        log.info(
            "%s %s: %d files, %.1f MB of prose",
            source.package,
            records[-1]["version"],
            len(used),
            text_bytes / 1e6,
        )
    return documents, records


def split_documents(documents: list[dict], val_fraction: float) -> set[int]:
    """Indices of the validation documents: in order of sha256("source/path"), until ≥ val_fraction of bytes."""
    total = sum(len(d["text"].encode()) for d in documents)
    order = sorted(
        range(len(documents)),
        key=lambda i: _sha256(f"{documents[i]['source']}/{documents[i]['path']}".encode()),
    )
    val, size = set(), 0
    for i in order:
        if size >= val_fraction * total:
            break
        val.add(i)
        size += len(documents[i]["text"].encode())
    return val


def build_corpus(
    out_dir: str | Path,
    packages_dir: str | Path,
    sources: tuple[Source, ...] | None = None,
    val_fraction: float = VAL_FRACTION,
    min_bytes: int = 0,
) -> dict:
    """Build the corpus from the .deb files in `packages_dir` into `out_dir` (`sources`: default SOURCES);
    returns the manifest. Fails (writing no manifest) when the prose adds up to less than `min_bytes`."""
    sources = SOURCES if sources is None else sources
    if not 0 < val_fraction < 0.5:
        raise CorpusError(f"val_fraction must be in (0, 0.5), got {val_fraction}")
    out = Path(out_dir)
    documents, records = _documents(sources, find_packages(Path(packages_dir), sources))
    val = split_documents(documents, val_fraction)
    ordered = [i for i in range(len(documents)) if i not in val] + [
        i for i in range(len(documents)) if i in val
    ]
    rows, chunks, offset = [], [], 0
    for i in ordered:
        data = documents[i]["text"].encode() + b"\n\n"
        split = "val" if i in val else "train"
        rows.append(
            {
                "source": documents[i]["source"],
                "path": documents[i]["path"],
                "split": split,
                "offset": offset,
                "bytes": len(data),
            }
        )
        chunks.append(data)
        offset += len(data)
    corpus = b"".join(chunks)
    if len(corpus) < min_bytes:
        raise CorpusError(
            f"the sources give {len(corpus) / 1e6:.1f} MB of prose, less than the {min_bytes / 1e6:.0f} MB asked for"
        )
    train_bytes = sum(r["bytes"] for r in rows if r["split"] == "train")
    write_atomic(out / "corpus.txt", lambda tmp: tmp.write_bytes(corpus))
    write_text_atomic(out / "documents.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    manifest = {
        "format": MANIFEST_FORMAT,
        "corpus": {"path": "corpus.txt", "bytes": len(corpus), "sha256": _sha256(corpus)},
        "split": {
            "rule": "documents ordered by sha256('source/path'); the first go to validation until it holds "
            "val_fraction of the bytes; corpus.txt = training documents, then validation documents",
            "val_fraction": val_fraction,
            "train_bytes": train_bytes,
            "val_bytes": len(corpus) - train_bytes,
            "train_documents": len(rows) - len(val),
            "val_documents": len(val),
        },
        "cleaning": {
            "min_words": extract.MIN_WORDS,
            "min_letters": extract.MIN_LETTERS,
            "min_stopwords": extract.MIN_STOPWORDS,
            "stopwords": sorted(extract.STOPWORDS),
            "duplicate_paragraphs": "dropped after their first occurrence",
        },
        "documents": "documents.jsonl",
        "sources": records,
    }
    write_json_atomic(out / "manifest.json", manifest)
    return manifest
