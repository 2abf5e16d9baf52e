"""A shared-memory word for change notification between processes of one host."""

from __future__ import annotations

import logging
import mmap
import os
import struct
from pathlib import Path

log = logging.getLogger(__name__)


class Beacon:
    """An 8-byte word in a shared file mapping that one process sets and others poll.

    A read costs ~0.2 µs and no system call, against ~5 µs for `PRAGMA
    data_version` or ~2 µs for a stat(): cheap enough for a check on every
    request. A write lands in the page-cache page every mapping shows, so
    once `publish` returns, every process on the host reads the new value.
    Users: the lock table's generation (`locks.gen`) and the session stamp
    (`sessions.stamp`). The file is never truncated (a mapping would fault
    past its end). Host-local by nature.
    """

    _FMT = struct.Struct("<q")

    def __init__(self, path: Path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < self._FMT.size:
                os.ftruncate(fd, self._FMT.size)
            self._mm = mmap.mmap(fd, self._FMT.size)
        finally:
            os.close(fd)

    @classmethod
    def open(cls, path: Path) -> "Beacon | None":
        """The beacon at `path`, or None if unusable (its readers then fall back to a slower check)."""
        try:
            return cls(path)
        except OSError as e:
            log.warning("beacon %s unusable (%s): its readers fall back to a slower check", path, e)
            return None

    def read(self) -> int:
        return self._FMT.unpack_from(self._mm)[0]

    def publish(self, value: int) -> None:
        self._FMT.pack_into(self._mm, 0, value)

    def close(self) -> None:
        self._mm.close()
