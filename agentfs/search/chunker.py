"""Line-aware chunks sized for a small embedding model.

Chunks hold about 100 words (roughly 130 word-piece tokens; measured best on
SciFact), break preferably at Markdown headings and top-level code
definitions, and overlap their neighbour by a line or two so that a sentence
cut at a boundary is still found. A line longer than a chunk (minified JSON,
one-paragraph abstracts) is cut into overlapping word windows that all carry
that line's number. Each chunk remembers the nearest heading above it, which
goes into the embedded text with the file path, so that "## Retries" still
gives meaning to the paragraph three screens below it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

TARGET_WORDS = 100
MIN_WORDS_BEFORE_BREAK = 30
OVERLAP_WORDS = 20
HARD_MAX_WORDS = 150  # a short heading may join the long line under it

_HEADING = re.compile(r"^(#{1,6})\s+\S")
_DEFINITION = re.compile(
    r"^(?:(?:export|pub(?:\([a-z]+\))?|public|private|static|async|default)\s+)*"
    r"(?:def|class|function|func|fn|impl|struct|enum|interface|trait|type|module|CREATE)\b"
)


@dataclass(frozen=True)
class Chunk:
    start_line: int  # 1-based, inclusive
    end_line: int
    text: str        # the lines themselves: the snippet
    context: str     # path and nearest heading: embedded and keyword-indexed with the text

    @property
    def embed_text(self) -> str:
        return f"{self.context}\n{self.text}"

    @property
    def text_hash(self) -> str:
        """Identity of what gets embedded: equal hashes can share one embedding."""
        return hashlib.sha256(self.embed_text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


@dataclass
class _Piece:
    line: int
    text: str
    words: int
    boundary: bool
    heading: str | None


def _pieces(lines: list[str], kind: str) -> list[_Piece]:
    """Lines as pieces of at most TARGET_WORDS words, marking where a chunk may start fresh."""
    out: list[_Piece] = []
    in_fence = False
    for no, line in enumerate(lines, 1):
        stripped = line.rstrip()
        if stripped.lstrip().startswith("```"):
            in_fence = not in_fence
        heading = None
        boundary = False
        if kind in ("markdown", "text") and not in_fence and _HEADING.match(stripped):
            heading, boundary = stripped.strip(), True
        elif kind == "code" and _DEFINITION.match(stripped):
            boundary = True
        words = stripped.split()
        if len(words) <= TARGET_WORDS:
            out.append(_Piece(no, stripped, len(words), boundary, heading))
            continue
        step = TARGET_WORDS - OVERLAP_WORDS
        for i in range(0, len(words), step):
            part = words[i:i + TARGET_WORDS]
            out.append(_Piece(no, " ".join(part), len(part), boundary and i == 0, heading if i == 0 else None))
            if i + TARGET_WORDS >= len(words):
                break
    return out


def chunk_text(path: str, text: str, kind: str = "text") -> list[Chunk]:
    """Split one file's text into chunks; `path` is the workspace path (/dir/file)."""
    pieces = _pieces(text.splitlines(), kind)
    chunks: list[Chunk] = []
    current: list[_Piece] = []
    heading: str | None = None
    chunk_heading: str | None = None

    def flush() -> None:
        used = [i for i, p in enumerate(current) if p.words]
        if not used:
            return
        body = current[used[0]:used[-1] + 1]
        first = body[0]
        ctx = path if not chunk_heading or first.heading == chunk_heading else f"{path}\n{chunk_heading}"
        chunks.append(Chunk(first.line, body[-1].line, "\n".join(p.text for p in body), ctx))

    for piece in pieces:
        words = sum(p.words for p in current)
        if current and piece.boundary and words >= MIN_WORDS_BEFORE_BREAK:
            flush()
            current = []
        elif current and (words + piece.words > HARD_MAX_WORDS
                          or (words + piece.words > TARGET_WORDS and words >= MIN_WORDS_BEFORE_BREAK)):
            flush()
            current = _overlap(current) if not piece.boundary else []
        if not current:
            chunk_heading = piece.heading or heading
        if piece.heading:
            heading = piece.heading
        current.append(piece)
    flush()
    return chunks


def _overlap(prev: list[_Piece]) -> list[_Piece]:
    """The trailing pieces of a chunk, up to OVERLAP_WORDS words, to start the next one."""
    tail: list[_Piece] = []
    words = 0
    for p in reversed(prev[1:]):
        if words + p.words > OVERLAP_WORDS:
            break
        tail.insert(0, p)
        words += p.words
    return tail
