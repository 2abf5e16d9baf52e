"""A per-daemon journal that makes a record durable before its group commit.

Waiting for an SQLite commit in a worker thread costs ~100 µs a record,
which a sequential workload (tar -x: several changes per file) pays on every
syscall. Appending one line to a file with one write() costs a few µs and
is just as durable against the daemon's death: once write() returns, the
bytes are the kernel's. So with `durability = "process"` a change is
acknowledged once its line is in this journal; the writer task commits it
to the log soon after, and notes in the same transaction how far the
journal is applied. A daemon that starts replays what a dead daemon
journaled but never committed, then deletes that journal.

The file is named after the daemon process (pid and start time), so a
journal of a dead daemon is recognised even when its pid was reused.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentfs.store import audit_log as store
from agentfs.workspace import Workspace

log = logging.getLogger(__name__)

_NAME = re.compile(r"^audit-journal\.(\d+)\.(\d+)\.jsonl$")
# Once this large, the journal is rewritten with only its uncommitted entries.
RESET_BYTES = 1 << 20
_COMPACT = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


@dataclass
class Entry:
    """One journaled record, with what it does to the in-flight handle table."""

    n: int
    rec: store.NewRecord
    daemon_id: str
    handle_add: int | None
    handle_del: int | None


def journal_path(ws: Workspace, pid: int, start: int) -> Path:
    return ws.run_path / f"audit-journal.{pid}.{start}.jsonl"


def key_of(pid: int, start: int) -> str:
    return f"{pid}.{start}"


class Journal:
    """This daemon's journal: append on the trio thread, reset when committed."""

    def __init__(self, ws: Workspace, pid: int, start: int) -> None:
        self.path = journal_path(ws, pid, start)
        self.key = key_of(pid, start)
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self.fd).st_size

    def append(self, e: Entry) -> None:
        """One write(): when it returns the entry survives the process."""
        self.size += _write_all(self.fd, _line(e))

    def rewrite(self, pending: list[Entry]) -> None:
        """Replace the journal by one holding only `pending` (the entries not yet committed).

        Under sustained load some entries are always pending, so the journal
        could never simply be emptied. The new file is complete before it is
        renamed over the old one: killed at any point, the journal on disk
        still holds every uncommitted entry.
        """
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            size = _write_all(fd, b"".join(_line(e) for e in pending))
            os.rename(tmp, self.path)
        except BaseException:
            os.close(fd)
            raise
        os.close(self.fd)
        self.fd, self.size = fd, size

    def close(self, remove: bool) -> None:
        os.close(self.fd)
        if remove:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


def _line(e: Entry) -> bytes:
    r = e.rec
    return _COMPACT.encode([e.n, r.ts_ns, r.agent, r.uid, r.pid, r.op, r.path, r.new_path, r.result,
                            r.details, e.daemon_id, e.handle_add, e.handle_del]).encode("ascii") + b"\n"


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    return len(data)


def read_entries(path: Path) -> list[Entry]:
    """The entries of a journal; a torn last line (power loss) is skipped."""
    out: list[Entry] = []
    with open(path, "rb") as f:
        for line in f:
            try:
                v: list[Any] = json.loads(line)
                (n, ts, agent, uid, pid, op, p, newp, result, details, daemon_id, add, dele) = v
            except ValueError:
                log.warning("audit: skipping a torn line in %s", path)
                continue
            out.append(Entry(n, store.NewRecord(ts, agent, uid, pid, op, p, newp, result, details),
                             daemon_id, add, dele))
    return out


def journals(ws: Workspace) -> list[tuple[int, int, Path]]:
    """(pid, start time, path) of every journal in the workspace."""
    try:
        names = os.listdir(ws.run_path)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        m = _NAME.match(name)
        if m:
            out.append((int(m.group(1)), int(m.group(2)), ws.run_path / name))
    return sorted(out)
