"""How locks look to agents that only have files: the xattr value and the listing.

`user.agentfs.lock` is read with getfattr and written with setfattr, and
`.agentfs/locks` is read with cat, so these texts are an interface: the
listing can be parsed back (`parse_locks_listing`), which is how a
non-root `agentfs locks --json` works without the state database.
"""

from __future__ import annotations

import math
import time

from agentfs.core.lock_types import Lock, LockMode, iso_utc

LISTING_COLUMNS = ("MODE", "AGENT", "SESSION", "TOKEN", "EXPIRES", "TTL", "PATH")
MAX_TTL = 366 * 24 * 3600.0


def _ttl_left(lock: Lock, now_ns: int) -> int:
    """Whole seconds left, rounded up so that a live lock never shows 0."""
    return max(0, -(-(lock.expires_ns - now_ns) // 1_000_000_000))


def format_lock_xattr(locks: list[Lock], now_ns: int, path: str | None = None) -> bytes:
    """The value of `user.agentfs.lock`: one line per lock, exclusive first.

    With `path`, a lock held on an ancestor directory says so with `on=DIR`.
    No locks gives b"" (the FUSE layer answers ENODATA instead).
    """
    lines = []
    for lock in sorted(locks, key=lambda lk: (lk.mode is not LockMode.EXCLUSIVE, lk.path, lk.agent)):
        line = (f"{lock.mode.value} holder={lock.agent} expires={iso_utc(lock.expires_ns)} "
                f"ttl={_ttl_left(lock, now_ns)} token={lock.token}")
        if lock.session_id is not None:
            line += f" session={lock.session_id}"
        if path is not None and lock.path != path:
            line += f" on={lock.path}"
        lines.append(line)
    return "\n".join(lines).encode()


def parse_lock_xattr_lines(text: str) -> list[dict]:
    """The lines `format_lock_xattr` writes, as dicts (the keys of `Lock.to_json`, in part; `on` if given)."""
    out = []
    for line in text.splitlines():
        line, _, on = line.partition(" on=")  # the last field, and a path may hold spaces
        mode, *pairs = line.split()
        entry: dict = {"mode": mode}
        for pair in pairs:
            key, _, value = pair.partition("=")
            key = {"holder": "agent", "session": "session_id"}.get(key, key)
            entry[key] = int(value) if key in ("ttl", "token", "session_id") and value.isdigit() else value
        if on:
            entry["on"] = on
        out.append(entry)
    return out


def parse_lock_xattr(value: bytes) -> tuple[LockMode, float | None, bool]:
    """Parse what an agent writes to `user.agentfs.lock`: MODE[;ttl=SECONDS][;force].

    Raises ValueError on anything else (the FUSE layer answers EINVAL).
    """
    try:
        text = bytes(value).rstrip(b"\0").decode("ascii").strip()
    except UnicodeDecodeError as e:
        raise ValueError("a lock value is ASCII: 'exclusive' or 'shared', then ';ttl=S', ';force'") from e
    parts = [p.strip() for p in text.split(";")]
    while parts and parts[-1] == "":
        parts.pop()
    if not parts:
        raise ValueError("empty lock value: write 'exclusive' or 'shared'")
    try:
        mode = LockMode(parts[0].lower())
    except ValueError:
        raise ValueError(f"unknown lock mode {parts[0]!r}: write 'exclusive' or 'shared'") from None
    ttl: float | None = None
    force = False
    seen: set[str] = set()
    for part in parts[1:]:
        key, eq, arg = part.partition("=")
        key = key.strip().lower()
        if key in seen:
            raise ValueError(f"{key!r} given twice in the lock value")
        seen.add(key)
        if key == "ttl" and eq:
            try:
                ttl = float(arg.strip())
            except ValueError:
                raise ValueError(f"ttl must be a number of seconds, not {arg.strip()!r}") from None
            if not (math.isfinite(ttl) and 0 < ttl <= MAX_TTL):
                raise ValueError(f"ttl must be between 0 and {MAX_TTL:.0f} seconds, not {arg.strip()}")
        elif key == "force" and not eq:
            force = True
        else:
            raise ValueError(f"unknown lock option {part!r}: use ';ttl=SECONDS' or ';force'")
    return mode, ttl, force


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace("\n", "\\n")


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append("\n" if text[i + 1] == "n" else text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def format_locks_listing(locks: list[Lock], now_ns: int | None = None) -> str:
    """The plain-text table of `.agentfs/locks` and `agentfs locks`; PATH last so spaces survive."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    rows = [LISTING_COLUMNS] + [
        (lk.mode.value, lk.agent, "-" if lk.session_id is None else str(lk.session_id),
         str(lk.token), iso_utc(lk.expires_ns), str(_ttl_left(lk, now_ns)), _escape(lk.path))
        for lk in sorted(locks, key=lambda lk: (lk.path, lk.agent))
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(LISTING_COLUMNS) - 1)]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1] + "\n" for r in rows)


def parse_locks_listing(text: str) -> list[dict]:
    """Rows of a `format_locks_listing` table as dicts (the keys of `Lock.to_json`, in part)."""
    out = []
    for line in text.splitlines()[1:]:
        if not line.strip():
            continue
        mode, agent, session, token, expires, ttl, path = line.split(None, 6)
        out.append({"path": _unescape(path), "mode": mode, "agent": agent,
                    "session_id": None if session == "-" else int(session),
                    "token": int(token), "expires": expires, "ttl": int(ttl)})
    return out
