"""The audit log tables: the hash-chained records, the write handles in flight,
and where the archived part of the chain ends.

Several daemons of one workspace append to the same table, so every append
runs in one `BEGIN IMMEDIATE` transaction that reads the head, inserts and
commits: the database lock serialises writers across processes. The chain
arithmetic is passed in (`chain`), so this module holds SQL only.

Paths are policy strings that may carry surrogate escapes (names that are not
UTF-8); SQLite cannot store those as TEXT, so such a path is stored as the
raw bytes (a BLOB in the same column) and decoded back on read.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from agentfs.store.db import immediate, register_schema

register_schema("audit_log", """
CREATE TABLE IF NOT EXISTS audit_log (
    seq       INTEGER PRIMARY KEY,
    ts_ns     INTEGER NOT NULL,
    agent     TEXT    NOT NULL,
    uid       INTEGER NOT NULL,
    pid       INTEGER NOT NULL,
    op        TEXT    NOT NULL,
    path      TEXT    NOT NULL,
    new_path  TEXT,
    result    TEXT    NOT NULL,
    details   TEXT,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_ts ON audit_log(ts_ns);
CREATE INDEX IF NOT EXISTS audit_log_agent ON audit_log(agent, seq);
-- An index on path served no query (path filters are GLOBs over path and
-- new_path, which SQLite cannot answer from it) and was the commit's
-- dearest part: each insert lands at a random place in it (on rm -rf, 60 %
-- of the commit helper's CPU time). Workspaces made before lose it.
DROP INDEX IF EXISTS audit_log_path;
CREATE TABLE IF NOT EXISTS audit_inflight (
    daemon_id  TEXT    NOT NULL,
    handle_id  INTEGER NOT NULL,
    daemon_pid INTEGER NOT NULL,
    daemon_start INTEGER NOT NULL,
    open_seq   INTEGER NOT NULL,
    agent      TEXT    NOT NULL,
    uid        INTEGER NOT NULL,
    pid        INTEGER NOT NULL,
    path       TEXT    NOT NULL,
    PRIMARY KEY (daemon_id, handle_id)
);
CREATE TABLE IF NOT EXISTS audit_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
""")

COLUMNS = ("seq", "ts_ns", "agent", "uid", "pid", "op", "path", "new_path",
           "result", "details", "prev_hash", "hash")
_SELECT = "SELECT " + ", ".join(COLUMNS) + " FROM audit_log"


def enc_path(p: str | None) -> str | bytes | None:
    """A path as SQLite can store it: TEXT when it is UTF-8, else its bytes."""
    if p is None:
        return None
    try:
        p.encode("utf-8")
        return p
    except UnicodeEncodeError:
        return os.fsencode(p)


def dec_path(v: str | bytes | None) -> str | None:
    if isinstance(v, bytes):
        return os.fsdecode(v)
    return v


@dataclass(slots=True)
class NewRecord:
    """A record before the chain gives it a seq and a hash."""

    ts_ns: int
    agent: str
    uid: int
    pid: int
    op: str
    path: str
    new_path: str | None
    result: str
    details: str | None


@dataclass
class InflightAdd:
    """A write handle to remember once its open-w record (the batch index) has a seq."""

    index: int
    daemon_id: str
    handle_id: int
    daemon_pid: int
    daemon_start: int


ChainFn = Callable[[str, int, NewRecord], str]


def _head(conn: sqlite3.Connection) -> tuple[int, str] | None:
    row = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    if row:
        return int(row[0]), row[1]
    meta = dict(conn.execute(
        "SELECT key, value FROM audit_meta WHERE key IN ('archived_seq', 'archived_hash')"))
    if "archived_seq" in meta:
        return int(meta["archived_seq"]), meta["archived_hash"]
    return None


def read_head(conn: sqlite3.Connection) -> tuple[int, str] | None:
    """(seq, hash) of the newest record, archived or live; None for an empty log."""
    return _head(conn)


def _insert(conn: sqlite3.Connection, records: list[NewRecord], genesis: str,
            chain: ChainFn) -> list[tuple[int, str]]:
    """Chain and insert `records` after the head; the caller holds BEGIN IMMEDIATE."""
    head = _head(conn)
    seq, prev = head if head else (0, genesis)
    out: list[tuple[int, str]] = []
    rows = []
    for r in records:
        seq += 1
        h = chain(prev, seq, r)
        rows.append((seq, r.ts_ns, r.agent, r.uid, r.pid, r.op, enc_path(r.path),
                     enc_path(r.new_path), r.result, r.details, prev, h))
        out.append((seq, h))
        prev = h
    _insert_rows(conn, rows)
    return out


# Rows go in as multi-row INSERTs: executemany steps SQLite once per row,
# and each step hands the GIL to the FUSE loop's thread and back, which
# stalls the loop behind the writer thread (~2 % of rm -rf). Statement sizes
# are powers of two, so a handful stay prepared.
_MAX_ROWS = 256
_ROW = "(" + ",".join("?" * len(COLUMNS)) + ")"


@functools.lru_cache(maxsize=None)
def _insert_sql(n: int) -> str:
    return "INSERT INTO audit_log (" + ", ".join(COLUMNS) + ") VALUES " + ",".join([_ROW] * n)


def _insert_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    i = 0
    while i < len(rows):
        n = min(_MAX_ROWS, 1 << ((len(rows) - i).bit_length() - 1))
        conn.execute(_insert_sql(n), [v for row in rows[i:i + n] for v in row])
        i += n


def _apply(conn: sqlite3.Connection, records: list[NewRecord], genesis: str, chain: ChainFn,
           inflight_add: Iterable[InflightAdd], inflight_del: Iterable[tuple[str, int]],
           journal_mark: tuple[str, int] | None) -> list[tuple[int, str]]:
    out = _insert(conn, records, genesis, chain)
    for a in inflight_add:
        r = records[a.index]
        conn.execute(
            "INSERT OR REPLACE INTO audit_inflight (daemon_id, handle_id, daemon_pid, daemon_start,"
            " open_seq, agent, uid, pid, path) VALUES (?,?,?,?,?,?,?,?,?)",
            (a.daemon_id, a.handle_id, a.daemon_pid, a.daemon_start, out[a.index][0],
             r.agent, r.uid, r.pid, enc_path(r.path)))
    dels = list(inflight_del)
    if dels:
        conn.executemany("DELETE FROM audit_inflight WHERE daemon_id = ? AND handle_id = ?", dels)
    if journal_mark is not None:
        conn.execute("INSERT OR REPLACE INTO audit_meta (key, value) VALUES (?, ?)",
                     ("journal:" + journal_mark[0], str(journal_mark[1])))
    return out


def append(conn: sqlite3.Connection, records: list[NewRecord], genesis: str, chain: ChainFn,
           inflight_add: Iterable[InflightAdd] = (),
           inflight_del: Iterable[tuple[str, int]] = (),
           journal_mark: tuple[str, int] | None = None) -> list[tuple[int, str]]:
    """Append `records` as one transaction; returns their (seq, hash) in order.

    The in-flight changes ride in the same transaction, so an open-w record
    and its in-flight row (or a write record and its removal) are atomic;
    so does `journal_mark` (journal key, last entry number now applied).
    """
    with immediate(conn):
        return _apply(conn, records, genesis, chain, inflight_add, inflight_del, journal_mark)


def journal_applied(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT value FROM audit_meta WHERE key = ?", ("journal:" + key,)).fetchone()
    return int(row[0]) if row else 0


def replay_journal(conn: sqlite3.Connection, key: str,
                   entries: list[tuple[int, NewRecord, InflightAdd | None, tuple[str, int] | None]],
                   genesis: str, chain: ChainFn) -> int:
    """Append the entries of a dead daemon's journal that its writer never committed.

    Entries are (n, record, in-flight add with index 0, in-flight removal).
    One transaction reads how far the journal was applied and moves the
    mark, so two daemons replaying the same journal append each entry once.
    """
    with immediate(conn):
        done = journal_applied(conn, key)
        todo = [e for e in entries if e[0] > done]
        records = [e[1] for e in todo]
        adds = [InflightAdd(i, a.daemon_id, a.handle_id, a.daemon_pid, a.daemon_start)
                for i, (_n, _r, a, _d) in enumerate(todo) if a is not None]
        dels = [d for (_n, _r, _a, d) in todo if d is not None]
        if todo:
            _apply(conn, records, genesis, chain, adds, dels, (key, todo[-1][0]))
        return len(todo)


def forget_journal(conn: sqlite3.Connection, key: str) -> None:
    """Drop the applied-mark of a journal that no longer exists."""
    conn.execute("DELETE FROM audit_meta WHERE key = ?", ("journal:" + key,))


def recover_inflight(conn: sqlite3.Connection, is_dead: Callable[[dict[str, Any]], bool],
                     record_for: Callable[[dict[str, Any]], NewRecord], genesis: str,
                     chain: ChainFn) -> int:
    """Turn the in-flight rows of dead daemons into records, in one transaction.

    One transaction, so that two daemons starting together record each
    interrupted handle once.
    """
    with immediate(conn):
        dead = [r for r in inflight(conn) if is_dead(r)]
        if dead:
            _insert(conn, [record_for(r) for r in dead], genesis, chain)
            conn.executemany("DELETE FROM audit_inflight WHERE daemon_id = ? AND handle_id = ?",
                             [(r["daemon_id"], r["handle_id"]) for r in dead])
        return len(dead)


def inflight(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every write handle some daemon holds open (or held when it died)."""
    cur = conn.execute("SELECT daemon_id, handle_id, daemon_pid, daemon_start, open_seq, agent,"
                       " uid, pid, path FROM audit_inflight ORDER BY open_seq")
    names = [d[0] for d in cur.description]
    out = []
    for row in cur:
        d = dict(zip(names, row))
        d["path"] = dec_path(d["path"])
        out.append(d)
    return out


def _row(row: tuple) -> dict[str, Any]:
    d = dict(zip(COLUMNS, row))
    d["path"] = dec_path(d["path"])
    d["new_path"] = dec_path(d["new_path"])
    return d


def select(conn: sqlite3.Connection, after_seq: int = 0, *, agent: str | None = None,
           ops: list[str] | None = None, path_glob: str | None = None,
           path_prefix: str | None = None, since_ns: int | None = None,
           until_ns: int | None = None, limit: int = 1000, newest: bool = False) -> list[dict[str, Any]]:
    """One page of records with seq > after_seq matching the filters, in seq order.

    `newest` takes the last `limit` matches instead of the first (still
    returned oldest first), for "show me the latest N".
    """
    where, args = ["seq > ?"], [after_seq]
    if agent is not None:
        where.append("agent = ?")
        args.append(agent)
    if ops:
        where.append("op IN (%s)" % ",".join("?" * len(ops)))
        args.extend(ops)
    if path_glob is not None:
        where.append("(CAST(path AS TEXT) GLOB ? OR CAST(new_path AS TEXT) GLOB ?)")
        args += [enc_path(path_glob), enc_path(path_glob)]
    if path_prefix is not None:
        under = enc_path(_glob_escape(path_prefix.rstrip("/")) + "/*")
        where.append("(path = ? OR new_path = ? OR CAST(path AS TEXT) GLOB ?"
                     " OR CAST(new_path AS TEXT) GLOB ?)")
        args += [enc_path(path_prefix), enc_path(path_prefix), under, under]
    if since_ns is not None:
        where.append("ts_ns >= ?")
        args.append(since_ns)
    if until_ns is not None:
        where.append("ts_ns <= ?")
        args.append(until_ns)
    order = "DESC" if newest else "ASC"
    rows = conn.execute(f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY seq {order} LIMIT ?",
                        (*args, limit)).fetchall()
    if newest:
        rows.reverse()
    return [_row(r) for r in rows]


def _glob_escape(s: str) -> str:
    """A literal string inside a GLOB pattern: each special character in brackets."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in s)


def iter_all(conn: sqlite3.Connection, after_seq: int = 0, page: int = 5000) -> Iterator[dict[str, Any]]:
    """Every live record in seq order, a page at a time (no long read transaction)."""
    while True:
        rows = conn.execute(f"{_SELECT} WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, page)).fetchall()
        if not rows:
            return
        for r in rows:
            yield _row(r)
        after_seq = rows[-1][0]


def live_bounds(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """(first seq, last seq, count) of the live table; (0, 0, 0) when empty."""
    row = conn.execute("SELECT MIN(seq), MAX(seq), COUNT(*) FROM audit_log").fetchone()
    return (row[0] or 0, row[1] or 0, row[2] or 0)


def archive_cutoff(conn: sqlite3.Connection, keep_records: int, before_ns: int | None) -> int:
    """The highest seq that retention moves out of the live table (0: nothing)."""
    cut = 0
    if keep_records > 0:
        row = conn.execute("SELECT seq FROM audit_log ORDER BY seq DESC LIMIT 1 OFFSET ?",
                           (keep_records,)).fetchone()
        if row:
            cut = int(row[0])
    if before_ns is not None:
        row = conn.execute("SELECT MAX(seq) FROM audit_log WHERE ts_ns < ?", (before_ns,)).fetchone()
        if row and row[0]:
            cut = max(cut, int(row[0]))
    return cut


def archived_meta(conn: sqlite3.Connection) -> tuple[int, str] | None:
    meta = dict(conn.execute(
        "SELECT key, value FROM audit_meta WHERE key IN ('archived_seq', 'archived_hash')"))
    if "archived_seq" in meta:
        return int(meta["archived_seq"]), meta["archived_hash"]
    return None


def archive_range(conn: sqlite3.Connection, upto_seq: int,
                  write_segment: Callable[[list[dict[str, Any]]], None]) -> int:
    """Move records up to `upto_seq` out of the live table through `write_segment`.

    Runs under BEGIN IMMEDIATE so that no daemon appends meanwhile; the
    segment is written (and synced) before the rows are deleted, so a crash
    leaves the records in both places at worst, never in neither.
    Returns how many records moved.
    """
    with immediate(conn):
        rows = [_row(r) for r in conn.execute(f"{_SELECT} WHERE seq <= ? ORDER BY seq", (upto_seq,))]
        if not rows:
            return 0
        write_segment(rows)
        conn.execute("DELETE FROM audit_log WHERE seq <= ?", (rows[-1]["seq"],))
        conn.executemany("INSERT OR REPLACE INTO audit_meta (key, value) VALUES (?, ?)",
                         [("archived_seq", str(rows[-1]["seq"])), ("archived_hash", rows[-1]["hash"])])
        return len(rows)




def recent_agents(conn: sqlite3.Connection, since_ns: int) -> list[tuple[str, int, int]]:
    """(agent, records, newest ts_ns) of every agent with records since `since_ns`, latest first."""
    return [(a, int(n), int(ts)) for a, n, ts in conn.execute(
        "SELECT agent, COUNT(*), MAX(ts_ns) FROM audit_log WHERE ts_ns >= ? GROUP BY agent"
        " ORDER BY MAX(ts_ns) DESC", (since_ns,))]
