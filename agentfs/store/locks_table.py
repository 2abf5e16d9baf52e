"""The lock table: granted locks, queued requests, and the token counter.

Every daemon of a workspace and the CLI share these rows, so they are the
single source of truth for who holds what. `lock_meta` holds the fencing
token counter (never reset, so a token is never reused, even after a
restart) and a generation number that every change of `locks` or
`lock_intents` bumps: readers compare it to skip reloading the table when
only other tables (the audit log) changed.

Callers run write functions inside `immediate(conn)`, so that the check and
the grant happen under one write lock and two daemons cannot both grant
conflicting locks.
"""

from __future__ import annotations

import sqlite3

from agentfs.store.db import register_schema

register_schema("locks", """
CREATE TABLE IF NOT EXISTS locks (
    path        TEXT    NOT NULL,
    agent       TEXT    NOT NULL,
    mode        TEXT    NOT NULL CHECK (mode IN ('shared', 'exclusive')),
    session_id  INTEGER,
    token       INTEGER NOT NULL,
    acquired_ns INTEGER NOT NULL,
    expires_ns  INTEGER NOT NULL,
    PRIMARY KEY (path, agent)
);
CREATE TABLE IF NOT EXISTS lock_intents (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    path        TEXT    NOT NULL,
    agent       TEXT    NOT NULL,
    mode        TEXT    NOT NULL CHECK (mode IN ('shared', 'exclusive')),
    expires_ns  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS lock_meta (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    next_token  INTEGER NOT NULL,
    generation  INTEGER NOT NULL
);
INSERT OR IGNORE INTO lock_meta (id, next_token, generation) VALUES (1, 1, 0);
""")

# (path, agent, mode, session_id, token, acquired_ns, expires_ns)
LockRow = tuple[str, str, str, "int | None", int, int, int]
# (id, path, agent, mode, expires_ns)
IntentRow = tuple[int, str, str, str, int]

_LOCK_COLS = "path, agent, mode, session_id, token, acquired_ns, expires_ns"


def data_version(conn: sqlite3.Connection) -> int:
    """Changes whenever another connection committed to the database."""
    return conn.execute("PRAGMA data_version").fetchone()[0]


def generation(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT generation FROM lock_meta WHERE id = 1").fetchone()[0]


def load(conn: sqlite3.Connection) -> tuple[int, list[LockRow], list[IntentRow]]:
    """The generation, all lock rows and all intent rows, read in one transaction."""
    conn.execute("BEGIN")
    try:
        gen = generation(conn)
        rows = conn.execute(f"SELECT {_LOCK_COLS} FROM locks").fetchall()
        intents = conn.execute(
            "SELECT id, path, agent, mode, expires_ns FROM lock_intents").fetchall()
    finally:
        conn.execute("COMMIT")
    return gen, rows, intents


def all_locks(conn: sqlite3.Connection) -> list[LockRow]:
    return conn.execute(f"SELECT {_LOCK_COLS} FROM locks ORDER BY path, agent").fetchall()


def bump_generation(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE lock_meta SET generation = generation + 1 WHERE id = 1")


def next_token(conn: sqlite3.Connection) -> int:
    """Take the next fencing token; call inside `immediate`."""
    token = conn.execute("SELECT next_token FROM lock_meta WHERE id = 1").fetchone()[0]
    conn.execute("UPDATE lock_meta SET next_token = next_token + 1 WHERE id = 1")
    return token


def upsert_lock(conn: sqlite3.Connection, row: LockRow) -> None:
    conn.execute(f"INSERT OR REPLACE INTO locks ({_LOCK_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)", row)


def delete_lock(conn: sqlite3.Connection, path: str, agent: str) -> None:
    conn.execute("DELETE FROM locks WHERE path = ? AND agent = ?", (path, agent))


def locks_at(conn: sqlite3.Connection, path: str) -> list[LockRow]:
    return conn.execute(f"SELECT {_LOCK_COLS} FROM locks WHERE path = ? ORDER BY agent",
                        (path,)).fetchall()


def locks_under(conn: sqlite3.Connection, path: str) -> list[LockRow]:
    """Locks on `path` and strictly below it (a key range, so '%' and '_' in names are literal)."""
    if path == "/":
        return all_locks(conn)
    return conn.execute(
        f"SELECT {_LOCK_COLS} FROM locks WHERE path = ? OR (path > ? AND path < ?)",
        (path, path + "/", path + "0")).fetchall()


def locks_related(conn: sqlite3.Connection, path: str) -> list[LockRow]:
    """Locks on `path`, on its ancestors and below it: all a grant on `path` must respect.

    The subtree is a range scan on the primary key: every path below '/a' sorts
    between '/a/' and '/a0' ('0' follows '/' in byte order).
    """
    if path == "/":
        return all_locks(conn)
    parents = ["/"]
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        parents.append("/" + "/".join(parts[:i]))
    marks = ", ".join("?" * len(parents))
    return conn.execute(
        f"SELECT {_LOCK_COLS} FROM locks WHERE path IN ({marks}) OR (path > ? AND path < ?)",
        (*parents, path + "/", path + "0")).fetchall()


def add_intent(conn: sqlite3.Connection, path: str, agent: str, mode: str, expires_ns: int) -> int:
    cur = conn.execute("INSERT INTO lock_intents (path, agent, mode, expires_ns) VALUES (?, ?, ?, ?)",
                       (path, agent, mode, expires_ns))
    return int(cur.lastrowid)


def extend_intent(conn: sqlite3.Connection, intent_id: int, expires_ns: int) -> None:
    conn.execute("UPDATE lock_intents SET expires_ns = max(expires_ns, ?) WHERE id = ?",
                 (expires_ns, intent_id))


def delete_intent(conn: sqlite3.Connection, intent_id: int) -> None:
    conn.execute("DELETE FROM lock_intents WHERE id = ?", (intent_id,))


def intents(conn: sqlite3.Connection) -> list[IntentRow]:
    return conn.execute("SELECT id, path, agent, mode, expires_ns FROM lock_intents ORDER BY id").fetchall()


def delete_expired_intents(conn: sqlite3.Connection, now_ns: int) -> int:
    return conn.execute("DELETE FROM lock_intents WHERE expires_ns <= ?", (now_ns,)).rowcount
