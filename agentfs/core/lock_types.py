"""The vocabulary of locks, shared by the manager and the formats that show them."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from datetime import datetime, timezone


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
