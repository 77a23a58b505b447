"""A real English corpus for language modelling, built offline from Debian documentation packages.

`mambalab corpus build --out DIR` downloads the packages named in sources.py with `apt-get download` (or takes
a folder of them with --packages), extracts their prose (extract.py) and writes DIR/corpus.txt with a
manifest (build.py). Pass DIR/corpus.txt to `mambalab compare --corpus` or `mambalab train`.
"""

from mambalab.corpus.build import build_corpus, download_packages
from mambalab.corpus.extract import CorpusError
from mambalab.corpus.sources import SOURCES, Source

__all__ = ["SOURCES", "CorpusError", "Source", "build_corpus", "download_packages"]
