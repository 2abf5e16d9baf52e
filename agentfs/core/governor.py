"""The one place where front ends ask the core: who is this, may they, and record it.

The FUSE operations (and later an MCP server) call a Governor; it joins
identity, policy, locks and audit, so that the rules live here once and the
front ends only translate. `OpenGovernor` allows everything and records
nothing: a bare pass-through, used to measure our own cost against it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

from agentfs.core.lock_types import Access

__all__ = ["Access", "Caller", "Denied", "OpenGovernor"]


@dataclass(frozen=True)
class Caller:
    """Who a request came from; kept on file handles since read/write carry no caller."""

    agent: str
    uid: int
    gid: int
    pid: int
    session_id: int | None = None
    how: str = ""  # mount | session | uid | default: how the agent was recognised


class Denied(Exception):
    """A rule refused the operation; `errno` is what the caller sees (EACCES, ENOENT, EAGAIN...)."""

    def __init__(self, errno_: int, reason: str = "") -> None:
        super().__init__(reason)
        self.errno = errno_
        self.reason = reason


class OpenGovernor:
    """No policy, no locks, no audit: the bare pass-through."""

    # Whether write handles should keep what they write for the release's hash.
    hashes_writes = False

    def __init__(self, cache_seconds: float = 60.0) -> None:
        self.cache_seconds = cache_seconds

    def identify(self, uid: int, gid: int, pid: int) -> Caller:
        return Caller("*", uid, gid, pid)

    def visible(self, caller: Caller, path: str, is_dir: bool = True) -> bool:
        """False when `path` is invisible to `caller` (ENOENT, absent from listings)."""
        return True

    def require(self, caller: Caller, op: str, path: str, rights: str) -> None:
        """Raise Denied unless `caller` holds every right letter in `rights` on `path`."""

    def may_read(self, caller: Caller, path: str) -> bool:
        """Whether `caller` has `r` on `path`; nothing is recorded (for answers that just show less)."""
        return True

    def check_link(self, caller: Caller, src_path: str, new_path: str) -> None:
        """Raise Denied if a hard link would carry a file where someone gains rights on it."""

    def check_linked_move(self, caller: Caller, src_path: str, new_path: str) -> None:
        """Raise Denied(EXDEV) if moving one name of a file that has others changes anyone's rights.

        The file stays under its other names, so such a move would either
        open it to new readers or leave it open to old ones where its mover
        thinks it private. EXDEV makes `mv` copy instead: the copy is a new
        file, and the other names keep the old one.
        """

    def timeout(self, path: str, strict: bool = False) -> float:
        """Kernel entry/attr cache time for `path`: 0 where agents see it differently.

        `strict`: the entry lies in a directory that moved or whose policy changed
        while processes may hold references (cwd, descriptors) inside it.
        """
        return self.cache_seconds

    async def lock_wait(self, caller: Caller, op: str, path: str, access: Access, subtree: bool = False,
                        wait: bool = True) -> None:
        """Wait for (unless wait=False), then raise Denied(EAGAIN) on, another agent's conflicting lock.

        `op` names the request (open, unlink...) for the record of a refusal.
        """

    def locked_paths(self) -> tuple[object | None, Sequence[str]]:
        """Every path that has a lock, and a key that changes whenever that list may have.

        For front ends that must map locks onto their own objects (the other
        names of a hard-linked file) and cache the mapping.
        """
        return None, ()

    async def record(self, caller: Caller, op: str, path: str, new_path: str | None = None,
                     result: str = "ok", details: dict[str, Any] | None = None) -> None:
        """Record a change durably before the syscall is acknowledged."""

    async def open_write(self, caller: Caller, handle: int, path: str,
                         created: dict[str, Any] | None = None) -> None:
        """Note durably that `handle` may write `path` (for crash forensics).

        `created`: the handle made the file; its creation (with these details) is the note.
        """

    def close_write(self, caller: Caller, handle: int, path: str, stats: dict[str, Any], fd: int | None) -> None:
        """Record the aggregated writes of a handle at release; owns `fd` (a dup, for hashing).

        `fd` is None when `stats["content"]` holds the file's whole content (FileHandle.content).
        """
        if fd is not None:
            os.close(fd)

    async def run(self, task_status: Any = None) -> None:
        """Background work (audit writer, lock expiry, policy reload); none here."""
        if task_status is not None:
            task_status.started()

    async def aclose(self) -> None:
        """Flush what is queued before the daemon exits."""
