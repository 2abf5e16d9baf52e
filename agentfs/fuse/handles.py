"""Open file and directory handles.

read/write/release carry no caller, so a handle keeps the agent that opened
it, and the writes made through it are aggregated here for one audit record
at release instead of one per write() call.

A small file written whole through one handle (tar -x, an editor's save) is
hashed at release from the bytes the handle wrote, kept until then, instead
of reopening the file and reading it back: that reopen (through /proc) cost
two thirds of hashing a 10 KB file. The kept bytes are the file only if the
handle wrote [0, size) in order and nothing else changed the file through
this daemon after its writes (`Inode.changes`); otherwise the file is read
back as before. A write by another daemon of the same workspace at the same
moment is not seen here: the hash is then of what this handle wrote.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field

from agentfs.core.governor import Caller
from agentfs.fuse.backing_io import BackingIO, WriteStream
from agentfs.fuse.inodes import Inode
from agentfs.fuse.setid import drop_setid

# Beyond this many disjoint ranges a handle keeps merging the closest ones, so
# that a random-write workload cannot grow the record without bound.
MAX_RANGES = 64
_ALIGN = 4096
# Files up to this size are hashed from the bytes their handle wrote.
KEEP_BYTES = 64 << 10


@dataclass(eq=False)
class FileHandle:
    fd: int
    ino: int
    caller: Caller
    path: str
    writable: bool
    direct: bool
    io: BackingIO | None = None  # the mount's data path; None: plain pread/pwrite
    write_only: bool = False
    # Whether io has set O_DIRECT on fd for the reads of a read-only handle;
    # None: this fd cannot take it.
    fd_direct: bool | None = False
    # io's state of a write-only handle's writes (set when io is)
    stream: WriteStream = field(default_factory=WriteStream)
    writes: int = 0
    nbytes: int = 0
    ranges: list[list[int]] = field(default_factory=list)
    node: Inode | None = None
    # The bytes written so far, while they are the file's first `kept` bytes
    # in order; None once they are not (or when nobody asked to keep them).
    chunks: list[bytes] | None = None
    kept: int = 0
    seen: int = 0  # node.changes after this handle's last write

    @property
    def past_cache(self) -> bool:
        """Some writes left no page cache behind (hashing the file then reads it from disk)."""
        return self.stream.past_cache

    def content(self, size: int) -> list[bytes] | None:
        """The file's whole content as written through this handle, if that is what it holds."""
        if self.chunks is None or self.kept != size or self.node is None or self.node.changes != self.seen:
            return None
        return self.chunks

    def _keep(self, off: int, data: bytes, n: int) -> None:
        node = self.node
        if node is None:
            return
        chunks = self.chunks
        if chunks is not None:
            if (off != self.kept or n != len(data) or self.kept + n > KEEP_BYTES
                    or (self.kept and node.changes != self.seen)):
                self.chunks = None
            else:
                chunks.append(data if type(data) is bytes else bytes(data))
                self.kept += n
        node.changes += 1
        self.seen = node.changes

    def note_write(self, off: int, n: int) -> None:
        self.writes += 1
        self.nbytes += n
        end = off + n
        r = self.ranges
        if r and r[-1][0] <= off <= r[-1][1]:
            if end > r[-1][1]:
                r[-1][1] = end
            return
        r.append([off, end])
        if len(r) > MAX_RANGES:
            r.sort()
            merged = [r[0]]
            for s, e in r[1:]:
                if s <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], e)
                else:
                    merged.append([s, e])
            if len(merged) > MAX_RANGES:
                gaps = sorted(range(1, len(merged)), key=lambda i: merged[i][0] - merged[i - 1][1])
                drop = set(gaps[: len(merged) - MAX_RANGES])
                out = [merged[0]]
                for i in range(1, len(merged)):
                    if i in drop:
                        out[-1][1] = merged[i][1]
                    else:
                        out.append(merged[i])
                merged = out
            self.ranges = merged

    def read(self, off: int, size: int) -> bytes | memoryview:
        if not self.direct:
            if self.io is None:
                return os.pread(self.fd, size, off)
            if self.writable:
                return self.io.read(self.fd, off, size)[0]
            try:
                data, self.fd_direct = self.io.read(self.fd, off, size, self.fd_direct)
            except OSError:
                if self.fd_direct is not None:
                    self.fd_direct = False  # io.read leaves the fd without O_DIRECT when it raises
                raise
            return data
        # O_DIRECT on the backing file needs an aligned buffer; the caller's
        # offset and size alignment stay the caller's business, as natively.
        buf = mmap.mmap(-1, max(_ALIGN, (size + _ALIGN - 1) // _ALIGN * _ALIGN))
        try:
            n = os.preadv(self.fd, [memoryview(buf)[:size]], off)
            return buf[:n]
        finally:
            buf.close()

    def write(self, off: int, data: bytes) -> int:
        # As natively, a write by a non-root caller clears setuid/setgid
        # (agentfs.fuse.setid says why the kernel doesn't for us).
        drop_setid(self.fd, self.caller)
        if self.io is not None and self.write_only and not self.direct:
            n = self.io.write(self.fd, off, data, self.stream)
        elif not self.direct:
            n = os.pwrite(self.fd, data, off)
        else:
            size = len(data)
            buf = mmap.mmap(-1, max(_ALIGN, (size + _ALIGN - 1) // _ALIGN * _ALIGN))
            try:
                buf[:size] = data
                n = os.pwritev(self.fd, [memoryview(buf)[:size]], off)
            finally:
                buf.close()
        self.note_write(off, n)
        self._keep(off, data, n)
        return n


@dataclass(eq=False)
class DirHandle:
    ino: int
    caller: Caller
    path: str
    names: list[str] | None = None
