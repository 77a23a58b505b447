"""Atomic file writes: write into a temp file beside the target, then rename it over the target, so that no
reader (nor a crash half-way) ever sees half a file. And `file_sha256`, to tell whether a file changed, and
`read_versioned_json`, to read back the manifests and indexes written this way."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temp file in `path`'s folder, then rename it to `path`; the temp file is removed
    if anything fails. The file gets the usual 0o644 permissions (mkstemp makes it private)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, data, indent: int = 1) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=indent, allow_nan=True) + "\n")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_versioned_json(file: Path, fmt: str, version: int, error: type[Exception], missing: str) -> dict:
    """The JSON object in `file` (a manifest or index this project writes) after checking its "format" and
    "version" fields; `error(message naming the file)` when it is absent (`missing` says what that means),
    unreadable, or of another format."""
    if not file.is_file():
        raise error(f"{file}: missing; {missing}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{file}: unreadable JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != fmt or data.get("version") != version:
        got = (data.get("format"), data.get("version")) if isinstance(data, dict) else type(data).__name__
        raise error(f"{file}: expected format {fmt} v{version}, got {got}")
    return data
