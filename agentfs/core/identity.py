"""Who is calling: turns a request's (uid, gid, pid) into an agent.

Order: a mount dedicated to one agent answers for everyone on it; then a
process-tree tag (the caller descends from a live `agentfs run` session
root); then the policy's `uids`; else the policy's default agent.

FUSE hands us a pid that may be a thread id, is 0 for some requests and is
reused by the kernel, so results are cached by (pid, start time): a reused
pid has another start time and never inherits an identity. A cache hit
costs one read of /proc/PID/stat and no database query.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from agentfs.core.session_stamp import StampReader, announce_session, stamp_path
from agentfs.store import sessions as store

if TYPE_CHECKING:
    from agentfs.core.policy import PolicyHolder
    from agentfs.workspace import Workspace

__all__ = ["Identity", "IdentityResolver", "announce_session", "stamp_path", "find_session",
           "process_start_time", "parent_pid", "thread_group", "pid_alive", "session_alive"]

log = logging.getLogger(__name__)

_MAX_DEPTH = 4096
_MAX_CACHE = 1 << 17
# A repeat caller within this long is answered from memory: no pidfd probe.
# The probe guards against a pid reused by another process, and reusing a
# pid takes the kernel a walk through the whole pid space (pid_max forks at
# ~50 µs each: seconds, not milliseconds). A registration in between still
# counts at once (the session stamp is compared on every request), and so
# does a policy reload.
RECENT_TTL_S = 0.005
_MAX_RECENT = 4096


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields 3.. of /proc/PID/stat; comm (field 2) may hold spaces and parentheses."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    _, sep, rest = data.rpartition(b")")
    fields = rest.split()
    return fields if sep and len(fields) >= 20 else None


def process_start_time(pid: int) -> int | None:
    """Start time of a process or thread in clock ticks since boot (field 22), None if gone."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def parent_pid(pid: int) -> int | None:
    """The parent pid (field 4), None if the process is gone."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def thread_group(pid: int) -> int | None:
    """The process (thread group) a thread id belongs to; FUSE's ctx.pid is a thread id."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def pid_alive(pid: int, start_time: int) -> bool:
    """True if `pid` is still the very process that started at `start_time`."""
    return process_start_time(pid) == start_time


@dataclass(frozen=True)
class Identity:
    agent: str
    uid: int
    pid: int
    session_id: int | None
    how: str  # "mount" | "session" | "uid" | "default"


_Tag = tuple[int, str]  # (session id, agent)


def find_session(conn: sqlite3.Connection, pid: int,
                 cache: dict[tuple[int, int], _Tag | None] | None = None) -> store.SessionRow | None:
    """The live session whose root is `pid` or one of its ancestors, if any."""
    live = {(r.pid, r.start_time): r for r in store.live_sessions(conn)}
    tag = _walk(pid, live, cache or {})
    if tag is None:
        return None
    return store.get_session(conn, tag[0])


def _walk(pid: int, live: dict[tuple[int, int], store.SessionRow],
          cache: dict[tuple[int, int], _Tag | None]) -> _Tag | None:
    """Climb the parent chain from pid to the first session root (or cached ancestor)."""
    cur = thread_group(pid) or pid
    for _ in range(_MAX_DEPTH):
        fields = _stat_fields(cur)
        if fields is None:
            return None
        key = (cur, int(fields[19]))
        row = live.get(key)
        if row is not None:
            return (row.id, row.agent)
        if key in cache:
            return cache[key]
        ppid = int(fields[1])
        if ppid <= 0 or ppid == cur:
            return None
        cur = ppid
    return None


def session_alive(conn: sqlite3.Connection, session_id: int) -> bool:
    """True while the session's root process lives (same pid, same start time)."""
    row = store.get_session(conn, session_id)
    return row is not None and row.ended_ns is None and pid_alive(row.pid, row.start_time)


class _Seen:
    """What the resolver knows about one pid: the process it was, and its tag."""

    __slots__ = ("start", "tag", "pidfd")

    def __init__(self, start: int, tag: _Tag | None, pidfd: int) -> None:
        self.start, self.tag, self.pidfd = start, tag, pidfd


class IdentityResolver:
    """Resolves callers to agents for one daemon. Thread-safe (one internal lock), cheap on the trio thread.

    A caller seen in the last RECENT_TTL_S costs a dict lookup and a read of
    the session stamp's shared word; otherwise a repeat caller costs a pidfd
    signal-0 probe (or, for a thread id or once pidfds run out, one read of
    /proc/PID/stat). The state DB is read only for a process not seen before.
    """

    def __init__(self, holder: "PolicyHolder", ws: "Workspace", mount_agent: str | None = None, *,
                 connect: Callable[[], sqlite3.Connection] | None = None, max_pidfds: int | None = None) -> None:
        self.holder = holder
        self.ws = ws
        self.mount_agent = mount_agent
        self._connect = connect
        self._conn: sqlite3.Connection | None = None
        # (pid, start time) -> tag: also consulted for ancestors during a walk.
        self._cache: dict[tuple[int, int], _Tag | None] = {}
        self._seen: dict[int, _Seen] = {}
        self._pidfds = 0
        if max_pidfds is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            max_pidfds = 256 if soft == resource.RLIM_INFINITY else max(0, min(256, soft // 8))
        self._max_pidfds = max_pidfds
        self._rows: dict[int, store.SessionRow] = {}
        # Guards the caches and pidfds: a pidfd closed twice could close an
        # unrelated fd that reused its number.
        self._lock = threading.RLock()
        self._stamp = StampReader(ws)
        self._stamp_seen: int | None = self._stamp.value()
        # pid -> (good until, stamp, policy, uid, answer)
        self._recent: dict[int, tuple[float, int | None, object, int, Identity]] = {}

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            if self._connect is not None:
                self._conn = self._connect()
            else:
                from agentfs.store import db
                self._conn = db.connect(self.ws)
        return self._conn

    def close(self) -> None:
        with self._lock:
            self._stamp.close()
            self._recent.clear()
            for pid in list(self._seen):
                self._drop(pid)
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def resolve(self, uid: int, gid: int, pid: int) -> Identity:
        """The agent of a request; never raises for a vanished or odd pid."""
        if self.mount_agent is not None:
            return Identity(self.mount_agent, uid, pid, None, "mount")
        policy = self.holder.current
        now = time.monotonic()
        hit = self._recent.get(pid)
        if (hit is not None and hit[0] > now and hit[3] == uid and hit[2] is policy
                and hit[1] == self._stamp.value()):
            return hit[4]
        if pid > 0:
            with self._lock:
                tag = self._tag(pid)
                stamp = self._stamp_seen  # what _tag's answer is good for
        else:
            tag = stamp = None
        if tag is not None:
            ident = Identity(tag[1], uid, pid, tag[0], "session")
        else:
            agent = policy.agent_for_uid(uid)
            ident = (Identity(agent, uid, pid, None, "uid") if agent is not None
                     else Identity(policy.default_agent, uid, pid, None, "default"))
        if pid > 0:
            if len(self._recent) >= _MAX_RECENT:
                self._recent = {p: h for p, h in self._recent.items() if h[0] > now}
            self._recent[pid] = (now + RECENT_TTL_S, stamp, policy, uid, ident)
        return ident

    def _drop(self, pid: int) -> None:
        seen = self._seen.pop(pid, None)
        if seen is not None and seen.pidfd >= 0:
            os.close(seen.pidfd)
            self._pidfds -= 1

    def _still_same(self, pid: int, seen: _Seen) -> bool:
        """Is `pid` still the process we saw? A pidfd dies with its process, so reuse shows."""
        if seen.pidfd >= 0:
            try:
                signal.pidfd_send_signal(seen.pidfd, 0)
                return True
            except OSError:
                return False
        return process_start_time(pid) == seen.start

    def _tag(self, pid: int) -> _Tag | None:
        stamp = self._stamp.value()
        if stamp != self._stamp_seen:
            # A session was registered since: untagged answers may be stale.
            self._stamp_seen = stamp
            self._cache = {k: v for k, v in self._cache.items() if v is not None}
            for p in [p for p, s in self._seen.items() if s.tag is None]:
                self._drop(p)
        seen = self._seen.get(pid)
        if seen is not None:
            if self._still_same(pid, seen):
                return seen.tag
            self._drop(pid)
        pidfd = self._open_pidfd(pid)
        start = process_start_time(pid)
        if start is None:
            if pidfd >= 0:
                os.close(pidfd)
                self._pidfds -= 1
            return None
        key = (pid, start)
        if key in self._cache:
            tag = self._cache[key]
        else:
            try:
                live = {(r.pid, r.start_time): r for r in store.live_sessions(self.conn)}
            except sqlite3.Error as e:
                log.error("cannot read sessions from the state DB (%s): caller %d resolved by uid", e, pid)
                if pidfd >= 0:
                    os.close(pidfd)
                    self._pidfds -= 1
                return None
            for row in live.values():
                self._rows[row.id] = row
            tag = _walk(pid, live, self._cache) if live or self._cache else None
            if len(self._cache) >= _MAX_CACHE:
                self._forget_dead()
                if len(self._cache) >= _MAX_CACHE:
                    self._cache.clear()
            self._cache[key] = tag
        self._seen[pid] = _Seen(start, tag, pidfd)
        return tag

    def _open_pidfd(self, pid: int) -> int:
        """A pidfd for a process (not a thread id), while we hold fewer than the cap."""
        if self._pidfds >= self._max_pidfds:
            return -1
        try:
            fd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            return -1
        self._pidfds += 1
        return fd

    def session_alive(self, session_id: int) -> bool:
        """True while the session's root lives; the row is cached, so only /proc is read."""
        with self._lock:
            return self._session_alive(session_id)

    def _session_alive(self, session_id: int) -> bool:
        row = self._rows.get(session_id)
        if row is None:
            try:
                row = store.get_session(self.conn, session_id)
            except sqlite3.Error:
                return False
            if row is None:
                return False
            self._rows[session_id] = row
        return pid_alive(row.pid, row.start_time)

    def forget_dead(self) -> int:
        """Housekeeping: drop what we know of gone processes and end dead sessions in the DB."""
        with self._lock:
            return self._forget_dead()

    def _forget_dead(self) -> int:
        dead = [k for k in self._cache if not pid_alive(*k)]
        for k in dead:
            del self._cache[k]
        for pid in [p for p, s in self._seen.items() if not self._still_same(p, s)]:
            self._drop(pid)
        try:
            ended = [r.id for r in store.live_sessions(self.conn) if not pid_alive(r.pid, r.start_time)]
            if ended:
                store.end_sessions(self.conn, ended)
                log.info("sessions ended (root process gone): %s", ended)
        except sqlite3.Error as e:
            log.warning("cannot tidy sessions in the state DB: %s", e)
        return len(dead)
