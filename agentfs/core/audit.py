"""The audit log: every change and denial, durable before it is acknowledged.

A FUSE handler awaits `record()` before it replies, so appending must be
cheap and must never block the trio loop. One writer task per daemon takes
everything queued since its last commit and appends it in one transaction
in a worker thread (group commit), then wakes every waiter: under load, one
commit serves many requests. Several daemons of one workspace append to the
same table; `BEGIN IMMEDIATE` serialises them into one chain.

Durability: "process" (default) commits the WAL without fsync: a record
survives the daemon being killed at any moment (it is in the kernel's page
cache) but not a power cut. "power" fsyncs each group commit.

Write handles: `open_write` durably records "open-w" and remembers the
handle (with the daemon's pid and start time) in the same transaction;
`close_write` records one aggregated "write" and forgets it. A daemon that
starts finds handles of dead daemons and records them "write-interrupted".
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import sqlite3
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import trio

from agentfs.core import audit_archive
from agentfs.core.audit_chain import GENESIS, VerifyResult, check_pin, head, record_hash, verify
from agentfs.core.audit_content import ContentHasher, coalesce_ranges
from agentfs.core.audit_settings import AuditSettings, parse
from agentfs.core.runaway import Alert, RunawayDetector
from agentfs.store import audit_log as store
from agentfs.store import db
from agentfs.workspace import Workspace

__all__ = ["AuditEvent", "AuditLog", "AuditError", "ContentHasher", "VerifyResult", "coalesce_ranges",
           "iter_records", "verify", "head", "check_pin", "GENESIS", "OP_WRITE", "OP_OPEN_W",
           "OP_INTERRUPTED", "OP_RUNAWAY"]

log = logging.getLogger(__name__)

OP_OPEN_W = "open-w"
OP_WRITE = "write"
OP_INTERRUPTED = "write-interrupted"
OP_RUNAWAY = "runaway"
# How often the writer applies retention (it also does at start).
_RETENTION_EVERY_S = 60.0
_RETENTION_EVERY_RECORDS = 10000


class AuditError(Exception):
    """The audit record could not be committed; the operation must not be acknowledged."""


@dataclass
class AuditEvent:
    op: str
    agent: str
    uid: int
    pid: int
    path: str
    new_path: str | None = None
    result: str = "ok"
    details: dict | None = None


@dataclass
class _Item:
    rec: store.NewRecord
    handle_add: int | None = None
    handle_del: int | None = None


class _Batch:
    """What is queued for the next group commit; waiters read their seq from `seqs`."""

    def __init__(self) -> None:
        self.items: list[_Item] = []
        self.done = trio.Event()
        self.seqs: list[int] = []
        self.error: BaseException | None = None


def _details_json(details: dict | None) -> str | None:
    if details is None:
        return None
    return json.dumps(details, sort_keys=True, ensure_ascii=True, separators=(",", ":"), default=str)


def _new_record(ev: AuditEvent, op: str | None = None, details: dict | None = None) -> store.NewRecord:
    return store.NewRecord(time.time_ns(), ev.agent, int(ev.uid), int(ev.pid), op or ev.op, ev.path,
                           ev.new_path, ev.result, _details_json(details if details is not None
                                                                 else ev.details))


def proc_start_time(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (field 22 of /proc/PID/stat).

    With the pid it identifies a process even after the pid is reused.
    None if there is no such process or it is a zombie (dead, not yet reaped).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    rest = stat[stat.rfind(b")") + 2:].split()
    if rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])


class AuditLog:
    """The per-daemon front of the shared audit log."""

    def __init__(self, ws: Workspace, settings: Callable[[], dict], daemon_id: str) -> None:
        self.ws = ws
        self.daemon_id = daemon_id
        self._settings_fn = settings
        self._settings_raw: Any = object()
        self._settings = AuditSettings()
        self._batch = _Batch()
        self._wake = trio.Event()
        self._running = False
        self._stopping = False
        self._stopped = trio.Event()
        self._conn: sqlite3.Connection | None = None
        self._sync_mode: str | None = None
        self._pid = os.getpid()
        self._start = proc_start_time(self._pid) or 0
        self._since_retention = 0
        self._last_retention = 0.0
        self._alert_caller = (-1, 0)
        self.runaways = RunawayDetector(self.settings, self._on_alert)

    # --- settings -----------------------------------------------------------------

    def settings(self) -> AuditSettings:
        """The parsed settings, re-parsed only when `settings()` returns a new object."""
        raw = self._settings_fn()
        if raw is not self._settings_raw:
            self._settings = parse(raw)
            self._settings_raw = raw
        return self._settings

    @property
    def reads(self) -> bool:
        """Whether opens for reading are recorded (`[audit] reads`)."""
        return self.settings().reads

    # --- queueing -----------------------------------------------------------------

    def _enqueue(self, item: _Item) -> tuple[_Batch, int]:
        if self._stopping and not self._running:
            raise AuditError("the audit log is closed")
        batch = self._batch
        batch.items.append(item)
        self._wake.set()
        return batch, len(batch.items) - 1

    async def _wait(self, batch: _Batch, index: int) -> int:
        await batch.done.wait()
        if batch.error is not None:
            raise AuditError(f"audit record not committed: {batch.error}") from batch.error
        return batch.seqs[index]

    async def record(self, ev: AuditEvent) -> int:
        """Append `ev`; returns its seq once committed (durable as configured)."""
        return await self._wait(*self._enqueue(_Item(_new_record(ev))))

    def record_nowait(self, ev: AuditEvent) -> None:
        """Append `ev` with the next group commit, without waiting (denials, reads, releases)."""
        self._enqueue(_Item(_new_record(ev)))

    async def open_write(self, handle_id: int, ev: AuditEvent) -> int:
        """Durably record "open-w" and remember `handle_id` as in flight for this daemon."""
        return await self._wait(*self._enqueue(_Item(_new_record(ev, OP_OPEN_W), handle_add=handle_id)))

    def close_write(self, handle_id: int, ev: AuditEvent, writes: int, nbytes: int,
                    ranges: Iterable[tuple[int, int]], size: int, content_hash: str | None) -> None:
        """Queue the one aggregated "write" record of a handle and forget the handle."""
        details = dict(ev.details or {})
        details.update(writes=int(writes), bytes=int(nbytes),
                       ranges=[list(r) for r in coalesce_ranges(ranges)], size=int(size),
                       hash=content_hash)
        self._enqueue(_Item(_new_record(ev, OP_WRITE, details), handle_del=handle_id))

    # --- runaway ------------------------------------------------------------------

    def runaway(self, agent: str, op: str, path: str, uid: int = -1, pid: int = 0) -> bool:
        """Count a change; True means deny it (action "deny" and the agent is cooling off)."""
        self._alert_caller = (uid, pid)
        return self.runaways.check(agent, op, path)

    def _on_alert(self, a: Alert) -> None:
        details: dict[str, Any] = {"rule": a.rule, "count": a.count, "threshold": a.threshold,
                                   "window_seconds": a.window_seconds, "action": a.action}
        if a.cooloff_until_ns is not None:
            details["cooloff_until_ns"] = a.cooloff_until_ns
        uid, pid = self._alert_caller
        self.record_nowait(AuditEvent(OP_RUNAWAY, a.agent, uid, pid, a.path, details=details))

    # --- the writer ---------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task: recovers dead daemons' handles, then group-commits until cancelled."""
        self._conn = await trio.to_thread.run_sync(db.connect, self.ws)
        self._running = True
        try:
            n = await trio.to_thread.run_sync(self._recover_sync)
            if n:
                log.warning("audit: %d write handle(s) of dead daemons recorded as interrupted", n)
            await self._retention()
            task_status.started()
            while not (self._stopping and not self._batch.items):
                await self._wake.wait()
                await self._commit_next()
        finally:
            with trio.CancelScope(shield=True):
                while self._batch.items:
                    await self._commit_next()
                self._running = False
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()
                self._stopped.set()

    async def _commit_next(self) -> None:
        self._wake = trio.Event()
        batch, self._batch = self._batch, _Batch()
        if batch.items:
            try:
                batch.seqs = await trio.to_thread.run_sync(self._commit_sync, batch.items)
            except Exception as e:  # noqa: BLE001 - every waiter must hear of it
                log.error("audit: commit of %d record(s) failed: %s", len(batch.items), e)
                batch.error = e
            self._since_retention += len(batch.items)
        batch.done.set()
        if (self._since_retention >= _RETENTION_EVERY_RECORDS
                or time.monotonic() - self._last_retention > _RETENTION_EVERY_S):
            await self._retention()

    def _commit_sync(self, items: list[_Item]) -> list[int]:
        conn = self._conn
        assert conn is not None
        mode = "FULL" if self.settings().durability == "power" else "NORMAL"
        if mode != self._sync_mode:
            conn.execute(f"PRAGMA synchronous={mode}")
            self._sync_mode = mode
        adds = [store.InflightAdd(i, self.daemon_id, it.handle_add, self._pid, self._start)
                for i, it in enumerate(items) if it.handle_add is not None]
        dels = [(self.daemon_id, it.handle_del) for it in items if it.handle_del is not None]
        out = store.append(conn, [it.rec for it in items], GENESIS, record_hash, adds, dels)
        return [seq for seq, _h in out]

    def _recover_sync(self) -> int:
        """Record every in-flight handle whose daemon is gone as interrupted, and clear it."""
        assert self._conn is not None

        def is_dead(r: dict[str, Any]) -> bool:
            if r["daemon_pid"] == self._pid and r["daemon_start"] == self._start:
                return False
            return proc_start_time(r["daemon_pid"]) != r["daemon_start"]

        def record_for(r: dict[str, Any]) -> store.NewRecord:
            return store.NewRecord(time.time_ns(), r["agent"], r["uid"], r["pid"], OP_INTERRUPTED,
                                   r["path"], None, "ok",
                                   _details_json({"open_seq": r["open_seq"], "daemon_id": r["daemon_id"],
                                                  "daemon_pid": r["daemon_pid"], "handle": r["handle_id"]}))

        return store.recover_inflight(self._conn, is_dead, record_for, GENESIS, record_hash)

    async def _retention(self) -> None:
        self._since_retention = 0
        self._last_retention = time.monotonic()
        s = self.settings()
        if s.retention_records <= 0 and s.retention_days <= 0:
            return
        try:
            await trio.to_thread.run_sync(audit_archive.archive, self.ws, s.retention_records,
                                          s.retention_days)
        except Exception as e:  # noqa: BLE001 - retention failing must not stop the log
            log.error("audit: archiving old records failed: %s", e)

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        batch = self._batch
        if not batch.items:
            return
        if not self._running:
            raise AuditError("the audit writer is not running")
        self._wake.set()
        await batch.done.wait()

    async def aclose(self) -> None:
        """Flush everything queued and stop the writer task."""
        if self._running:
            await self.flush()
            self._stopping = True
            self._wake.set()
            await self._stopped.wait()
        else:
            self._stopping = True


# --- queries ----------------------------------------------------------------------

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
