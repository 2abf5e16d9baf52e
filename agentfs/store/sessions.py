"""`agentfs run` sessions: which process tree roots carry which agent.

A row names its root process by pid AND start time (clock ticks since boot,
field 22 of /proc/PID/stat), so that a later process that happens to get
the same pid never inherits the tag. Rows live in the shared state DB so
that every daemon serving the workspace sees the same sessions.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Iterable

from agentfs.store.db import immediate, register_schema

register_schema("sessions", """
CREATE TABLE IF NOT EXISTS sessions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    agent       TEXT    NOT NULL,
    pid         INTEGER NOT NULL,
    start_time  INTEGER NOT NULL,
    uid         INTEGER NOT NULL,
    created_ns  INTEGER NOT NULL,
    ended_ns    INTEGER
);
CREATE INDEX IF NOT EXISTS sessions_live ON sessions(pid) WHERE ended_ns IS NULL;
""")

_COLS = "id, agent, pid, start_time, uid, created_ns, ended_ns"


@dataclass(frozen=True)
class SessionRow:
    id: int
    agent: str
    pid: int
    start_time: int
    uid: int
    created_ns: int
    ended_ns: int | None


def create_session(conn: sqlite3.Connection, agent: str, pid: int, start_time: int, uid: int) -> int:
    """Register a session root; older live rows for the same pid are stale and end now."""
    now = time.time_ns()
    with immediate(conn):
        conn.execute("UPDATE sessions SET ended_ns = ? WHERE pid = ? AND ended_ns IS NULL", (now, pid))
        cur = conn.execute(
            "INSERT INTO sessions (agent, pid, start_time, uid, created_ns) VALUES (?, ?, ?, ?, ?)",
            (agent, pid, start_time, uid, now))
    return int(cur.lastrowid)


def live_sessions(conn: sqlite3.Connection) -> list[SessionRow]:
    """Sessions not yet marked ended (their root may still have died: check start times)."""
    rows = conn.execute(f"SELECT {_COLS} FROM sessions WHERE ended_ns IS NULL").fetchall()
    return [SessionRow(*r) for r in rows]


def get_session(conn: sqlite3.Connection, session_id: int) -> SessionRow | None:
    row = conn.execute(f"SELECT {_COLS} FROM sessions WHERE id = ?", (session_id,)).fetchone()
    return SessionRow(*row) if row else None


def end_sessions(conn: sqlite3.Connection, ids: Iterable[int], ended_ns: int | None = None) -> int:
    """Mark sessions ended; returns how many were still live."""
    ids = list(ids)
    if not ids:
        return 0
    now = ended_ns or time.time_ns()
    n = 0
    with immediate(conn):
        for sid in ids:
            n += conn.execute("UPDATE sessions SET ended_ns = ? WHERE id = ? AND ended_ns IS NULL",
                              (now, sid)).rowcount
    return n


def recent_sessions(conn: sqlite3.Connection, limit: int = 100) -> list[SessionRow]:
    rows = conn.execute(f"SELECT {_COLS} FROM sessions ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [SessionRow(*r) for r in rows]
