"""The vocabulary of locks, shared by the manager and the formats that show them."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator


def iso_utc(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class LockMode(str, enum.Enum):
    SHARED = "shared"
    EXCLUSIVE = "exclusive"


class Access(enum.Enum):
    """What an operation needs from a path."""

    READ = "read"      # open for reading, list
    WRITE = "write"    # write, truncate, setattr, xattr, create in a directory
    DELETE = "delete"  # unlink, rmdir, rename away, rename over


@dataclass(frozen=True)
class Lock:
    """One agent's grant on one path. token 0 marks a queued request, not a grant."""

    path: str
    mode: LockMode
    agent: str
    session_id: int | None
    token: int
    acquired_ns: int
    expires_ns: int

    def alive_at(self, now_ns: int) -> bool:
        return self.expires_ns > now_ns

    def to_json(self, now_ns: int | None = None) -> dict:
        now_ns = time.time_ns() if now_ns is None else now_ns
        return {
            "path": self.path, "mode": self.mode.value, "agent": self.agent,
            "session_id": self.session_id, "token": self.token,
            "acquired": iso_utc(self.acquired_ns), "expires": iso_utc(self.expires_ns),
            "ttl": max(0, -(-(self.expires_ns - now_ns) // 1_000_000_000)),
            "acquired_ns": self.acquired_ns, "expires_ns": self.expires_ns,
        }


class LockConflict(Exception):
    """Another agent's lock (or queued request) forbids what was asked; callers map it to EAGAIN."""

    def __init__(self, lock: Lock):
        what = "queued request" if lock.token == 0 else "lock"
        super().__init__(f"{lock.path} is held by {lock.agent} ({lock.mode.value} {what})")
        self.lock = lock


def normalize(path: str) -> str:
    """The canonical policy path: '/a/b', no trailing slash, no '.', '..' refused."""
    if not path.startswith("/"):
        raise ValueError(f"lock paths are workspace paths starting with '/': {path!r}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"'..' is not allowed in a lock path: {path!r}")
    return "/" + "/".join(parts)


def ancestors(path: str) -> Iterator[str]:
    """path itself, then each parent up to '/'."""
    yield path
    while path != "/":
        cut = path.rfind("/")
        path = path[:cut] or "/"
        yield path


def overlaps(a: str, b: str) -> bool:
    """True when one path is the other or lies below it."""
    if a == b or a == "/" or b == "/":
        return True
    return b.startswith(a + "/") or a.startswith(b + "/")


def modes_conflict(held: LockMode, wanted: LockMode) -> bool:
    return held is LockMode.EXCLUSIVE or wanted is LockMode.EXCLUSIVE


def forbids(lock: Lock, agent: str, access: Access) -> bool:
    """Whether `lock` stops `agent` from `access` (expiry and sessions are checked by callers)."""
    if lock.agent == agent:
        return False
    return lock.mode is LockMode.EXCLUSIVE or access is not Access.READ
