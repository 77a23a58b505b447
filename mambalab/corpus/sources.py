"""Where the corpus comes from: English documentation and text packages of Debian 12 (bookworm), all in main
(DFSG-free), obtainable offline through the package registry with `apt-get download`.

Each source names a package and the files inside it that hold prose (glob patterns on the paths inside the
package); the format of a file follows from its name (extract.py). Licenses are read from each package's
copyright file when the corpus is built and recorded in the manifest; the main ones, for reference:

    linux-doc-6.1           the Linux kernel's Documentation/ (reStructuredText)   GPL-2
    python3.11-doc          the Python 3.11 documentation (reStructuredText)        PSF-2 (and others)
    perl-doc                Perl's manual (POD)                                     GPL-1+ or Artistic
    postgresql-doc-15       the PostgreSQL 15 manual (HTML)                         PostgreSQL
    python-django-doc       the Django documentation (reStructuredText)             BSD-3-clause
    sqlite3-doc             the SQLite documentation (HTML)                         public domain
    gimp-help-en            the GIMP user manual (HTML)                             GFDL-1.2+ / GPL
    lilypond-doc-html       the LilyPond manuals (HTML, English pages)              GFDL-1.3+
    rust-doc                the Rust books: the book, reference, nomicon, ... (HTML) MIT or Apache-2.0
    git-doc, vim-doc, zsh-doc, gnuplot-doc, bash-doc, nodejs-doc, manpages, manpages-dev, debian-reference-en,
    debian-handbook (en-US), debian-policy, developers-reference, maint-guide, gnu-standards, jargon-text,
    libreoffice-help-en-us, kicad-doc-en: manuals and references under GPL, GFDL, MIT, BSD, MPL-2.0 and
    public-domain terms (see the manifest).

The package versions are bookworm's at the time of writing; the builder uses whatever versions it is given
and records them (with each .deb's sha256), so a rebuild from the same files is byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    package: str
    include: tuple[str, ...]  # fnmatch patterns on paths inside the package ('*' also crosses '/')
    exclude: tuple[str, ...] = ()


DOC = "usr/share/doc"
RUST_BOOKS = (
    "book",
    "reference",
    "nomicon",
    "rust-by-example",
    "edition-guide",
    "cargo",
    "rustc",
    "embedded-book",
)
LILYPOND_MANUALS = (
    "learning",
    "notation",
    "usage",
    "essay",
    "extending",
    "music-glossary",
    "contributor",
    "changes",
)


def _sphinx_extras(package: str) -> tuple[str, ...]:
    """A Sphinx site's pages that are not prose: highlighted source code, the search and index pages."""
    return tuple(
        f"{DOC}/{package}/html/{p}"
        for p in ("_modules/*", "_sources/*", "genindex*", "search.html", "py-modindex.html")
    )


SOURCES: tuple[Source, ...] = (
    Source(
        "linux-doc-6.1",
        (f"{DOC}/linux-doc-6.1/Documentation/*.rst.gz", f"{DOC}/linux-doc-6.1/Documentation/*.txt.gz"),
        (f"{DOC}/linux-doc-6.1/Documentation/translations/*",),
    ),
    Source("python3.11-doc", (f"{DOC}/python3.11/html/_sources/*.rst.txt",)),
    Source("perl-doc", ("usr/share/perl/*/pod/*.pod",)),
    Source("postgresql-doc-15", (f"{DOC}/postgresql-doc-15/html/*.html",)),
    Source(
        "python-django-doc",
        (f"{DOC}/python-django-doc/html/*.html",),
        (f"{DOC}/python-django-doc/html/_modules/*",),
    ),
    Source("sqlite3-doc", (f"{DOC}/sqlite3/*.html",)),
    Source("gimp-help-en", ("usr/share/gimp/2.0/help/en/*.html",)),
    Source(
        "lilypond-doc-html",
        tuple(f"{DOC}/lilypond/html/Documentation/{m}/*.html" for m in LILYPOND_MANUALS),
        (f"{DOC}/lilypond/html/Documentation/*.??.html",),  # translated pages: name.<lang>.html
    ),
    Source(
        "rust-doc",
        tuple(f"{DOC}/rust-doc/html/{b}/*.html" for b in RUST_BOOKS),
        (f"{DOC}/rust-doc/html/*/print.html",),
    ),
    Source("git-doc", (f"{DOC}/git-doc/*.txt",)),
    Source("zsh-doc", (f"{DOC}/zsh-common/html/*.html",)),
    Source("gnuplot-doc", (f"{DOC}/gnuplot/htmldocs/*.html",)),
    Source("bash-doc", (f"{DOC}/bash/bashref.html",)),
    Source("nodejs-doc", (f"{DOC}/nodejs/api/*.md.gz",)),
    Source("manpages", ("usr/share/man/man*/*.gz",)),
    Source("manpages-dev", ("usr/share/man/man*/*.gz",)),
    Source("debian-reference-en", ("usr/share/debian-reference/*.en.html",)),
    Source("debian-handbook", (f"{DOC}/debian-handbook/html/en-US/*.html",)),
    Source("debian-policy", (f"{DOC}/debian-policy/policy.html/_sources/*.rst.txt",)),
    Source("developers-reference", ("usr/share/developers-reference/_sources/*.txt",)),
    Source("maint-guide", (f"{DOC}/maint-guide/html/*.en.html",)),
    Source("gnu-standards", (f"{DOC}/gnu-standards/*.text.gz",)),
    Source("jargon-text", (f"{DOC}/jargon-text/jargon.txt.gz",)),
    Source("libreoffice-help-en-us", ("usr/share/libreoffice/help/en-US/*.html",)),
    Source("kicad-doc-en", (f"{DOC}/kicad/help/en/*.html",)),
    Source("erlang-doc", (f"{DOC}/erlang-doc/*.html",), (f"{DOC}/erlang-doc/*/java/*",)),
    *(
        Source(
            f"python-{name}-doc",
            (f"{DOC}/python-{name}-doc/html/*.html",),
            _sphinx_extras(f"python-{name}-doc"),
        )
        for name in ("pandas", "scipy", "statsmodels", "astropy", "sklearn")
    ),
    Source(
        "openjdk-17-doc",
        (f"{DOC}/openjdk-17-jre-headless/api/*.html",),
        (f"{DOC}/openjdk-17-jre-headless/api/*/class-use/*", "*-tree.html", "*/index-files/*", "*/legal/*"),
    ),
    Source("ghc-doc", (f"{DOC}/ghc-doc/html/*.html",), (f"{DOC}/ghc-doc/html/*/src/*",)),
    Source("apache2-doc", (f"{DOC}/apache2-doc/manual/en/*.html",)),
    Source("cmake-doc", (f"{DOC}/cmake-data/html/_sources/*.txt",)),
    Source("sphinx-doc", (f"{DOC}/sphinx-doc/html/_sources/*.txt",)),
    Source("octave-doc", (f"{DOC}/octave/octave.html/*.html",)),
    Source("libssl-doc", ("usr/share/man/man*/*.gz",)),
    Source("bind9-doc", (f"{DOC}/bind9-doc/arm/*.html",)),
    Source("maxima-doc", (f"{DOC}/maxima-doc/html/*.html",)),
)
