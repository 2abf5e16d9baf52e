"""Clearing setuid/setgid after a change by an unprivileged caller, as the kernel does natively.

The daemon makes every change as root, which keeps the bits; the kernel's
FUSE code clears them only for cached writes and explicit truncates, and only
by the older rule (setgid with group execute). Writes through write-only
handles (which bypass the cache), truncation at open, and setgid files of a
group the caller is not in would keep bits that a native directory drops.
"""

from __future__ import annotations

import logging
import os
import stat

from agentfs.core.governor import Caller
from agentfs.store.backing import proc_path

log = logging.getLogger(__name__)


def drop_setid(fd: int, caller: Caller) -> None:
    """Clear what a write or truncate by `caller` clears natively; nothing for root.

    setuid always goes; setgid goes with group execute, or when the caller
    is not in the file's group (without group execute it marks mandatory
    locking, which a group member may keep). Root stands for CAP_FSETID.
    `fd` may be an O_PATH descriptor.
    """
    if caller.uid == 0:
        return
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        return
    drop = st.st_mode & stat.S_ISUID
    if st.st_mode & stat.S_ISGID and (st.st_mode & stat.S_IXGRP or not _in_group(caller, st.st_gid)):
        drop |= stat.S_ISGID
    if drop:
        try:
            os.chmod(proc_path(fd), stat.S_IMODE(st.st_mode) & ~drop)
        except OSError as e:  # the change itself is done: never fail it afterwards
            log.warning("cannot clear setuid/setgid of inode %d: %s", st.st_ino, e)


def _in_group(caller: Caller, gid: int) -> bool:
    """The caller's group or one of its supplementary groups (read from /proc: rare path)."""
    if gid == caller.gid:
        return True
    try:
        with open(f"/proc/{caller.pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return str(gid).encode() in line.split()[1:]
    except OSError:
        pass
    return False
