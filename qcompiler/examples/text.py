"""Real English sentences, offline, from Debian's ``fortunes`` package.

MiniLM needs real text to calibrate on and to evaluate against, and the machines that run
qcompiler may have no network. ``apt-get install fortunes`` puts ~15k quotes, jokes and verses in
``/usr/share/games/fortunes/<category>`` (records separated by lines holding only ``%``); this
module turns them into clean, deduplicated sentences (the recipe of shared/MODELS.md §3) and splits
them into disjoint calibration and evaluation sets by a stable hash, so that the same sentence can
never be used for both, whatever ``n`` a caller asks for.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from qcompiler.errors import MissingDependencyError, QCompilerError

FORTUNES_DIR = Path("/usr/share/games/fortunes")

# Index files, UTF-8 symlinks to the same text, and the ASCII-drawing categories.
_SKIPPED_SUFFIXES = frozenset({".dat", ".u8"})
_SKIPPED_CATEGORIES = frozenset({"art", "ascii-art"})

_SENTENCE_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z])")
_SENTENCE_END = re.compile(r"[.!?][\"')]?$")
_MIN_CHARS, _MAX_CHARS = 20, 300
_MIN_WORDS = 4
_MIN_LETTER_FRACTION = 0.7

# sha1(sentence) mod 10 picks the set: buckets 0-1 calibrate (~20 %), 2-9 evaluate (~80 %).
_HASH_BUCKETS = 10
_CALIBRATION_BUCKETS = frozenset({0, 1})


def fortune_sentences(directory: Path = FORTUNES_DIR) -> list[str]:
    """All clean sentences from the fortunes in ``directory``, in a deterministic order.

    Categories are read in sorted file-name order and sentences kept in order of first
    appearance; the result is computed once per directory and cached.
    """
    return list(_sentences(directory))


def calibration_sentences(n: int | None = None, directory: Path = FORTUNES_DIR) -> list[str]:
    """The first ``n`` (default: all) sentences of the calibration set."""
    return _take(_split(directory, calibration=True), n, "calibration")


def evaluation_sentences(n: int | None = None, directory: Path = FORTUNES_DIR) -> list[str]:
    """The first ``n`` (default: all) sentences of the evaluation set, disjoint from calibration."""
    return _take(_split(directory, calibration=False), n, "evaluation")


def _is_calibration(sentence: str) -> bool:
    """Whether ``sentence`` belongs to the calibration set (sha1 of its UTF-8 bytes, mod 10)."""
    digest = hashlib.sha1(sentence.encode("utf-8")).digest()
    return int.from_bytes(digest, "big") % _HASH_BUCKETS in _CALIBRATION_BUCKETS


def _take(sentences: tuple[str, ...], n: int | None, which: str) -> list[str]:
    """The first ``n`` sentences, or a clear error when there are not that many."""
    if n is None:
        return list(sentences)
    if not 0 <= n <= len(sentences):
        raise QCompilerError(f"asked for {n} {which} sentences; the fortunes give {len(sentences)}")
    return list(sentences[:n])


@functools.lru_cache(maxsize=8)
def _split(directory: Path, *, calibration: bool) -> tuple[str, ...]:
    """One side of the hash split, in the order of :func:`fortune_sentences`."""
    return tuple(s for s in _sentences(directory) if _is_calibration(s) == calibration)


@functools.lru_cache(maxsize=4)
def _sentences(directory: Path) -> tuple[str, ...]:
    """Read, clean, filter and deduplicate (case-insensitively) every category's sentences."""
    seen: set[str] = set()
    kept: list[str] = []
    for path in _category_files(directory):
        text = path.read_bytes().decode("utf-8", errors="replace")
        for record in _records(text.splitlines()):
            for sentence in _SENTENCE_BOUNDARY.split(_record_text(record)):
                key = sentence.lower()
                if key not in seen and _is_clean_sentence(sentence):
                    seen.add(key)
                    kept.append(sentence)
    return tuple(kept)


def _category_files(directory: Path) -> list[Path]:
    """The category text files in sorted order; missing ones mean the package is absent."""
    files = (
        sorted(
            path
            for path in directory.iterdir()
            if path.is_file()
            and path.suffix not in _SKIPPED_SUFFIXES
            and path.name not in _SKIPPED_CATEGORIES
        )
        if directory.is_dir()
        else []
    )
    if not files:
        raise MissingDependencyError(
            f"no fortunes found in {directory}: install them with "
            "`apt-get install fortunes` (Debian/Ubuntu)"
        )
    return files


def _records(lines: Iterable[str]) -> Iterator[list[str]]:
    """Group a fortune file's lines into records (a line holding only ``%`` ends one)."""
    record: list[str] = []
    for line in lines:
        if line == "%":
            yield record
            record = []
        else:
            record.append(line)
    yield record


def _record_text(lines: list[str]) -> str:
    """One record as one line: attribution lines (``-- Author``) dropped, whitespace collapsed."""
    kept = (line for line in lines if not line.lstrip().startswith("--"))
    return " ".join(" ".join(kept).split())


def _is_clean_sentence(sentence: str) -> bool:
    """The MODELS.md §3 filter: length, words, ASCII, capitalised, punctuated, mostly letters."""
    return (
        _MIN_CHARS <= len(sentence) <= _MAX_CHARS
        and len(sentence.split()) >= _MIN_WORDS
        and sentence.isascii()
        and (sentence[0].isupper() or sentence[0] in "\"'")
        and _SENTENCE_END.search(sentence) is not None
        and sum(c.isalpha() for c in sentence) >= _MIN_LETTER_FRACTION * len(sentence)
    )
