"""The vocabulary of the policy: rights letters, rules, agents, and the policy error.

Kept apart from parsing and evaluation so that both can share it without
importing each other.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass, field
from typing import Any

from agentfs.core.globs import Glob
from agentfs.errors import AgentfsError

LETTERS = "rwcdl"
AGENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


class PolicyError(AgentfsError):
    """The policy file is invalid; the message is `FILE:LINE: KEY: what is wrong`."""

    def __init__(self, filename: str, line: int, key: str, reason: str) -> None:
        self.filename, self.line, self.key, self.reason = filename, line, key, reason
        where = f"{filename}:{line}"
        super().__init__(f"{where}: {key}: {reason}" if key else f"{where}: {reason}")


class Rights(enum.IntFlag):
    """What an agent may do on a path; str() gives the letters ("rw", or "-" for none)."""

    NONE = 0
    R = 1
    W = 2
    C = 4
    D = 8
    L = 16

    @classmethod
    def parse(cls, letters: str) -> "Rights":
        """Rights from letters like "rwc"; "-" or "" is none. ValueError names a bad letter."""
        value = 0
        for ch in letters:
            if ch == "-":
                continue
            pos = LETTERS.find(ch)
            if pos < 0:
                raise ValueError(f"unknown right {ch!r} (use letters r w c d l)")
            value |= 1 << pos
        return cls(value)

    def __str__(self) -> str:
        v = int(self)
        return "".join(ch for i, ch in enumerate(LETTERS) if v & (1 << i)) or "-"

    def fixed(self) -> str:
        """Letters in fixed positions, "rw---" style."""
        v = int(self)
        return "".join(ch if v & (1 << i) else "-" for i, ch in enumerate(LETTERS))


ALL = int(Rights.R | Rights.W | Rights.C | Rights.D | Rights.L)
_AS_RIGHTS = tuple(Rights(i) for i in range(ALL + 1))  # building an IntFlag costs ~1 µs


@dataclass(frozen=True)
class Rule:
    glob: Glob
    allow: int  # bit set; 0 for a deny rule
    deny: int   # bit set; 0 for an allow rule
    line: int
    index: int

    @property
    def path(self) -> str:
        return self.glob.text

    @functools.cached_property
    def first(self) -> str | None:
        """The literal first segment of the glob ("" for "/"), None if it is a wildcard."""
        segs = self.glob.segments
        if not segs:
            return ""
        return segs[0] if not (set(segs[0]) & set("*?[\\")) else None

    @property
    def kind(self) -> str:
        return "deny" if self.deny else "allow"

    @property
    def letters(self) -> str:
        return str(Rights(self.deny or self.allow))


@dataclass(frozen=True)
class Agent:
    name: str
    uids: frozenset[int]
    rules: tuple[Rule, ...]
    line: int = 0
    implicit: bool = False  # the default agent, named but not defined: no rules
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)

    def bucket(self, seg: str) -> "_Bucket":
        """The rules that can bear on paths whose first segment is `seg`.

        A rule whose glob starts with another literal segment can neither
        match such a path nor lie below it, so the hot path never tries it.
        """
        b = self._buckets.get(seg)
        if b is None:
            rules = tuple(r for r in self.rules if r.first is None or r.first == seg)
            b = _Bucket(tuple(r for r in rules if r.allow), tuple(r for r in rules if r.deny),
                        tuple((r.glob.text, r.allow, r.deny) for r in rules))
            if len(self._buckets) > 4096:
                self._buckets.clear()
            self._buckets[seg] = b
        return b

    @functools.cached_property
    def _buckets(self) -> dict[str, "_Bucket"]:
        return {}


@dataclass(frozen=True)
class _Bucket:
    allow: tuple[Rule, ...]
    deny: tuple[Rule, ...]
    signature: tuple  # equal signatures: equal rights on every path of the bucket


def _first_segment(path: str) -> str:
    i = path.find("/", 1)
    return path[1:] if i < 0 else path[1:i]


