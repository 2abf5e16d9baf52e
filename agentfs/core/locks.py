"""Mandatory locks held by agents, with leases and fencing tokens.

The lock table lives in the workspace state database so that every daemon
of a workspace (shared and `--agent` mounts) sees the same locks. Each
manager keeps an in-memory snapshot of the table: `conflict()`, called on
every open, create, truncate, unlink and rename, answers from it without
SQL. It reloads only when the table's generation number changed, which it
learns from a shared-memory beacon that every writer sets after its commit
(~0.2 µs to read), and, as a safety net every half second, from
`PRAGMA data_version` (~5 µs, too slow for every call). Grants and releases run in worker threads
under `BEGIN IMMEDIATE`, so a daemon never blocks its trio loop on SQLite
contention and two daemons can never both grant conflicting locks.

Semantics: a lock on a directory covers its subtree. A lock held by agent A
never stops A itself. Another agent's exclusive lock forbids everything
(open, change, rename, delete); another agent's shared lock forbids change
and delete but allows reading. So a sole shared holder may still write,
while with several shared holders nobody may.

Fairness: a request that has to wait leaves an *intent* row in the table;
a later request of another agent whose mode is incompatible with an earlier
intent on an overlapping path waits behind it. Because intents live in the
database, this queue holds across daemons too. An intent lasts as long as
its request waits plus about a second, during which a retry by the same
agent (the CLI retrying on EAGAIN) takes it over and keeps its place; so
a crashed or departed waiter blocks nobody for long, and intents never stop
file access, only other lock requests.
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

import trio

from agentfs.core.lock_format import (
    format_lock_xattr, format_locks_listing, parse_lock_xattr, parse_locks_listing,
)
from agentfs.core.lock_snapshot import Intent, Snapshot, request_blocker
from agentfs.core.lock_types import Access, Lock, LockConflict, LockMode, forbids, normalize
from agentfs.store import db
from agentfs.store import locks_table as table
from agentfs.store.beacon import Beacon

if TYPE_CHECKING:
    from agentfs.workspace import Workspace

log = logging.getLogger(__name__)

# Even when the beacon shows no change, ask SQLite this often (a writer may
# have died between committing and publishing).
SAFETY_RECHECK_SECONDS = 0.5
# How often waiters re-check a lock another daemon may have released.
POLL_SECONDS = 0.02
# An intent outlives its request's deadline by this much, so that a client
# retrying on EAGAIN keeps its place in the queue, and a waiter between two
# attempts is never mistaken for a dead one.
INTENT_GRACE_NS = 1_000_000_000
DEFAULT_TTL = 300.0
DEFAULT_WAIT = 5.0


_MODES = {m.value: m for m in LockMode}


def _lock_from_row(row: table.LockRow) -> Lock:
    path, agent, mode, session_id, token, acquired_ns, expires_ns = row
    return Lock(path, _MODES[mode], agent, session_id, token, acquired_ns, expires_ns)


def _row_from_lock(lock: Lock) -> table.LockRow:
    return (lock.path, lock.agent, lock.mode.value, lock.session_id, lock.token,
            lock.acquired_ns, lock.expires_ns)


class LockManager:
    """The lock table of one workspace as seen by one daemon (or CLI process)."""

    def __init__(self, ws: "Workspace", settings: Callable[[], dict],
                 session_alive: Callable[[int], bool] = lambda s: True):
        self._ws = ws
        self._settings = settings
        self._session_alive = session_alive
        # Writes happen in worker threads, one at a time; the snapshot is
        # read through its own connection so that our own commits bump its
        # data_version like anybody else's.
        self._wconn = db.connect(ws)
        self._wmutex = threading.Lock()
        self._rconn = db.connect(ws, readonly=True)
        self._beacon = Beacon.open(ws.run_path / "locks.gen")
        self._beacon_seen: int | None = None
        self._next_recheck = 0.0
        self._data_version: int | None = None
        self._generation: int | None = None
        self._snap = Snapshot()
        self._by_row: dict[table.LockRow, Lock] = {}
        self._changed = trio.Event()
        self._refresh()

    def close(self) -> None:
        if self._beacon is not None:
            self._beacon.close()
        self._rconn.close()
        with self._wmutex:
            self._wconn.close()

    # ---- settings -------------------------------------------------------
    def _default_ttl(self) -> float:
        """[locks].default_ttl; a non-positive value (the policy allows 0) means the built-in default."""
        ttl = float(self._settings().get("default_ttl", DEFAULT_TTL))
        return ttl if ttl > 0 else DEFAULT_TTL

    def _default_wait(self) -> float:
        return float(self._settings().get("wait_seconds", DEFAULT_WAIT))

    # ---- snapshot -------------------------------------------------------
    def _refresh(self) -> Snapshot:
        """Reload the snapshot if, and only if, the lock tables changed since the last look."""
        if self._beacon is not None:
            seen, now = self._beacon.read(), time.monotonic()
            if seen == self._beacon_seen and now < self._next_recheck:
                return self._snap
            self._beacon_seen, self._next_recheck = seen, now + SAFETY_RECHECK_SECONDS
        dv = table.data_version(self._rconn)
        if dv == self._data_version:
            return self._snap
        self._data_version = dv
        if table.generation(self._rconn) == self._generation:
            return self._snap
        gen, rows, intent_rows = table.load(self._rconn)
        # Rows that did not change keep their Lock: every change anywhere reloads the whole
        # table, on the trio thread, and building the objects anew was half of that.
        known = self._by_row
        locks = [known.get(r) or _lock_from_row(r) for r in rows]
        self._by_row = dict(zip(rows, locks))
        self._snap = Snapshot(locks, (Intent(i, p, a, _MODES[m], e) for i, p, a, m, e in intent_rows))
        self._generation = gen
        return self._snap

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on this manager's connection, announced on the beacon once committed."""
        with self._wmutex:
            with db.immediate(self._wconn) as conn:
                yield conn
            if self._beacon is not None:
                self._beacon.publish(table.generation(self._wconn))

    def _alive(self, lock: Lock) -> bool:
        return lock.session_id is None or self._session_alive(lock.session_id)

    def _dead_sessions(self, snap: Snapshot) -> frozenset[int]:
        """Sessions of the snapshot's locks that have ended, asked on the caller's (trio) thread.

        `session_alive` (the identity resolver) is not thread-safe, so worker
        threads only consult this set; a session they have not seen counts as alive.
        """
        sessions = {lk.session_id for lk in snap.locks if lk.session_id is not None}
        return frozenset(s for s in sessions if not self._session_alive(s))

    def _notify(self) -> None:
        """Wake local waiters after a change made by this process."""
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_change(self, deadline: float) -> None:
        """Sleep until a local change, the next poll, or the deadline, whichever comes first."""
        with trio.move_on_at(min(deadline, trio.current_time() + POLL_SECONDS)):
            await self._changed.wait()

    # ---- the hot path ---------------------------------------------------
    def conflict(self, agent: str, path: str, access: Access, subtree: bool = False) -> Lock | None:
        """The lock of another agent that forbids `access` to `path`, or None.

        Looks at locks on path and its ancestors; with subtree=True (deleting
        or renaming a directory) also at locks strictly below path.
        """
        snap = self._refresh()
        if not snap.locks:
            return None
        now = time.time_ns()
        for lock in snap.covering(path):
            if lock.expires_ns > now and forbids(lock, agent, access) and self._alive(lock):
                return lock
        if subtree:
            for lock in snap.below(path):
                if lock.expires_ns > now and forbids(lock, agent, access) and self._alive(lock):
                    return lock
        return None

    async def wait_clear(self, agent: str, path: str, access: Access, subtree: bool = False,
                         timeout: float | None = None) -> None:
        """Return once nothing forbids the access; LockConflict after `timeout` seconds."""
        lock = self.conflict(agent, path, access, subtree)
        if lock is None:
            return
        deadline = trio.current_time() + (self._default_wait() if timeout is None else timeout)
        while True:
            if trio.current_time() >= deadline:
                raise LockConflict(lock)
            await self._wait_change(deadline)
            lock = self.conflict(agent, path, access, subtree)
            if lock is None:
                return

    # ---- grants ---------------------------------------------------------
    async def acquire(self, agent: str, path: str, mode: LockMode, ttl: float | None = None,
                      session_id: int | None = None, wait: float = 0.0,
                      force: bool = False, queue: bool = False) -> Lock:
        """Grant, renew, upgrade or downgrade `agent`'s lock; LockConflict after `wait` seconds.

        force=True first breaks other agents' locks on exactly this path (the
        caller has checked the `l` right); locks above or below still conflict.
        queue=True makes a refused request keep a place in the queue for about
        a second even with wait=0: the FUSE layer must answer a lock request at
        once (the kernel holds the file's inode lock meanwhile, which would stop
        the holder's own unlock and writes), and the client's retries keep it.
        """
        path = normalize(path)
        mode = LockMode(mode)
        ttl = self._default_ttl() if ttl is None else float(ttl)
        if not ttl > 0:
            raise ValueError(f"a lock's ttl must be positive, not {ttl}")
        deadline = trio.current_time() + max(0.0, wait)
        intent: int | None = None
        try:
            while True:
                remaining = max(0.0, deadline - trio.current_time())
                dead = self._dead_sessions(self._refresh())
                granted, blocker, intent = await trio.to_thread.run_sync(
                    self._try_grant, agent, path, mode, ttl, session_id, force, intent, remaining,
                    dead, queue)
                if granted is not None:
                    intent = None
                    self._notify()
                    return granted
                assert blocker is not None
                while True:
                    if trio.current_time() >= deadline:
                        # The intent stays for INTENT_GRACE_NS: a prompt retry (agentfs lock
                        # --wait, an agent's own EAGAIN loop) keeps its place in the queue.
                        intent = None
                        raise LockConflict(blocker)
                    await self._wait_change(deadline)
                    snap = self._refresh()
                    if request_blocker(snap.locks, snap.intents, agent, path, mode, intent,
                                        time.time_ns(), self._alive) is None:
                        break
        finally:
            if intent is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._drop_intent, intent)

    def _try_grant(self, agent: str, path: str, mode: LockMode, ttl: float, session_id: int | None,
                   force: bool, intent: int | None, remaining: float, dead: frozenset[int],
                   queue: bool = False) -> tuple[Lock | None, Lock | None, int | None]:
        """One attempt in a write transaction: (granted, None, None) or (None, blocker, intent id)."""
        with self._write() as conn:
            now = time.time_ns()
            locks = [_lock_from_row(r) for r in table.locks_related(conn, path)]
            broken = [lk for lk in locks if force and lk.path == path and lk.agent != agent]
            locks = [lk for lk in locks if lk not in broken]
            intents = [] if force else [
                Intent(i, p, a, LockMode(m), e) for i, p, a, m, e in table.intents(conn)]
            if intent is None:  # a retry of an earlier request takes over its place in the queue
                intent = next((i.id for i in intents if i.agent == agent and i.path == path
                               and i.mode is mode and i.expires_ns > now), None)
            blocker = request_blocker(locks, intents, agent, path, mode, intent, now,
                                       lambda lk: lk.session_id not in dead)
            if blocker is not None:
                expires = now + int(remaining * 1e9) + INTENT_GRACE_NS
                if intent is not None:
                    table.extend_intent(conn, intent, expires)
                    table.bump_generation(conn)
                elif remaining > 0 or queue:  # a plain try-lock (wait=0) leaves no trace
                    intent = table.add_intent(conn, path, agent, mode.value, expires)
                    table.bump_generation(conn)
                return None, blocker, intent
            for lk in broken:
                log.info("lock on %s of %s broken by %s", path, lk.agent, agent)
                table.delete_lock(conn, path, lk.agent)
            mine = next((lk for lk in locks if lk.agent == agent and lk.path == path
                         and lk.alive_at(now)), None)
            renewal = mine is not None and mine.mode is mode
            lock = Lock(path=path, mode=mode, agent=agent, session_id=session_id,
                        token=mine.token if renewal else table.next_token(conn),
                        acquired_ns=mine.acquired_ns if renewal else now,
                        expires_ns=now + int(ttl * 1e9))
            table.upsert_lock(conn, _row_from_lock(lock))
            if intent is not None:
                table.delete_intent(conn, intent)
            table.bump_generation(conn)
            return lock, None, None

    def _drop_intent(self, intent: int) -> None:
        with self._write() as conn:
            table.delete_intent(conn, intent)
            table.bump_generation(conn)

    async def release(self, agent: str, path: str, force: bool = False) -> Lock | None:
        """Drop `agent`'s lock on path (or, with force, everybody's); None if there was none.

        PermissionError when only other agents hold it and force is not set.
        """
        path = normalize(path)
        released = await trio.to_thread.run_sync(self._release, agent, path, force)
        if released is not None:
            self._notify()
        return released

    def _release(self, agent: str, path: str, force: bool) -> Lock | None:
        with self._write() as conn:
            now = time.time_ns()
            held = [lk for lk in map(_lock_from_row, table.locks_at(conn, path)) if lk.alive_at(now)]
            mine = next((lk for lk in held if lk.agent == agent), None)
            if mine is not None:
                table.delete_lock(conn, path, agent)
                table.bump_generation(conn)
                return mine
            if not held:
                return None
            if not force:
                raise PermissionError(f"{path} is locked by {held[0].agent}, not by {agent}")
            for lk in held:
                table.delete_lock(conn, path, lk.agent)
            table.bump_generation(conn)
            held.sort(key=lambda lk: lk.mode is not LockMode.EXCLUSIVE)
            return held[0]

    # ---- reading --------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The current table; a new object whenever it changed (callers key caches on it)."""
        return self._refresh()

    def get(self, path: str) -> builtins.list[Lock]:
        """Live locks on exactly `path`, exclusive first."""
        now = time.time_ns()
        found = self._refresh().by_path.get(normalize(path), [])
        live = [lk for lk in found if lk.alive_at(now) and self._alive(lk)]
        return sorted(live, key=lambda lk: (lk.mode is not LockMode.EXCLUSIVE, lk.agent))

    def covering(self, path: str) -> builtins.list[Lock]:
        """Live locks on `path` and its ancestors: what applies to it (for getxattr)."""
        now = time.time_ns()
        return [lk for lk in self._refresh().covering(normalize(path))
                if lk.alive_at(now) and self._alive(lk)]

    def list(self) -> builtins.list[Lock]:
        """Every live lock of the workspace, by path."""
        now = time.time_ns()
        return [lk for lk in self._refresh().locks if lk.alive_at(now) and self._alive(lk)]

    def queued(self) -> builtins.list[Lock]:
        """Requests waiting for a lock, oldest first, as Locks with token 0."""
        now = time.time_ns()
        return [i.as_lock() for i in self._refresh().intents if i.expires_ns > now]

    # ---- housekeeping ---------------------------------------------------
    async def expire(self) -> builtins.list[Lock]:
        """Purge expired locks and locks of dead sessions, returning them for the audit.

        Costs no SQL write when the snapshot shows nothing to purge, so the
        daemon may call it every second.
        """
        snap = self._refresh()
        now = time.time_ns()
        dead = self._dead_sessions(snap)
        if not any(not lk.alive_at(now) or lk.session_id in dead for lk in snap.locks) and \
                not any(i.expires_ns <= now for i in snap.intents):
            return []
        purged = await trio.to_thread.run_sync(self._expire, dead)
        if purged:
            self._notify()
        return purged

    def _expire(self, dead: frozenset[int]) -> builtins.list[Lock]:
        with self._write() as conn:
            now = time.time_ns()
            purged = [lk for lk in map(_lock_from_row, table.all_locks(conn))
                      if not lk.alive_at(now) or lk.session_id in dead]
            for lk in purged:
                table.delete_lock(conn, lk.path, lk.agent)
            dropped = table.delete_expired_intents(conn, now)
            if purged or dropped:
                table.bump_generation(conn)
        for lk in purged:
            log.info("lock on %s of %s expired (token %d)", lk.path, lk.agent, lk.token)
        return purged

    def on_rename(self, old: str, new: str) -> None:
        """Move locks on `old` and below to `new` after a successful rename.

        Where the agent already holds a lock at the destination (the
        write-to-temp-then-rename pattern), that lock is kept.
        """
        old, new = normalize(old), normalize(new)
        snap = self._refresh()
        if old not in snap.by_path and next(snap.below(old), None) is None:
            return
        with self._write() as conn:
            for lock in map(_lock_from_row, table.locks_under(conn, old)):
                table.delete_lock(conn, lock.path, lock.agent)
                moved = dataclasses.replace(lock, path=new + lock.path[len(old):])
                if not any(r[1] == lock.agent for r in table.locks_at(conn, moved.path)):
                    table.upsert_lock(conn, _row_from_lock(moved))
            table.bump_generation(conn)
        self._notify()

    def on_exchange(self, a: str, b: str) -> None:
        """Swap the locks of two paths (and their subtrees) after a RENAME_EXCHANGE."""
        a, b = normalize(a), normalize(b)
        snap = self._refresh()
        if not any(p in snap.by_path or next(snap.below(p), None) is not None for p in (a, b)):
            return
        with self._write() as conn:
            rows = {p: [_lock_from_row(r) for r in table.locks_under(conn, p)] for p in (a, b)}
            for lock in rows[a] + rows[b]:
                table.delete_lock(conn, lock.path, lock.agent)
            for src, dst in ((a, b), (b, a)):
                for lock in rows[src]:
                    table.upsert_lock(conn, _row_from_lock(
                        dataclasses.replace(lock, path=dst + lock.path[len(src):])))
            table.bump_generation(conn)
        self._notify()

    def on_delete(self, path: str) -> None:
        """Drop locks on a deleted path and below it."""
        path = normalize(path)
        snap = self._refresh()
        if path not in snap.by_path and next(snap.below(path), None) is None:
            return
        with self._write() as conn:
            for row in table.locks_under(conn, path):
                table.delete_lock(conn, row[0], row[1])
            table.bump_generation(conn)
        self._notify()


def list_locks(ws: "Workspace") -> builtins.list[Lock]:
    """Live locks read straight from the state database (for the CLI and status)."""
    conn = db.connect(ws, readonly=True)
    try:
        now = time.time_ns()
        return [lk for lk in map(_lock_from_row, table.all_locks(conn)) if lk.alive_at(now)]
    finally:
        conn.close()


__all__ = [
    "Access", "Lock", "LockConflict", "LockManager", "LockMode", "format_lock_xattr",
    "format_locks_listing", "list_locks", "parse_lock_xattr", "parse_locks_listing",
]
