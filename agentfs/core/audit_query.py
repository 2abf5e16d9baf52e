"""Queries over the audit log, which are also its change feed.

The indexer and `agentfs audit --follow` call `iter_records` with the last
seq they saw; archived segments are read transparently, so a reader that
fell behind retention still sees every record once.
"""

from __future__ import annotations

import fnmatch
import json
import sqlite3
from collections import deque
from typing import Any, Iterable, Iterator

from agentfs.core import audit_archive
from agentfs.store import audit_log as store
from agentfs.store import db
from agentfs.workspace import Workspace


def _ops(op: str | Iterable[str] | None) -> list[str] | None:
    if op is None:
        return None
    if isinstance(op, str):
        op = op.split(",")
    out = [o.strip() for o in op if o.strip()]
    return out or None


def _is_glob(p: str) -> bool:
    return any(c in p for c in "*?[")


def _matches(row: dict[str, Any], agent: str | None, ops: list[str] | None, path_glob: str | None,
             since_ns: int | None, until_ns: int | None) -> bool:
    """The filters of `store.select`, in Python, for archived records."""
    if agent is not None and row["agent"] != agent:
        return False
    if ops and row["op"] not in ops:
        return False
    if since_ns is not None and row["ts_ns"] < since_ns:
        return False
    if until_ns is not None and row["ts_ns"] > until_ns:
        return False
    if path_glob is not None:
        paths = [p for p in (row["path"], row["new_path"]) if p is not None]
        if _is_glob(path_glob):
            return any(fnmatch.fnmatchcase(p, path_glob) for p in paths)
        base = path_glob.rstrip("/") or "/"
        return any(p == path_glob or p == base or p.startswith(base.rstrip("/") + "/") for p in paths)
    return True


def _public(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    d = out.get("details")
    out["details"] = json.loads(d) if isinstance(d, str) else d
    return out


def iter_records(ws: Workspace, since_seq: int = 0, *, agent: str | None = None,
                 path_glob: str | None = None, op: str | Iterable[str] | None = None,
                 since_ns: int | None = None, until_ns: int | None = None,
                 limit: int | None = None, newest: bool = False,
                 conn: sqlite3.Connection | None = None) -> Iterator[dict[str, Any]]:
    """Records with seq > since_seq matching every filter given, oldest first.

    This is both the query and the change feed (follow it by passing the last
    seq seen). `path_glob` with * ? [ is a glob over the whole path (`*`
    crosses "/"); without, it is a path and everything below it. A record
    matches on its path or its new_path. `limit` keeps the first N matches,
    or the last N with `newest=True`. Archived records are included.
    `conn` reuses an open state connection (a follower polling often).
    Yields dicts: seq, ts_ns, agent, uid, pid, op, path, new_path, result,
    details (a dict or None), prev_hash, hash.
    """
    ops = _ops(op)
    sql_glob = path_glob if path_glob is not None and _is_glob(path_glob) else None
    sql_prefix = path_glob if path_glob is not None and not _is_glob(path_glob) else None
    if sql_prefix is not None and sql_prefix.rstrip("/") == "":
        sql_prefix = None
    filt = dict(agent=agent, ops=ops, path_glob=sql_glob, path_prefix=sql_prefix,
                since_ns=since_ns, until_ns=until_ns)
    own = conn is None
    if conn is None:
        conn = db.connect(ws)
    try:
        archived = store.archived_meta(conn)
        use_archive = archived is not None and since_seq < archived[0]
        if newest and limit is not None:
            rows = store.select(conn, since_seq, limit=limit, newest=True, **filt)
            if len(rows) < limit and use_archive:
                older: deque[dict[str, Any]] = deque(maxlen=limit - len(rows))
                first_live = rows[0]["seq"] if rows else None
                for row in audit_archive.iter_archived(ws, since_seq):
                    if first_live is not None and row["seq"] >= first_live:
                        break
                    if _matches(row, agent, ops, path_glob, since_ns, until_ns):
                        older.append(row)
                rows = list(older) + rows
            for row in rows:
                yield _public(row)
            return
        left = limit if limit is not None else -1
        after = since_seq
        if use_archive:
            for row in audit_archive.iter_archived(ws, since_seq):
                after = row["seq"]
                if left == 0:
                    return
                if _matches(row, agent, ops, path_glob, since_ns, until_ns):
                    left -= 1
                    yield _public(row)
            after = max(after, archived[0])
        while left != 0:
            page = 1000 if left < 0 else min(left, 1000)
            rows = store.select(conn, after, limit=page, **filt)
            if not rows:
                return
            for row in rows:
                left -= 1
                yield _public(row)
            after = rows[-1]["seq"]
    finally:
        if own:
            conn.close()
