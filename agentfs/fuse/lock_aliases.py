"""The locked names of a hard-linked file that this daemon never looked up.

Locks are kept by path. The daemon knows a file's names only as the kernel
looks them up, so after a restart, or through a second mount of the same
workspace, a lock on `a/x` would not stop an open of `b/y`, another name of
the same file and the only one this daemon has seen. LockedLinks maps each
locked file that has several links to its backing identity, so that a
request through any of its names finds the lock. A lock on a folder still
covers only the names below that folder.
"""

from __future__ import annotations

import os
import stat as stat_mod
import time
from typing import Sequence

import pyfuse3

from agentfs.core.governor import OpenGovernor
from agentfs.fuse.inodes import Inode, InodeTable
from agentfs.store.walk import lstat_below

# A mapping older than this is rebuilt even if nothing this daemon saw changed:
# another daemon of the workspace may have changed what a locked path names.
MAX_AGE_S = 2.0


class LockedLinks:
    """(dev, ino) → the locked paths naming that file; rebuilt when the locks or the names change."""

    def __init__(self) -> None:
        self._key: tuple[object, int] | None = None
        self._built = 0.0
        self._by_file: dict[tuple[int, int], list[str]] = {}

    def others(self, gov: OpenGovernor, inodes: InodeTable, node: Inode, known: Sequence[str]) -> list[str]:
        """Locked paths of `node`'s file beyond the names in `known`.

        Costs nothing without locks, and one fstat per request while some
        path is locked; only a file with several links reads the mapping.
        """
        lock_key, locked = gov.locked_paths()
        if not locked or node.is_dir or os.fstat(inodes.fd(node)).st_nlink < 2:
            return []
        now = time.monotonic()
        key = (lock_key, inodes.removals)
        if key != self._key or now - self._built > MAX_AGE_S:
            self._by_file = _map_locked_files(inodes.fd(inodes.get(pyfuse3.ROOT_INODE)), locked)
            self._key, self._built = key, now
        return [p for p in self._by_file.get((node.dev, node.backing_ino), ()) if p not in known]


def _map_locked_files(root_fd: int, locked: Sequence[str]) -> dict[tuple[int, int], list[str]]:
    out: dict[tuple[int, int], list[str]] = {}
    for path in locked:
        st = lstat_below(root_fd, path)
        if st is not None and st.st_nlink > 1 and not stat_mod.S_ISDIR(st.st_mode):
            out.setdefault((st.st_dev, st.st_ino), []).append(path)
    return out
