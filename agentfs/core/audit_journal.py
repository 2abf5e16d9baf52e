"""A per-daemon journal that makes a record durable before its group commit.

Waiting for an SQLite commit in a worker thread costs ~100 µs a record,
which a sequential workload (tar -x: several changes per file) pays on every
syscall. Copying one line into a shared file mapping costs about a
microsecond and is just as durable against the daemon's death: the bytes are
in the kernel's page cache the moment they are copied, and the kernel writes
them back whatever happens to the process (a write() per record did the
same for ~3 % of rm -rf more: a system call, and ext4's inode lock and time
update competing with the workload's own metadata). So with `durability =
"process"` a change is acknowledged once its line is in this journal; the
writer task commits it to the log soon after, and notes in the same
transaction how far the journal is applied. A daemon that starts replays
what a dead daemon journaled but never committed, then deletes that journal.

The file is mapped at a fixed capacity, allocated on disk before it is
mapped (so a full disk fails one change with ENOSPC rather than killing the
daemon with SIGBUS) and grown when full, so past the last line it holds
zero bytes; a line ends with a newline and never contains a
zero byte (JSON escapes it), so a reader stops at the first zero, and a last
line cut short (the daemon killed mid-copy, or a power cut) is skipped.

The file is named after the daemon process (pid and start time), so a
journal of a dead daemon is recognised even when its pid was reused.
"""

from __future__ import annotations

import errno
import json
import logging
import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, Callable

from agentfs.store import audit_log as store
from agentfs.workspace import Workspace

log = logging.getLogger(__name__)

_NAME = re.compile(r"^audit-journal\.(\d+)\.(\d+)\.jsonl$")
# Once this large, the journal is rewritten with only its uncommitted entries.
RESET_BYTES = 1 << 20
# The mapping's first size; doubled when full (the writer resets the journal
# at RESET_BYTES after each commit, so growth is rare).
_CAPACITY = 4 << 20


def compact_json(sort_keys: bool = False, default: Any = None) -> Callable[[Any], str]:
    """A compact, ASCII-only JSON encoder, built once.

    `json.dumps` and `JSONEncoder.encode` build the C encoder (and Python
    closures around it) on every call, which costs as much as encoding a
    record's few values; the audit encodes two values per change.
    """
    enc = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), sort_keys=sort_keys, default=default)
    if c_make_encoder is None:  # pragma: no cover - CPython always has the accelerator
        return enc.encode
    make = c_make_encoder(None, enc.default, encode_basestring_ascii, None, ":", ",", sort_keys, False, True)

    def encode(value: Any) -> str:
        return "".join(make(value, 0))

    return encode


# The compact encoder the audit shares: journal lines, and the bytes a
# record's hash covers (audit_chain), are encoded with this one object.
COMPACT = compact_json()


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
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            self._adopt(fd, _used_bytes(fd))
        except BaseException:
            os.close(fd)
            raise

    def _adopt(self, fd: int, used: int) -> None:
        """Map `fd`, whose first `used` bytes are complete lines, for appending."""
        capacity = max(_CAPACITY, _round_up(used * 2))
        _reserve(fd, capacity)
        self._map = _map(fd, capacity)
        self.fd, self.size = fd, used

    def append(self, e: Entry) -> None:
        """One copy into the mapping: when it returns the entry survives the process."""
        self.append_line(_line(e))

    def append_line(self, line: bytes) -> None:
        """`append` of a line already encoded (`line_of`), for the hot path."""
        end = self.size + len(line)
        if end > len(self._map):
            self._grow(end)
        self._map[self.size:end] = line
        self.size = end

    def _grow(self, need: int) -> None:
        capacity = _round_up(max(need, 2 * len(self._map)))
        _reserve(self.fd, capacity)
        self._map.resize(capacity)

    def rewrite(self, pending: list[Entry]) -> None:
        """Replace the journal by one holding only `pending` (the entries not yet committed).

        Under sustained load some entries are always pending, so the journal
        could never simply be emptied. The new file is complete before it is
        renamed over the old one: killed at any point, the journal on disk
        still holds every uncommitted entry.
        """
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        new_map = None
        try:
            used = _write_all(fd, b"".join(_line(e) for e in pending))
            # Allocated and mapped before the rename: past it nothing may fail,
            # or appends would go on into the replaced (unlinked) file.
            capacity = max(_CAPACITY, _round_up(used * 2))
            _reserve(fd, capacity)
            new_map = _map(fd, capacity)
            os.rename(tmp, self.path)
        except BaseException:
            if new_map is not None:
                new_map.close()
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        old_map, old_fd = self._map, self.fd
        self._map, self.fd, self.size = new_map, fd, used
        old_map.close()
        os.close(old_fd)

    def close(self, remove: bool) -> None:
        """Unmap; a kept journal is cut to its lines (for whoever replays it)."""
        self._map.close()
        try:
            if remove:
                self.path.unlink(missing_ok=True)
            else:
                os.ftruncate(self.fd, self.size)
        finally:
            os.close(self.fd)


def _reserve(fd: int, size: int) -> None:
    """Give the file `size` bytes of allocated blocks before they are mapped.

    A store into a page of a sparse mapping allocates its block at that
    moment, and on a full disk the kernel answers with SIGBUS, which would
    kill the daemon (and its mount). Allocated up front, a full disk shows
    here instead, as ENOSPC for the one change being journaled.
    """
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        # A filesystem without fallocate: write the zeros out instead.
        have = os.fstat(fd).st_size
        if size > have:
            os.pwrite(fd, bytes(size - have), have)


def _map(fd: int, size: int) -> mmap.mmap:
    return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


def _round_up(n: int) -> int:
    page = mmap.PAGESIZE
    return (n + page - 1) // page * page


def _used_bytes(fd: int) -> int:
    """How much of a journal holds whole lines: up to the last newline before its first zero byte.

    Appends then start after the last whole line, never glued to a torn one.
    """
    with os.fdopen(os.dup(fd), "rb") as f:
        data = _written(f.read())
    return data.rfind(b"\n") + 1


def _written(data: bytes) -> bytes:
    """A journal's bytes up to its first zero: past it lies the mapping's unwritten tail."""
    end = data.find(b"\0")
    return data if end < 0 else data[:end]


def _line(e: Entry) -> bytes:
    r = e.rec
    return line_of(e.n, r, e.daemon_id, e.handle_add, e.handle_del)


def line_of(n: int, r: store.NewRecord, daemon_id: str, handle_add: int | None, handle_del: int | None) -> bytes:
    """The journal line of entry `n` (what `read_entries` reads back)."""
    return (COMPACT([n, r.ts_ns, r.agent, r.uid, r.pid, r.op, r.path, r.new_path, r.result, r.details,
                      daemon_id, handle_add, handle_del]) + "\n").encode("ascii")


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    return len(data)


def read_entries(path: Path) -> list[Entry]:
    """The entries of a journal, up to its mapped zero tail; a torn last line is skipped."""
    with open(path, "rb") as f:
        lines = _written(f.read()).split(b"\n")
    out: list[Entry] = []
    for i, line in enumerate(lines):
        if not line:
            continue
        try:
            if i == len(lines) - 1:
                raise ValueError("no newline")  # cut short while it was being written
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
