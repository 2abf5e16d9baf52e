"""Path globs of the policy, compiled once into cheap matchers.

Rights are checked on the FUSE hot path (lookup, getattr), so a glob is
turned at load time into the cheapest test that decides it: a set lookup for
literal paths, a `startswith` for `/literal/prefix/**`, and a regular
expression only for the rest.

Semantics: `*` matches within one path segment, `**` (a whole segment)
matches zero or more segments, `?` one character, `[abc]`/`[!abc]`/`[a-z]`
one character of a class; none of them ever matches `/`. `\\x` is a literal
x. Because `**` may match zero segments, `/research/**` covers the folder
`/research` itself as well as everything inside it; that is what lets an
agent create or delete the folder its rules are about.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

_WILD = set("*?[\\")


class GlobError(ValueError):
    """A glob the policy cannot use; the message says why."""


@dataclass(frozen=True)
class Matcher:
    """A union of literal paths, literal subtrees and one regex."""

    literals: frozenset[str] = frozenset()
    subtrees: tuple[str, ...] = ()  # "/a/b" matches /a/b and below; "" matches everything
    regex: Callable[[str], object] | None = None

    def __call__(self, path: str) -> bool:
        if path in self.literals:
            return True
        for pre in self.subtrees:
            if not pre or path == pre or path.startswith(pre + "/"):
                return True
        return self.regex is not None and self.regex(path) is not None

    @property
    def empty(self) -> bool:
        return not self.literals and not self.subtrees and self.regex is None


@dataclass(frozen=True)
class Glob:
    """One compiled policy glob."""

    text: str
    segments: tuple[str, ...]
    match: Matcher
    # Paths that are directories above something the glob matches (or lie
    # inside a `**` part, where something deeper may match): used for visibility.
    ancestor: Matcher = field(default_factory=Matcher)
    # True when every path below a match also matches (the glob ends in `/**`):
    # a deny rule like that empties the whole subtree.
    subtree: bool = False


def _segment_regex(seg: str, glob: str) -> str:
    """Translate one segment (not `**`) to a regex that never crosses `/`."""
    if "**" in seg:
        raise GlobError(f"bad glob {glob!r}: '**' must be a whole path segment, like /a/**/b")
    out: list[str] = []
    i, n = 0, len(seg)
    while i < n:
        c = seg[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            if i + 1 >= n:
                raise GlobError(f"bad glob {glob!r}: a trailing '\\' escapes nothing")
            i += 1
            out.append(re.escape(seg[i]))
        elif c == "[":
            j = i + 1
            negate = j < n and seg[j] in "!^"
            if negate:
                j += 1
            start = j
            if j < n and seg[j] == "]":
                j += 1
            while j < n and seg[j] != "]":
                j += 1
            if j >= n:
                raise GlobError(f"bad glob {glob!r}: '[' opens a character class that is never closed")
            body = seg[start:j]
            body = body.replace("\\", "\\\\").replace("^", "\\^").replace("[", "\\[").replace("]", "\\]")
            cls = f"[^/{body}]" if negate else f"(?!/)[{body}]"
            try:
                re.compile(cls)
            except re.error as e:
                raise GlobError(f"bad glob {glob!r}: bad character class [{seg[start:j]}]: {e}") from None
            out.append(cls)
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _is_literal(seg: str) -> bool:
    return not (_WILD & set(seg))


def _pattern(segments: tuple[str, ...], glob: str) -> str:
    if not segments:
        return "/"
    parts = []
    for seg in segments:
        parts.append("(?:/.*)?" if seg == "**" else "/" + _segment_regex(seg, glob))
    return "".join(parts)


def _matcher(alternatives: list[tuple[str, ...]], glob: str) -> Matcher:
    """One matcher for the union of several segment lists, cheapest test first."""
    literals: set[str] = set()
    subtrees: list[str] = []
    patterns: list[str] = []
    for segs in alternatives:
        if all(_is_literal(s) for s in segs):
            literals.add("/" + "/".join(segs))
        elif segs and segs[-1] == "**" and all(_is_literal(s) for s in segs[:-1]):
            subtrees.append("/" + "/".join(segs[:-1]) if len(segs) > 1 else "")
        else:
            patterns.append(_pattern(segs, glob))
    regex = None
    if patterns:
        regex = re.compile("|".join(f"(?:{p})" for p in patterns), re.DOTALL).fullmatch
    if "" in subtrees:
        subtrees = [""]
    return Matcher(frozenset(literals), tuple(subtrees), regex)


def compile_glob(text: str) -> Glob:
    """Compile a policy glob or raise GlobError saying what is wrong with it."""
    if not isinstance(text, str) or not text:
        raise GlobError("bad glob: empty path (use /** for everything)")
    if not text.startswith("/"):
        raise GlobError(f"bad glob {text!r}: paths start with '/' (the workspace data root)")
    if "\0" in text:
        raise GlobError(f"bad glob {text!r}: NUL byte")
    if text == "/":
        segments: tuple[str, ...] = ()
    else:
        if text.endswith("/"):
            raise GlobError(f"bad glob {text!r}: no trailing '/' (use {text}** for a folder and its contents)")
        segments = tuple(text[1:].split("/"))
    for seg in segments:
        if seg == "":
            raise GlobError(f"bad glob {text!r}: empty path segment ('//')")
        if seg in (".", ".."):
            raise GlobError(f"bad glob {text!r}: '.' and '..' segments are not allowed")
        if seg != "**":
            _segment_regex(seg, text)  # validates
    match = _matcher([segments], text)
    # Ancestors: every proper prefix up to the first `**`; past a `**`, anything
    # deeper may still lead to a match.
    alts: list[tuple[str, ...]] = []
    for k, seg in enumerate(segments):
        if seg == "**":
            alts.append(segments[: k + 1])
            break
        if k < len(segments) - 1:
            alts.append(segments[: k + 1])
    ancestor = _matcher(alts, text) if alts else Matcher()
    subtree = bool(segments) and segments[-1] == "**"
    return Glob(text, segments, match, ancestor, subtree)
