"""How file data moves between a handle and its backing file, and what page cache it leaves.

A pass-through keeps two page caches of whatever goes through it: the kernel's
copy on the mount's side and the backing filesystem's own. Readers are served
from the mount's side (every regular file is opened with keep_cache), so the
backing copy of what they stream is a duplicate; and a write-only handle has
no mount-side cache at all (FOPEN_DIRECT_IO), so the backing copy of what it
streams is the only reason the write costs fresh memory. On this project's
machines fresh page-cache memory is the slow part of moving a gigabyte (the
VM's balloon reports free memory to the host, which takes it back; the first
touch of such a page then costs a fault in the host), so:

- reads land in one reused buffer;
- a large, block-aligned read of a read-only handle goes to the backing file
  with O_DIRECT into one reused aligned buffer, under an `auto` rule like
  the writes' below (with `READ_FLOOR_BYTES_PER_S`); a large read that does
  not drops the backing pages it just served (POSIX_FADV_DONTNEED);
- a large write (`[mount] stream_writes`, default "behind") goes through
  the backing page cache but is written back at once
  (sync_file_range(SYNC_FILE_RANGE_WRITE)), and the range `BEHIND_BYTES`
  back is waited for and dropped: a stream keeps at most that much page
  cache, whose pages the next writes reuse while they are still warm, and
  the disk works while the next requests cross the kernel. Measured here it
  beat O_DIRECT from an aligned buffer (0.33-0.41 s a GiB against
  0.43-0.66 s) and plain page cache (0.47-1.52 s). While the loop spends
  longer than `FLOOR_BYTES_PER_S` allows on such writes (a slow disk), the
  mount goes back to plain page-cache writes for `BACKOFF_S`, unless those
  were measured slower still. "direct" sends large block-aligned writes to
  the disk with O_DIRECT from one reused aligned buffer, "cache" leaves
  them to the page cache.

Small I/O, O_DIRECT handles and (for direct I/O) unaligned I/O and O_APPEND
are untouched. Data and its durability are the same either way: a direct
write is on the disk when it returns, and fsync still flushes metadata; a
direct read sees every buffered write made before it (the kernel writes the
range back first). Waiting for a range written behind takes its write-back
error from the backing fd (the kernel reports it once per open file), so the
stream keeps it and the handle's next fsync reports it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("agentfs.fuse")

# Reads and writes at least this large are streaming: the kernel's readahead
# window, and the smallest request a streaming writer (cp, dd, tar) sends.
STREAM_MIN = 128 << 10
ALIGN = 4096
# Page cache a stream written behind keeps past its last write. 1 MiB behind
# waited on writes still in flight (0.40 s a GiB), 8 and 32 MiB did not
# (0.33-0.36 s); without waiting, 270-335 MB stayed cached and it was slower.
BEHIND_BYTES = 8 << 20
# Under this, writes behind (and the loop that waits for them) go back to
# plain page-cache writes for a while (`BACKOFF_S`), unless the page cache,
# tried during an earlier pause, was slower still (`_Pace.judge_buffered`):
# on this VM a copy into fresh page-cache memory runs at 330-430 MB/s.
FLOOR_BYTES_PER_S = 256 << 20
# Reads: read buffered, they need the disk too, but several requests at once
# (readahead) where a direct read waits for each. The first direct reads of
# a file here run under 1 GB/s, later ones at 1.2-2.8 GB/s. Below this floor
# the device is one whose latency readahead hides (a spinning disk, a
# network volume).
READ_FLOOR_BYTES_PER_S = 256 << 20
BACKOFF_S = 10.0
# The moving average weighs each new direct transfer this much (after a plain
# mean of the first ones), and judges the disk only after this many: a new
# file's first writes allocate its blocks, and the first few here can take
# ms each; judged after 4, they alone sent whole 1 GiB writes to the cache.
WEIGHT = 1 / 32
MIN_SAMPLES = 128


_libc = ctypes.CDLL(None, use_errno=True)
_sync_file_range = _libc.sync_file_range
_sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_sync_file_range.restype = ctypes.c_int
SYNC_START = 2  # SYNC_FILE_RANGE_WRITE
SYNC_WAIT = 1 | 2 | 4  # SYNC_FILE_RANGE_WAIT_BEFORE | WRITE | WAIT_AFTER
# sync_file_range errors that say the fd cannot do it at all (not a failed write-back)
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ESPIPE, errno.EOPNOTSUPP}


def sync_range(fd: int, off: int, size: int, flags: int) -> None:
    """sync_file_range(2), which the os module lacks."""
    if _sync_file_range(fd, off, size, flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


@dataclass(eq=False)
class WriteStream:
    """What the data path keeps of one write-only handle."""

    direct: bool = False  # whether its fd has O_DIRECT set now
    plain: bool = False  # its fd takes plain writes only (O_APPEND, no O_DIRECT or sync_file_range)
    past_cache: bool = False  # some of its writes left no page cache behind
    late_error: OSError | None = None  # a write-back failure met behind; the next fsync reports it

    def take_error(self) -> OSError | None:
        e, self.late_error = self.late_error, None
        return e


class _Pace:
    """How fast one kind of large I/O past the page cache went lately, and whether the mount still does it."""

    def __init__(self, kind: str, clock: Callable[[], float], floor: float) -> None:
        self.kind = kind
        self.clock = clock
        self.floor = floor
        self.paused = False
        self.paused_until = 0.0
        self.sec_per_byte = 0.0
        self.samples = 0
        # The same of the large buffered writes made while paused: on this
        # VM they can be slower than a slow disk (fresh page-cache memory).
        self.buffered_sec_per_byte = 0.0
        self.buffered_samples = 0

    def allows(self, mode: str, off: int, size: int, min_size: int = STREAM_MIN) -> bool:
        if mode == "never" or size < min_size or (off | size) & (ALIGN - 1):
            return False
        return mode == "always" or self.active()

    def active(self) -> bool:
        """Whether that I/O is on now: not paused, or the pause is over."""
        if not self.paused:
            return True
        if self.clock() < self.paused_until:
            return False
        self.paused, self.samples = False, 0  # judge the disk afresh
        return True

    def judge(self, sec_per_byte: float) -> None:
        self.samples += 1
        # The plain mean of the first samples, then a moving average: weighing
        # each new sample 1/32 from the second on let the first (a new file's
        # blocks being allocated) decide alone whether to pause.
        self.sec_per_byte += (sec_per_byte - self.sec_per_byte) * max(WEIGHT, 1 / self.samples)
        if self.samples < MIN_SAMPLES or self.sec_per_byte * self.floor <= 1:
            return
        if self.buffered_samples >= MIN_SAMPLES and self.buffered_sec_per_byte >= self.sec_per_byte:
            return  # slow, but the page cache was slower still when last tried
        self.paused, self.paused_until = True, self.clock() + BACKOFF_S
        log.info("%s at %.0f MB/s, below %.0f: through the page cache for %.0f s", self.kind,
                 1 / self.sec_per_byte / 1e6, self.floor / 1e6, BACKOFF_S)

    def judge_buffered(self, sec_per_byte: float) -> None:
        """A large buffered transfer made while paused took this long a byte."""
        self.buffered_samples += 1
        self.buffered_sec_per_byte += ((sec_per_byte - self.buffered_sec_per_byte)
                                       * max(WEIGHT, 1 / self.buffered_samples))


class BackingIO:
    """The mount's data path; one per mount, used from the FUSE loop thread only.

    `mode` rules large writes: "behind", "direct" or "cache"
    (`[mount] stream_writes`); `read_mode` direct reads: "auto", "always" or
    "never" (`[mount] direct_reads`).
    """

    def __init__(self, mode: str = "behind", clock: Callable[[], float] = time.monotonic,
                 read_mode: str = "auto") -> None:
        self.mode = mode
        self.read_mode = read_mode
        self._clock = clock
        self._writes = _Pace("writes behind", lambda: self._clock(), FLOOR_BYTES_PER_S)
        self._reads = _Pace("direct reads", lambda: self._clock(), READ_FLOOR_BYTES_PER_S)
        self._buf: mmap.mmap | None = None
        self._rbuf: bytearray | None = None
        self._view: memoryview | None = None
        self._dview: memoryview | None = None
        self.direct_writes = 0
        self.behind_writes = 0
        self.buffered_writes = 0
        self.direct_reads = 0

    def read(self, fd: int, off: int, size: int, fd_direct: bool | None = None) -> tuple[memoryview, bool | None]:
        """The bytes at `off`, in a buffer that the next read reuses; and whether `fd` now has O_DIRECT.

        pyfuse3 copies what a read handler returns into its reply before any
        other request runs, so one buffer serves every read: no fresh memory
        per request (a new 1 MiB `bytes` each time is what makes slow runs
        slow here: its pages come from the host on first touch).

        `fd_direct` is whether `fd` has O_DIRECT set now, None for an fd that
        must not read past the page cache (or cannot: then None comes back
        and the caller stops asking). A large aligned read of such an fd goes
        to the disk with O_DIRECT: what a reader streams then costs no backing
        page cache at all, fresh memory that this VM's host hands out slowly
        (a cold 1 GiB `dd` took 0.59-0.87 s instead of 0.58-2.54 s). A
        buffered large read drops the backing pages it served instead.
        """
        # An fd already set for direct reads keeps it for smaller aligned ones
        # (the kernel's readahead sends some): no flag flipping mid-stream.
        if fd_direct is not None and self._reads.allows(self.read_mode, off, size,
                                                         ALIGN if fd_direct else STREAM_MIN):
            return self._read_direct(fd, off, size, fd_direct)
        if fd_direct:
            _set_direct(fd, False)
        if self._rbuf is None or len(self._rbuf) < size:
            self._rbuf = bytearray(max(size, 1 << 20))
        view = memoryview(self._rbuf)[:size]
        n = os.preadv(fd, [view], off)
        if n >= STREAM_MIN:
            os.posix_fadvise(fd, off, n, os.POSIX_FADV_DONTNEED)
        return view[:n], False if fd_direct is not None else None

    def _read_direct(self, fd: int, off: int, size: int, fd_direct: bool) -> tuple[memoryview, bool | None]:
        if not fd_direct:
            try:
                _set_direct(fd, True)
            except OSError:  # the backing filesystem has no O_DIRECT
                return self.read(fd, off, size)[0], None
        if self._dview is None or len(self._dview) < size:
            # A new mapping rather than a resized one: the last reply may still
            # hold a view of the old, which is unmapped once that view is gone.
            self._dview = memoryview(mmap.mmap(-1, max(size, 1 << 20)))
        view = self._dview[:size]
        t0 = self._clock()
        try:
            n = os.preadv(fd, [view], off)
        except OSError as e:
            _set_direct(fd, False)
            if e.errno != errno.EINVAL:
                raise
            # EINVAL: an alignment this device needs and 4 KiB is not
            return self.read(fd, off, size)[0], None
        dt = self._clock() - t0
        self.direct_reads += 1
        # A short read (end of file) or a small one says little of the disk's pace.
        if self.read_mode == "auto" and n == size >= STREAM_MIN:
            self._reads.judge(dt / n)
        return view[:n], True

    def write(self, fd: int, off: int, data: bytes, stream: WriteStream) -> int:
        """Write `data` at `off` for a write-only handle whose data-path state is `stream`."""
        size = len(data)
        if stream.plain or self.mode == "cache" or size < STREAM_MIN:
            return self._plain(fd, off, data, stream)
        if self.mode == "direct":
            if (off | size) & (ALIGN - 1):
                return self._plain(fd, off, data, stream)
            return self._direct(fd, off, data, stream)
        if not self._writes.active():
            t0 = self._clock()
            n = self._plain(fd, off, data, stream)
            if n == size:
                self._writes.judge_buffered((self._clock() - t0) / n)
            return n
        return self._behind(fd, off, data, stream)

    def _plain(self, fd: int, off: int, data: bytes, stream: WriteStream) -> int:
        _leave_direct(fd, stream)
        self.buffered_writes += 1
        return os.pwrite(fd, data, off)

    def _behind(self, fd: int, off: int, data: bytes, stream: WriteStream) -> int:
        _leave_direct(fd, stream)
        t0 = self._clock()
        n = os.pwrite(fd, data, off)
        if n <= 0:
            return n  # a size of 0 would mean "to the end of the file" to sync_file_range
        lo = max(off - BEHIND_BYTES, 0)
        hi = off + n - BEHIND_BYTES
        try:
            sync_range(fd, off, n, SYNC_START)
            if hi > lo:
                sync_range(fd, lo, hi - lo, SYNC_WAIT)
        except OSError as e:
            if e.errno in _UNSUPPORTED:
                stream.plain = True
                return n
            if stream.late_error is None:
                stream.late_error = e
        if hi > lo:
            os.posix_fadvise(fd, lo, hi - lo, os.POSIX_FADV_DONTNEED)
        stream.past_cache = True
        self.behind_writes += 1
        self._writes.judge((self._clock() - t0) / n)
        return n

    def _direct(self, fd: int, off: int, data: bytes, stream: WriteStream) -> int:
        if not stream.direct:
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:  # the offset is the end, maybe unaligned
                stream.plain = True
                return self._plain(fd, off, data, stream)
            try:
                _set_direct(fd, True)
            except OSError:  # the backing filesystem has no O_DIRECT (EINVAL)
                stream.plain = True
                return self._plain(fd, off, data, stream)
            stream.direct = True
        view = self._aligned(len(data))
        view[:] = data
        try:
            n = os.pwritev(fd, [view], off)
        except OSError as e:
            _leave_direct(fd, stream)
            if e.errno != errno.EINVAL:
                raise
            # EINVAL: an alignment this device needs and 4 KiB is not
            stream.plain = True
            return self._plain(fd, off, data, stream)
        finally:
            view.release()
        self.direct_writes += 1
        stream.past_cache = True
        return n

    def _aligned(self, size: int) -> memoryview:
        if self._buf is None or len(self._buf) < size:
            if self._view is not None:
                self._view.release()
            if self._buf is not None:
                self._buf.close()
            self._buf = mmap.mmap(-1, max(size, 1 << 20))
            self._view = memoryview(self._buf)
        assert self._view is not None
        return self._view[:size]


def _leave_direct(fd: int, stream: WriteStream) -> None:
    """Take O_DIRECT off a write-only handle's fd, if its writes had set it."""
    if stream.direct:
        stream.direct = False
        _set_direct(fd, False)


def _set_direct(fd: int, on: bool) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
