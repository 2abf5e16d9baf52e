"""The session stamp: how `agentfs run` tells running daemons that a session was registered.

A daemon caches who each process is. A newly registered session root may be
a process the daemon has already seen (`agentfs run` looks around the mount
before it registers, then execs the agent under the same pid), so every
cached answer must be dropped the moment a session is registered, before
the agent's first request. The stamp is `WS/state/run/sessions.stamp`, a
`Beacon`: `agentfs run` publishes a new value (and moves the file's mtime)
before it execs, daemons read the word on every request at the cost of a
memory read. Where the file cannot be mapped, a reader falls back to a
stat() of its mtime per request.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

from agentfs.store.beacon import Beacon

if TYPE_CHECKING:
    from agentfs.workspace import Workspace

log = logging.getLogger(__name__)


def stamp_path(ws: "Workspace") -> Path:
    return ws.run_path / "sessions.stamp"


def announce_session(ws: "Workspace") -> None:
    """Tell running daemons a session was registered: a new stamp value, a newer mtime.

    A random value rather than a counter: two registrations at once need
    no read-modify-write to both be seen as a change.
    """
    path = stamp_path(ws)
    beacon = Beacon.open(path)
    if beacon is not None:
        try:
            beacon.publish(secrets.randbits(63))
        finally:
            beacon.close()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(fd)
        os.utime(fd, ns=(st.st_atime_ns, max(st.st_mtime_ns + 1, time.time_ns())))
    finally:
        os.close(fd)


def _hand_to_owner(path: Path, ws: "Workspace") -> None:
    """The stamp belongs to the workspace's owner, who may run `agentfs run` too.

    A root daemon that creates it first would otherwise lock a non-root
    owner out of announcing sessions.
    """
    try:
        owner = os.stat(ws.root)
        st = os.stat(path, follow_symlinks=False)
        if (st.st_uid, st.st_gid) != (owner.st_uid, owner.st_gid):
            os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)
    except OSError as e:
        log.warning("cannot give %s to the workspace's owner (%s): only root can start agents", path, e)


class StampReader:
    """The current value of a workspace's session stamp; compare it with the last one seen."""

    def __init__(self, ws: "Workspace") -> None:
        self.path = stamp_path(ws)
        self._beacon = Beacon.open(self.path)
        if self._beacon is not None and os.geteuid() == 0:
            _hand_to_owner(self.path, ws)

    def value(self) -> int | None:
        if self._beacon is not None:
            return self._beacon.read()
        try:
            return os.stat(self.path).st_mtime_ns
        except OSError:
            return None

    def close(self) -> None:
        if self._beacon is not None:
            self._beacon.close()
            self._beacon = None
