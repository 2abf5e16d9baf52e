"""The audit log: every change and denial, durable before it is acknowledged.

A FUSE handler awaits `record()` before it replies, so appending must be
cheap and must never block the trio loop. One writer task per daemon takes
everything queued since its last commit and appends it in one transaction
(group commit) in the daemon's helper process (audit_committer; a worker
thread without it), then wakes every waiter: under load, one
commit serves many requests. Several daemons of one workspace append to the
same table; `BEGIN IMMEDIATE` serialises them into one chain.

Durability: "process" (default) commits the WAL without fsync: a record
survives the daemon being killed at any moment (it is in the kernel's page
cache) but not a power cut. "power" fsyncs each group commit. On the hot
path, `record_durable` acknowledges once the record is in this daemon's
journal (one write(), see audit_journal) and commits it with the next group.

Write handles: `open_write` durably records "open-w" and remembers the
handle (with the daemon's pid and start time) in the same transaction;
`close_write` records one aggregated "write" and forgets it. A daemon that
starts finds handles of dead daemons and records them "write-interrupted".
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import trio

from agentfs.core import audit_archive, audit_journal
from agentfs.core.audit_committer import Committer, Request, apply_batch
from agentfs.core.audit_chain import GENESIS, VerifyResult, check_pin, head, record_hash, verify
from agentfs.core.audit_content import ContentHasher, coalesce_ranges
from agentfs.core.audit_query import iter_records
from agentfs.core.audit_settings import AuditSettings, parse
from agentfs.core.runaway import Alert, RunawayDetector
from agentfs.store import audit_log as store
from agentfs.store import db
from agentfs.workspace import Workspace

__all__ = ["AuditEvent", "AuditLog", "AuditError", "ContentHasher", "VerifyResult", "coalesce_ranges",
           "proc_start_time",
           "iter_records", "verify", "head", "check_pin", "GENESIS", "OP_WRITE", "OP_OPEN_W",
           "OP_INTERRUPTED", "OP_RUNAWAY"]

log = logging.getLogger(__name__)

OP_OPEN_W = "open-w"
OP_WRITE = "write"
OP_INTERRUPTED = "write-interrupted"
OP_RUNAWAY = "runaway"
# Under load the writer starts a commit at most this often, so that a
# sequential workload (one change at a time) still commits in groups; a
# change after a quiet spell commits at once. Waited-for records, a full
# batch and flush() never wait. Each commit has a fixed cost (a thread
# handoff, SQLite's locks, rewriting the half-full last pages of the table
# and its indexes) that competes with the FUSE loop for the GIL: at 20 ms
# it was 4-5 % of rm -rf, at 100 ms about 1 %. Records are durable in the
# journal meanwhile; only readers of the log see them up to this much later.
COMMIT_EVERY_S = 0.1
BATCH_MAX = 4096
# How often the writer applies retention (it also does at start).
_RETENTION_EVERY_S = 60.0
_RETENTION_EVERY_RECORDS = 10000


class AuditError(Exception):
    """The audit record could not be committed; the operation must not be acknowledged."""


@dataclass(slots=True)
class AuditEvent:
    op: str
    agent: str
    uid: int
    pid: int
    path: str
    new_path: str | None = None
    result: str = "ok"
    details: dict | None = None


@dataclass(slots=True)
class _Item:
    rec: store.NewRecord
    handle_add: int | None = None
    handle_del: int | None = None
    waited: bool = False        # someone awaits its seq (else it is retried after a failed commit)
    jn: int | None = None       # its entry number in this daemon's journal


class _Batch:
    """What is queued for the next group commit; waiters read their seq from `seqs`."""

    def __init__(self) -> None:
        self.items: list[_Item] = []
        self.done = trio.Event()
        self.seqs: list[int] = []
        self.error: BaseException | None = None


_DETAILS = audit_journal.compact_json(sort_keys=True, default=str)
# The journal line's encoder (audit_journal's own), bound here for `AuditLog.change`.
_LINE = audit_journal.COMPACT


def _details_json(details: dict | None) -> str | None:
    if details is None:
        return None
    return _DETAILS(details)


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

    def __init__(self, ws: Workspace, settings: Callable[[], dict], daemon_id: str,
                 helper: bool = False) -> None:
        """`helper`: group commits in a helper process (audit_committer) instead of a worker thread."""
        self.ws = ws
        self._committer = Committer(ws.root) if helper else None
        self.daemon_id = daemon_id
        self._settings_fn = settings
        self._settings_raw: Any = object()
        self._settings = AuditSettings()
        self._batch = _Batch()
        self._wake = trio.Event()
        self._urgent = trio.Event()
        self._last_commit = -1.0
        self._running = False
        self._stopping = False
        self._stopped = trio.Event()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._start = proc_start_time(self._pid) or 0
        self._since_retention = 0
        self._last_retention = 0.0
        self._alert_caller = (-1, 0)
        self._journal: audit_journal.Journal | None = None
        self._jn = 0
        self._failures = 0
        self._committing: _Batch | None = None
        self.runaways = RunawayDetector(self.settings, self._on_alert)

    # --- settings -----------------------------------------------------------------

    def settings(self) -> AuditSettings:
        """The parsed settings, re-parsed only when what `settings()` returns changed.

        This runs on every change (runaway checks), so an unchanged object
        (or an equal fresh dict) costs a comparison, not a parse.
        """
        raw = self._settings_fn()
        if raw is not self._settings_raw:
            if raw != self._settings_raw:
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
        if item.waited or len(batch.items) >= BATCH_MAX:
            self._urgent.set()
        return batch, len(batch.items) - 1

    async def _wait(self, batch: _Batch, index: int) -> int:
        await batch.done.wait()
        if batch.error is not None:
            raise AuditError(f"audit record not committed: {batch.error}") from batch.error
        return batch.seqs[index]

    async def record(self, ev: AuditEvent) -> int:
        """Append `ev`; returns its seq once committed (durable as configured)."""
        return await self._wait(*self._enqueue(_Item(_new_record(ev), waited=True)))

    def record_nowait(self, ev: AuditEvent) -> None:
        """Append `ev` with the next group commit, without waiting (denials, reads, releases)."""
        self._enqueue(_Item(_new_record(ev)))

    async def open_write(self, handle_id: int, ev: AuditEvent) -> int:
        """Durably record "open-w" and remember `handle_id` as in flight for this daemon."""
        return await self._wait(*self._enqueue(_Item(_new_record(ev, OP_OPEN_W), handle_add=handle_id,
                                                     waited=True)))

    async def record_durable(self, ev: AuditEvent) -> None:
        """Return once `ev` is as durable as `[audit] durability` asks, without waiting for its seq.

        The fast path for acknowledging a syscall: with "process" durability
        the record is journaled (a copy into a shared mapping, on this thread)
        and committed with the next group; with "power" it waits for the
        fsynced commit like `record`.
        """
        await self.change(ev.op, ev.agent, ev.uid, ev.pid, ev.path, ev.new_path, ev.result, ev.details)

    async def open_write_durable(self, handle_id: int, ev: AuditEvent, op: str = OP_OPEN_W) -> None:
        """`open_write` on the fast path of `record_durable`.

        `op="create"`: the record of a file's creation doubles as its open-w
        (one record instead of two for every new file).
        """
        await self.change(op, ev.agent, ev.uid, ev.pid, ev.path, ev.new_path, ev.result, ev.details,
                          handle_id)

    async def change(self, op: str, agent: str, uid: int, pid: int, path: str, new_path: str | None = None,
                     result: str = "ok", details: dict | None = None, handle_add: int | None = None) -> None:
        """`record_durable` from plain values: the path every acknowledged change takes.

        No event object, and the journal line encoded here rather than through
        `line_of` (reading the fields back from the record cost ~10 % of the
        audit's work per `tar -x` file in a script), because it runs several
        times per file, on the FUSE loop's thread, where each Python call is
        paid with caches the kernel and the workload have just cooled.
        """
        ts = time.time_ns()
        dj = None if details is None else _DETAILS(details)
        item = _Item(store.NewRecord(ts, agent, uid, pid, op, path, new_path, result, dj), handle_add)
        journal = self._journal
        if journal is None or self.settings().durability == "power":
            item.waited = True
            await self._wait(*self._enqueue(item))
            return
        if self._stopping and not self._running:
            raise AuditError("the audit log is closed")
        self._jn = jn = item.jn = self._jn + 1
        try:
            # audit_journal.line_of's line, written out (the test of `change` holds them equal).
            journal.append_line((_LINE([jn, ts, agent, uid, pid, op, path, new_path, result, dj, self.daemon_id,
                                        handle_add, None]) + "\n").encode("ascii"))
        except OSError as e:
            raise AuditError(f"cannot journal the audit record: {e}") from e
        self._enqueue(item)

    def close_write(self, handle_id: int, ev: AuditEvent, writes: int, nbytes: int,
                    ranges: Iterable[tuple[int, int]], size: int, content_hash: str | None) -> None:
        """Queue the one aggregated "write" record of a handle and forget the handle."""
        details = dict(ev.details or {})
        details.update(writes=int(writes), bytes=int(nbytes),
                       ranges=[list(r) for r in coalesce_ranges(ranges)], size=int(size),
                       hash=content_hash)
        self._enqueue(_Item(_new_record(ev, OP_WRITE, details), handle_del=handle_id))

    # --- runaway ------------------------------------------------------------------

    def runaway(self, agent: str, op: str, path: str, uid: int = -1, pid: int = 0,
                removal: bool = False) -> bool:
        """Count a change; True means deny it (action "deny" and the agent is cooling off)."""
        self._alert_caller = (uid, pid)
        return self.runaways.check(agent, op, path, removal)

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
            n = await trio.to_thread.run_sync(self._replay_journals_sync)
            if n:
                log.warning("audit: %d journaled record(s) of dead daemons committed", n)
            self._journal = await trio.to_thread.run_sync(audit_journal.Journal, self.ws, self._pid,
                                                          self._start)
            n = await trio.to_thread.run_sync(self._recover_sync)
            if n:
                log.warning("audit: %d write handle(s) of dead daemons recorded as interrupted", n)
            await self._retention()
            task_status.started()
            while not (self._stopping and not self._batch.items):
                await self._wake.wait()
                await self._pace()
                await self._commit_next()
        finally:
            with trio.CancelScope(shield=True):
                while self._batch.items and self._failures < 5:
                    await self._commit_next(retention=False)
                if self._committer is not None:
                    await self._committer.aclose()
                self._running = False
                journal, self._journal = self._journal, None
                conn, self._conn = self._conn, None
                if journal is not None:
                    # Keep a journal with uncommitted entries for the next daemon to replay.
                    committed = not self._batch.items
                    journal.close(remove=committed)
                    if committed and conn is not None:
                        await trio.to_thread.run_sync(store.forget_journal, conn, journal.key)
                if conn is not None:
                    conn.close()
                self._stopped.set()

    async def _pace(self) -> None:
        """Let a commit that follows the last one closely gather more records first."""
        delay = self._last_commit + COMMIT_EVERY_S - time.monotonic()
        if delay > 0 and not self._stopping:
            with trio.move_on_after(delay):
                await self._urgent.wait()

    async def _commit_next(self, retention: bool = True) -> None:
        self._wake = trio.Event()
        self._urgent = trio.Event()
        self._last_commit = time.monotonic()
        batch, self._batch = self._batch, _Batch()
        self._committing = batch
        if batch.items:
            try:
                batch.seqs = await self._commit(batch.items)
                self._failures = 0
            except Exception as e:  # noqa: BLE001 - every waiter must hear of it
                self._failures += 1
                log.error("audit: commit of %d record(s) failed: %s", len(batch.items), e)
                batch.error = e
                # Records nobody waits for were acknowledged (journaled, or
                # fire-and-forget): they go into the next commit.
                retry = [it for it in batch.items if not it.waited]
                if retry:
                    self._batch.items.extend(retry)
                    self._wake.set()
                    with trio.CancelScope(shield=True):
                        await trio.sleep(min(1.0, 0.05 * 2 ** self._failures))
            self._since_retention += len(batch.items)
        batch.done.set()
        self._committing = None
        j = self._journal
        if j is not None and j.size > audit_journal.RESET_BYTES:
            try:
                j.rewrite([audit_journal.Entry(it.jn, it.rec, self.daemon_id, it.handle_add, it.handle_del)
                           for it in self._batch.items if it.jn is not None])
            except OSError as e:
                log.error("audit: cannot rewrite the journal %s: %s", j.path, e)
        if retention and (self._since_retention >= _RETENTION_EVERY_RECORDS
                          or time.monotonic() - self._last_retention > _RETENTION_EVERY_S):
            await self._retention()

    async def _commit(self, items: list[_Item]) -> list[int]:
        if self._committer is None:
            return await trio.to_thread.run_sync(self._commit_sync, items)
        request = self._request(items)
        # Not cancellable, as a worker thread's commit is not: a batch cancelled
        # mid-commit would be dropped while its journal was deleted as applied.
        with trio.CancelScope(shield=True):
            return await self._committer.commit(request)

    def _commit_sync(self, items: list[_Item]) -> list[int]:
        """The same transaction on this daemon's own connection (in a worker thread)."""
        assert self._conn is not None
        return apply_batch(self._conn, self._request(items), GENESIS, record_hash)

    def _request(self, items: list[_Item]) -> Request:
        """A batch's transaction as plain values: its records, in-flight changes and journal mark."""
        mode = "FULL" if self.settings().durability == "power" else "NORMAL"
        recs = [(it.rec.ts_ns, it.rec.agent, it.rec.uid, it.rec.pid, it.rec.op, it.rec.path, it.rec.new_path,
                 it.rec.result, it.rec.details) for it in items]
        adds = [(i, self.daemon_id, it.handle_add, self._pid, self._start)
                for i, it in enumerate(items) if it.handle_add is not None]
        dels = [(self.daemon_id, it.handle_del) for it in items if it.handle_del is not None]
        jmax = max((it.jn for it in items if it.jn is not None), default=None)
        mark = (self._journal.key, jmax) if jmax is not None and self._journal is not None else None
        return mode, recs, adds, dels, mark

    def _replay_journals_sync(self) -> int:
        assert self._conn is not None
        return replay_dead_journals(self.ws, self._conn, skip=(self._pid, self._start))

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
        """Wait until everything queued so far is committed (or its commit failed)."""
        committing, batch = self._committing, self._batch
        if committing is not None:
            await committing.done.wait()
        if not batch.items:
            return
        if not self._running:
            raise AuditError("the audit writer is not running")
        self._wake.set()
        self._urgent.set()
        await batch.done.wait()

    async def aclose(self) -> None:
        """Flush everything queued and stop the writer task."""
        if self._running:
            await self.flush()
            self._stopping = True
            self._wake.set()
            self._urgent.set()
            await self._stopped.wait()
        else:
            self._stopping = True


def replay_dead_journals(ws: Workspace, conn: sqlite3.Connection, skip: tuple[int, int] | None = None) -> int:
    """Commit what dead daemons journaled but never committed, then delete their journals.

    Idempotent (an applied-mark per journal), so a starting daemon and the
    CLI may both do it: after a crash the log is complete before anyone remounts.
    """
    total = 0
    for pid, start, path in audit_journal.journals(ws):
        if (pid, start) == skip or proc_start_time(pid) == start:
            continue
        entries = []
        for e in audit_journal.read_entries(path):
            add = (store.InflightAdd(0, e.daemon_id, e.handle_add, pid, start)
                   if e.handle_add is not None else None)
            dele = (e.daemon_id, e.handle_del) if e.handle_del is not None else None
            entries.append((e.n, e.rec, add, dele))
        key = audit_journal.key_of(pid, start)
        total += store.replay_journal(conn, key, entries, GENESIS, record_hash)
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".tmp").unlink(missing_ok=True)  # a rewrite cut short
        store.forget_journal(conn, key)
    return total
