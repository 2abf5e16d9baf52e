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
- a large, block-aligned write goes to the backing file with O_DIRECT, from
  one reused aligned buffer, while the disk takes such writes at least at
  `FLOOR_BYTES_PER_S` (a moving average over recent direct writes: single
  writes stall now and then, 1 in 1,000 here). A slower disk sends the mount
  back to buffered writes for `BACKOFF_S`, so a slow disk keeps the page
  cache's write-behind and never holds the loop, unless the page cache was
  measured slower still.

Small or unaligned I/O, O_APPEND and O_DIRECT handles are untouched. Data
and its durability are the same either way: a direct write is on the disk
when it returns, and fsync still flushes metadata; a direct read sees every
buffered write made before it (the kernel writes the range back first).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import time
from typing import Callable

log = logging.getLogger("agentfs.fuse")

# Reads and writes at least this large are streaming: the kernel's readahead
# window, and the smallest request a streaming writer (cp, dd, tar) sends.
STREAM_MIN = 128 << 10
ALIGN = 4096
# Under this, direct writes go back to the page cache's write-behind for a
# while (`BACKOFF_S`), unless the page cache, tried during an earlier pause,
# was slower still (`_Pace.judge_buffered`). It was 1 GB/s, taken for what a
# copy into page cache costs on a healthy machine; on this VM that copy (into
# fresh memory) runs at 330-430 MB/s, and direct writes that started at
# 200-900 MB/s sent 4 of 6 runs of a 1 GiB write to it (2.5-3.1 s instead
# of 0.6-0.9 s). With 256 MiB/s and judging after 128 MiB: 1 of 8.
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


class _Pace:
    """How fast the disk took one kind of direct I/O lately, and whether `auto` still asks it."""

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
        if mode == "always" or not self.paused:
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
        log.info("direct %s at %.0f MB/s, below %.0f: buffered %s for %.0f s", self.kind,
                 1 / self.sec_per_byte / 1e6, self.floor / 1e6, self.kind, BACKOFF_S)

    def judge_buffered(self, sec_per_byte: float) -> None:
        """A large buffered transfer made while paused took this long a byte."""
        self.buffered_samples += 1
        self.buffered_sec_per_byte += ((sec_per_byte - self.buffered_sec_per_byte)
                                       * max(WEIGHT, 1 / self.buffered_samples))


class BackingIO:
    """The mount's data path; one per mount, used from the FUSE loop thread only.

    `mode` rules direct writes and `read_mode` direct reads: "auto", "always"
    or "never" (`[mount] direct_writes`, `direct_reads`).
    """

    def __init__(self, mode: str = "auto", clock: Callable[[], float] = time.monotonic,
                 read_mode: str = "auto") -> None:
        self.mode = mode
        self.read_mode = read_mode
        self._clock = clock
        self._writes = _Pace("writes", lambda: self._clock(), FLOOR_BYTES_PER_S)
        self._reads = _Pace("reads", lambda: self._clock(), READ_FLOOR_BYTES_PER_S)
        self._buf: mmap.mmap | None = None
        self._rbuf: bytearray | None = None
        self._view: memoryview | None = None
        self._dview: memoryview | None = None
        self.direct_writes = 0
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

    def wants_direct(self, off: int, size: int) -> bool:
        """Whether a write of `size` bytes at `off` would go to the disk past the page cache."""
        return self._writes.allows(self.mode, off, size)

    def write(self, fd: int, off: int, data: bytes, fd_direct: bool) -> tuple[int, bool | None]:
        """Write `data` at `off`; returns (bytes written, whether `fd` now has O_DIRECT).

        `fd_direct` says whether the fd has O_DIRECT set now. The second value
        is None when the fd can never take direct writes (O_APPEND, or a
        filesystem without O_DIRECT): the caller stops asking.
        """
        if not self.wants_direct(off, len(data)):
            if fd_direct:
                _set_direct(fd, False)
            self.buffered_writes += 1
            if not self._writes.paused or len(data) < STREAM_MIN:
                return os.pwrite(fd, data, off), False
            t0 = self._clock()
            n = os.pwrite(fd, data, off)
            if n == len(data):
                self._writes.judge_buffered((self._clock() - t0) / n)
            return n, False
        if not fd_direct:
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:  # the offset is the end, maybe unaligned
                return os.pwrite(fd, data, off), None
            try:
                _set_direct(fd, True)
            except OSError:  # the backing filesystem has no O_DIRECT (EINVAL)
                return os.pwrite(fd, data, off), None
        view = self._aligned(len(data))
        view[:] = data
        t0 = self._clock()
        try:
            n = os.pwritev(fd, [view], off)
        except OSError as e:
            _set_direct(fd, False)  # as the caller will believe when this raises
            if e.errno != errno.EINVAL:
                raise
            # EINVAL: an alignment this device needs and 4 KiB is not
            return os.pwrite(fd, data, off), None
        finally:
            view.release()
        dt = self._clock() - t0
        self.direct_writes += 1
        if self.mode == "auto" and n > 0:
            self._writes.judge(dt / n)
        return n, True

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


def _set_direct(fd: int, on: bool) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
