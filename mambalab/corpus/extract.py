"""From package files to clean English prose: reading a .deb, turning each file format into plain text, and
the fixed cleaning rules.

A .deb is an `ar` archive holding control.tar.* (the package's name and version) and data.tar.* (its files);
both are read here with the standard library, so building needs no dpkg. Formats, by file name (after
removing .gz): HTML (.html/.htm; <script>, <style>, <pre> and navigation dropped), POD (.pod), roff man pages
(under man/), reStructuredText / Markdown / plain text (anything else).

Cleaning (`clean_document`), the same for every source: Unicode NFC, tabs to spaces, paragraphs (separated by
blank lines) reflowed to one line, and a paragraph kept only if it looks like English prose: at least
MIN_WORDS words, at least MIN_LETTERS of its non-space characters letters, and at least MIN_STOPWORDS common
English function words. Code, tables, headings, lists of options and other languages fall out.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import unicodedata
from html.parser import HTMLParser
from pathlib import Path

from mambalab.errors import MambalabError

MIN_WORDS = 8
MIN_LETTERS = 0.7
MIN_STOPWORDS = 2
STOPWORDS = frozenset(
    [
        "the",
        "of",
        "and",
        "to",
        "a",
        "in",
        "is",
        "that",
        "it",
        "for",
        "as",
        "with",
        "be",
        "on",
        "are",
        "this",
        "by",
        "or",
        "an",
        "not",
        "can",
        "which",
        "from",
        "if",
        "at",
        "you",
    ]
)


class CorpusError(MambalabError):
    """A package or source file the corpus builder cannot use (what, where, expected)."""


# .deb files --------------------------------------------------------------------------------------------------
def _ar_members(data: bytes, where: str) -> dict[str, bytes]:
    if not data.startswith(b"!<arch>\n"):
        raise CorpusError(f"{where}: not a .deb (ar archive) file")
    members, pos = {}, 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        members[name] = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)  # members are 2-byte aligned
    return members


def _tar(members: dict[str, bytes], prefix: str, where: str) -> tarfile.TarFile:
    found = [name for name in members if name.startswith(prefix)]
    if not found:
        raise CorpusError(f"{where}: no {prefix}* member; expected a Debian binary package")
    try:
        return tarfile.open(fileobj=io.BytesIO(members[found[0]]), mode="r:*")
    except tarfile.TarError as e:
        raise CorpusError(f"{where}: cannot read {found[0]} ({e}); gzip, xz and bzip2 are supported") from e


def read_deb(path: Path, wanted=lambda name: True) -> tuple[dict[str, str], dict[str, bytes]]:
    """({"Package": ..., "Version": ...}, {path inside the package: bytes}) of the regular files of a .deb
    whose path `wanted(path)` accepts."""
    members = _ar_members(path.read_bytes(), str(path))
    with _tar(members, "control.tar", str(path)) as control:
        entry = next((m for m in control.getmembers() if m.name.lstrip("./") == "control"), None)
        if entry is None:
            raise CorpusError(f"{path}: control.tar has no control file")
        fields = dict(
            line.split(":", 1)
            for line in control.extractfile(entry).read().decode().splitlines()
            if ":" in line
        )
    control_fields = {k.strip(): v.strip() for k, v in fields.items()}
    with _tar(members, "data.tar", str(path)) as data:
        files = {
            m.name.removeprefix("./"): data.extractfile(m).read()
            for m in data.getmembers()
            if m.isfile() and wanted(m.name.removeprefix("./"))
        }
    return control_fields, files


# formats -----------------------------------------------------------------------------------------------------
class _HTMLText(HTMLParser):
    """Visible text of an HTML page; block elements end paragraphs; scripts, styles, code blocks and
    navigation are dropped."""

    SKIP = frozenset({"script", "style", "pre", "nav", "head", "header", "footer", "noscript", "svg"})
    BLOCK = frozenset(
        [
            "p",
            "div",
            "li",
            "ul",
            "ol",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "br",
            "tr",
            "td",
            "th",
            "dt",
            "dd",
            "table",
            "section",
            "article",
            "blockquote",
            "hr",
            "title",
        ]
    )

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data.replace("\n", " "))


def html_text(source: str) -> str:
    parser = _HTMLText()
    parser.feed(source)
    parser.close()
    return "".join(parser.parts)


_POD_CODE = re.compile(r"[A-Z]<+\s*([^<>]*?)\s*>+")


def pod_text(source: str) -> str:
    """POD: command lines (=head1 ...) keep their text, formatting codes (B<...>) keep their content."""
    text = "\n".join(line.partition(" ")[2] if line.startswith("=") else line for line in source.splitlines())
    for _ in range(3):  # nested codes: B<I<x>>
        text = _POD_CODE.sub(r"\1", text)
    return text


_ROFF_ESCAPES = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),
    (re.compile(r"\\\(em"), "—"),
    (re.compile(r"\\\((en|hy)"), "-"),
    (re.compile(r"\\\(.."), ""),
    (re.compile(r"\\[-&e]"), lambda m: {"\\-": "-", "\\&": "", "\\e": "\\"}[m.group(0)]),
    (re.compile(r"\\."), ""),
]


SKIPPED_ROFF = ('.\\"', "'\\\"", ".TH", ".so", ".de", ".ds", ".nr", ".if", ".ie")  # comments, set-up


def roff_text(source: str) -> str:
    """A man page's text: comments and layout macros dropped, a macro's arguments kept (.B word -> word),
    font and character escapes removed. Paragraph macros (.PP, .TP, ...) end paragraphs; headings (.SH,
    .SS) are paragraphs of their own."""
    out = []
    for line in source.splitlines():
        if line.startswith(SKIPPED_ROFF):
            continue
        if line.startswith((".", "'")):
            macro, _, rest = line[1:].partition(" ")
            line = rest.replace('"', "")
            if macro in {"SH", "SS"}:  # a heading: a paragraph of its own
                out += ["", line, ""]
                continue
            if macro in {"PP", "P", "LP", "TP", "IP", "HP", "sp", "br", "RS", "RE", "EX", "EE", "nf", "fi"}:
                out.append("")
        for pattern, replacement in _ROFF_ESCAPES:
            line = pattern.sub(replacement, line)
        out.append(line)
    return "\n".join(out)


def file_text(path: str, data: bytes) -> str:
    """The text of one file of a package, by its name (see the module docstring)."""
    name = path
    if name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise CorpusError(f"{path}: not a valid gzip file ({e})") from e
        name = name.removesuffix(".gz")
    text = data.decode("utf-8", errors="replace")
    if name.endswith((".html", ".htm")):
        return html_text(text)
    if name.endswith(".pod"):
        return pod_text(text)
    if "/man/" in name:
        return roff_text(text)
    return text


# cleaning ----------------------------------------------------------------------------------------------------
_SPACES = re.compile(r"[ \u00a0]+")
_BLANK = re.compile(r"\n\s*\n")
_WORD = re.compile(r"[A-Za-z']+")


def is_prose(paragraph: str) -> bool:
    words = _WORD.findall(paragraph)
    if len(words) < MIN_WORDS:
        return False
    visible = [c for c in paragraph if not c.isspace()]
    if sum(c.isalpha() for c in visible) < MIN_LETTERS * len(visible):
        return False
    return sum(w.lower() in STOPWORDS for w in words) >= MIN_STOPWORDS


def paragraphs(text: str) -> list[str]:
    """The prose paragraphs of a text, each reflowed to one line."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    text = "".join(c for c in text if c == "\n" or c.isprintable())
    out = []
    for block in _BLANK.split(text):
        paragraph = _SPACES.sub(" ", " ".join(line.strip() for line in block.splitlines())).strip()
        if paragraph and is_prose(paragraph):
            out.append(paragraph)
    return out
