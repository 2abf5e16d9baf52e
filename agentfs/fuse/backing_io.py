"""How file data moves between a handle and its backing file, and what page cache it leaves.

A pass-through keeps two page caches of whatever goes through it: the kernel's
copy on the mount's side and the backing filesystem's own. Readers are served
from the mount's side (every regular file is opened with keep_cache), so the
backing copy of what they stream is a duplicate; and a write-only handle has
no mount-side cache at all (FOPEN_DIRECT_IO), so the backing copy of what it
streams is the only reason the write costs fresh memory. On this project's
machines fresh page-cache memory is the slow part of moving a gigabyte (the
VM's host supplies it at a few hundred MB/s when it is not in the mood), so:

- reads land in one reused buffer, and a large read drops the backing pages
  it just served (POSIX_FADV_DONTNEED);
- a large, block-aligned write goes to the backing file with O_DIRECT, from
  one reused aligned buffer, while the disk takes such writes at least as
  fast as memory would (`FLOOR_BYTES_PER_S`, a moving average over recent
  direct writes: single writes stall now and then, 1 in 1,000 here). A
  slower disk sends the mount back to buffered writes for `BACKOFF_S`, so a
  slow disk keeps the page cache's write-behind and never holds the loop.

Small or unaligned writes, O_APPEND and O_DIRECT handles are untouched. Data
and its durability are the same either way: a direct write is on the disk
when it returns, and fsync still flushes metadata.
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
# A direct write slower than this takes longer than a copy into page cache on
# any healthy machine: the disk is not keeping up, write-behind is better.
FLOOR_BYTES_PER_S = 1 << 30
BACKOFF_S = 10.0
# The moving average weighs each new direct write this much, and judges the
# disk only after this many (a file's first writes allocate its blocks).
WEIGHT = 1 / 32
MIN_SAMPLES = 4


class BackingIO:
    """The mount's data path; one per mount, used from the FUSE loop thread only."""

    def __init__(self, mode: str = "auto", clock: Callable[[], float] = time.monotonic) -> None:
        self.mode = mode
        self._clock = clock
        self._paused_until = 0.0
        self._paused = False
        self._sec_per_byte = 0.0
        self._samples = 0
        self._buf: mmap.mmap | None = None
        self._rbuf: bytearray | None = None
        self._view: memoryview | None = None
        self.direct_writes = 0
        self.buffered_writes = 0

    def read(self, fd: int, off: int, size: int) -> memoryview:
        """The bytes at `off`, in a buffer that the next read reuses.

        pyfuse3 copies what a read handler returns into its reply before any
        other request runs, so one buffer serves every read: no fresh memory
        per request (a new 1 MiB `bytes` each time is what makes slow runs
        slow here: its pages come from the host on first touch).
        """
        if self._rbuf is None or len(self._rbuf) < size:
            self._rbuf = bytearray(max(size, 1 << 20))
        view = memoryview(self._rbuf)[:size]
        n = os.preadv(fd, [view], off)
        if n >= STREAM_MIN:
            os.posix_fadvise(fd, off, n, os.POSIX_FADV_DONTNEED)
        return view[:n]

    def wants_direct(self, off: int, size: int) -> bool:
        if self.mode == "never" or size < STREAM_MIN or (off | size) & (ALIGN - 1):
            return False
        if self.mode == "always":
            return True
        if not self._paused:
            return True
        if self._clock() < self._paused_until:
            return False
        self._paused, self._samples = False, 0  # judge the disk afresh
        return True

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
            return os.pwrite(fd, data, off), False
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
            self._judge(dt / n)
        return n, True

    def _judge(self, sec_per_byte: float) -> None:
        self._samples += 1
        if self._samples == 1:
            self._sec_per_byte = sec_per_byte
        else:
            self._sec_per_byte += (sec_per_byte - self._sec_per_byte) * WEIGHT
        if self._samples >= MIN_SAMPLES and self._sec_per_byte * FLOOR_BYTES_PER_S > 1:
            self._paused, self._paused_until = True, self._clock() + BACKOFF_S
            log.info("direct writes at %.0f MB/s, below %.0f: buffered writes for %.0f s",
                     1 / self._sec_per_byte / 1e6, FLOOR_BYTES_PER_S / 1e6, BACKOFF_S)

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
