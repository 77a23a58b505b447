"""The corpus builder on a small fake Debian package made here (no download): formats, cleaning, determinism,
the manifest and the split, the CLI, and the LM task reading the result."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mambalab.cli import app
from mambalab.corpus import CorpusError, Source, build_corpus
from mambalab.corpus.extract import file_text, paragraphs, read_deb
from mambalab.tasks import lm_task


def prose(i: int, words: int = 14) -> str:
    """A distinct English sentence: function words and numbered nouns, so no two are equal."""
    return (
        f"This is the sentence number {i} of the guide, and it says that a tool can read a file"
        + " word" * (words - 14)
        + "."
    )


def _tar(files: dict[str, bytes], mode: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"./{name}")
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_deb(path: Path, package: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal Debian binary package: ar archive of debian-binary, control.tar.gz, data.tar.xz."""
    members = {
        "debian-binary": b"2.0\n",
        "control.tar.gz": _tar({"control": f"Package: {package}\nVersion: {version}\n".encode()}, "w:gz"),
        "data.tar.xz": _tar(files, "w:xz"),
    }
    out = bytearray(b"!<arch>\n")
    for name, data in members.items():
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


DOC = "usr/share/doc/fake-doc"
SOURCE = Source(
    "fake-doc",
    (f"{DOC}/guide/*", "usr/share/man/man*/*.gz", "usr/share/perl/*/pod/*.pod"),
    (f"{DOC}/guide/skip-*",),
)


def fake_files() -> dict[str, bytes]:
    html = (
        "<html><head><title>t</title><script>var x = 1;</script></head><body><nav>Home Next</nav>"
        + "".join(f"<p>{prose(i)}</p>" for i in range(40))
        + "<pre>for (int i = 0; i < n; i++) { the(code); is(dropped); and(it); is(gone); }</pre>"
        + f"<p>{prose(0)}</p>"  # a duplicate paragraph: kept once
        + "<p>Der Satz ist auf Deutsch und wird nicht als englischer Text behalten, weil er fremd ist.</p>"
        + "</body></html>"
    )
    rst = (
        "Title\n=====\n\n"
        + "\n\n".join(prose(100 + i) for i in range(40))
        + "\n\n.. code-block:: c\n\n   x = y;\n"
    )
    roff = '.\\" comment\n.TH TOOL 1\n.SH NAME\ntool \\- a tool\n.SH DESCRIPTION\n' + "\n.PP\n".join(
        prose(200 + i).replace(" a tool ", " a\n.B tool\n").replace("file", "\\fIfile\\fR") for i in range(20)
    )
    pod = "=head1 NAME\n\nperlfake - fake\n\n=head1 DESCRIPTION\n\n" + "\n\n".join(
        f"B<{prose(300 + i)}>" for i in range(20)
    )
    return {
        f"{DOC}/copyright": b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
        b"Files: *\nCopyright: someone\nLicense: MIT\n",
        f"{DOC}/guide/index.html": html.encode(),
        f"{DOC}/guide/intro.rst.gz": gzip.compress(rst.encode(), mtime=0),
        f"{DOC}/guide/skip-me.html": f"<p>{prose(999)}</p>".encode(),
        "usr/share/man/man1/tool.1.gz": gzip.compress(roff.encode(), mtime=0),
        "usr/share/perl/5.36.0/pod/perlfake.pod": pod.encode(),
    }


@pytest.fixture
def packages(tmp_path) -> Path:
    folder = tmp_path / "packages"
    folder.mkdir()
    make_deb(folder / "fake-doc_1.0-2_all.deb", "fake-doc", "1.0-2", fake_files())
    make_deb(folder / "unrelated_1_all.deb", "unrelated", "1", {"usr/x.txt": prose(5).encode()})
    return folder


def test_the_deb_reader_gives_the_control_fields_and_files(packages):
    control, files = read_deb(packages / "fake-doc_1.0-2_all.deb")
    assert control["Package"] == "fake-doc" and control["Version"] == "1.0-2"
    assert set(files) == set(fake_files())


def test_formats_keep_prose_and_drop_code_markup_and_other_languages():
    files = fake_files()
    html = paragraphs(file_text(f"{DOC}/guide/index.html", files[f"{DOC}/guide/index.html"]))
    assert (
        html[:2] == [prose(0), prose(1)] and len(html) == 41
    )  # 40 + the duplicate (dropped later, not here)
    assert not any("var x" in p or "code" in p or "Deutsch" in p or "Home" in p for p in html)
    rst = paragraphs(file_text(f"{DOC}/guide/intro.rst.gz", files[f"{DOC}/guide/intro.rst.gz"]))
    assert rst == [prose(100 + i) for i in range(40)]
    roff = paragraphs(file_text("usr/share/man/man1/tool.1.gz", files["usr/share/man/man1/tool.1.gz"]))
    assert roff == [prose(200 + i) for i in range(20)]
    pod = paragraphs(
        file_text("usr/share/perl/5.36.0/pod/perlfake.pod", files["usr/share/perl/5.36.0/pod/perlfake.pod"])
    )
    assert pod == [prose(300 + i) for i in range(20)]


def test_build_is_deterministic_with_a_complete_manifest_and_a_clean_split(packages, tmp_path):
    first = build_corpus(tmp_path / "a", packages, sources=(SOURCE,), val_fraction=0.2)
    second = build_corpus(tmp_path / "b", packages, sources=(SOURCE,), val_fraction=0.2)
    corpus = (tmp_path / "a" / "corpus.txt").read_bytes()
    assert corpus == (tmp_path / "b" / "corpus.txt").read_bytes() and first == second
    (source,) = first["sources"]
    assert source["package"] == "fake-doc" and source["version"] == "1.0-2" and source["licenses"] == ["MIT"]
    assert source["files_matched"] == 4 and source["documents"] == 4  # skip-me.html excluded
    assert first["corpus"]["bytes"] == len(corpus) and len(first["corpus"]["sha256"]) == 64
    text = corpus.decode()
    assert text.count(prose(0)) == 1 and prose(999) not in text and "Deutsch" not in text
    rows = [json.loads(line) for line in (tmp_path / "a" / "documents.jsonl").read_text().splitlines()]
    assert [r["split"] for r in rows] == sorted(r["split"] for r in rows)  # train documents first, then val
    assert all(corpus[r["offset"] : r["offset"] + r["bytes"]].strip() for r in rows)
    assert sum(r["bytes"] for r in rows) == len(corpus)
    split = first["split"]
    assert split["val_bytes"] >= 0.2 * len(corpus) and split["train_bytes"] + split["val_bytes"] == len(
        corpus
    )
    # the LM task evaluates on the last val_fraction of the tokens: inside the validation documents only
    task = lm_task(corpus=tmp_path / "a" / "corpus.txt", val_fraction=0.2)
    assert task.dataset_tokens()["eval"] <= split["val_bytes"]


def test_missing_packages_and_too_little_prose_are_clear_errors(packages, tmp_path):
    with pytest.raises(CorpusError, match=r"lacks \['other-doc'\].*apt-get download other-doc"):
        build_corpus(tmp_path / "x", packages, sources=(SOURCE, Source("other-doc", ("*",))))
    with pytest.raises(CorpusError, match="less than the 100 MB"):
        build_corpus(tmp_path / "y", packages, sources=(SOURCE,), min_bytes=100_000_000)
    assert not (tmp_path / "y" / "manifest.json").exists()
    with pytest.raises(CorpusError, match="no file matches"):
        build_corpus(tmp_path / "z", packages, sources=(Source("fake-doc", ("nothing/*",)),))


def test_cli_builds_from_a_packages_folder(packages, tmp_path, monkeypatch):
    from mambalab.corpus import build as build_module

    monkeypatch.setattr(build_module, "SOURCES", (SOURCE,))
    result = CliRunner().invoke(
        app, ["corpus", "build", "--out", str(tmp_path / "out"), "--packages", str(packages), "--min-mb", "0"]
    )
    assert result.exit_code == 0, result.output
    assert "corpus.txt" in result.output and (tmp_path / "out" / "manifest.json").is_file()
    missing = CliRunner().invoke(
        app, ["corpus", "build", "--out", str(tmp_path / "o2"), "--packages", str(tmp_path / "none")]
    )
    assert missing.exit_code == 2 and "Error" in missing.output  # a bad parameter, not a traceback
