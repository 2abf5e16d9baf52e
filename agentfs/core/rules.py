"""The governor of a workspace: identity, policy, locks and audit joined once.

Front ends call this and nothing else of the core. Every decision that a
request needs is made here: who the caller is, whether the policy lets them
see or do it, whether another agent's lock forbids it, and the durable
record of what happened (changes and denials alike).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import time
import uuid
from typing import Any, Iterable, Sequence

import trio

from agentfs.core.audit import AuditEvent, AuditLog
from agentfs.core.audit_content import ContentHasher
from agentfs.core.audit_settings import policy_settings
from agentfs.core.governor import Caller, Denied
from agentfs.core.identity import IdentityResolver
from agentfs.core.lock_format import format_lock_xattr, format_locks_listing, parse_lock_xattr
from agentfs.core.lock_types import Access, LockConflict
from agentfs.core.locks import LockManager
from agentfs.core.policy import PolicyHolder
from agentfs.core.rights import Rights
from agentfs.workspace import Workspace

log = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 1.0
COMPONENTS = frozenset({"audit", "locks", "policy"})
# Content hashes are skipped above this size, and for sparse files above the
# second (BLAKE3 hashes ~3-5 GB/s here, so 4 GiB costs about a second of a core).
HASH_MAX_BYTES = 4 << 30
HASH_SPARSE_MIN_BYTES = 64 << 20
# Files up to this size are hashed on the loop thread at release (a few µs):
# handing them to a worker thread would cost more than the hash.
HASH_INLINE_BYTES = 64 << 10


# What a request's letters ask for, parsed once per distinct string (a handful
# in all): every request of every workload asks.
_needed = functools.lru_cache(maxsize=None)(Rights.parse)


@functools.lru_cache(maxsize=None)
def _runaway_kind(rights: str) -> str | None:
    """How a request needing `rights` counts towards runaway detection.

    None (reads), "path" (the path gets content or a name: counted against
    it) or "removal" (it is only taken away: a change, not one against it).
    """
    return "path" if set(rights) & set("wc") else "removal" if "d" in rights else None


class WorkspaceGovernor:
    def __init__(self, ws: Workspace, mount_agent: str | None = None,
                 disable: frozenset[str] = frozenset()) -> None:
        """`disable` (audit, locks, policy) exists to measure each part's cost; never for production."""
        unknown = disable - COMPONENTS
        if unknown:
            raise ValueError(f"unknown component(s) {sorted(unknown)}: choose among {sorted(COMPONENTS)}")
        self.ws = ws
        self.mount_agent = mount_agent
        self.policy_on = "policy" not in disable
        self.locks_on = "locks" not in disable
        self.audit_on = "audit" not in disable
        self.holder = PolicyHolder(ws.policy_path)
        if mount_agent is not None and mount_agent not in self.holder.current.agents:
            from agentfs.errors import MountError

            raise MountError(f"agent {mount_agent!r} is not in {ws.policy_path}: add it, or mount without --agent")
        self.identity = IdentityResolver(self.holder, ws, mount_agent)
        self.locks = LockManager(ws, lambda: self.holder.current.settings("locks"),
                                 session_alive=self.identity.session_alive)
        self.audit = AuditLog(ws, policy_settings(self.holder),
                              daemon_id=f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
                              helper=True)
        self.hasher = ContentHasher()
        self._nursery: trio.Nursery | None = None
        self._cache_seconds: tuple[Any, float] = (None, 60.0)

    # ----- who -----------------------------------------------------------

    def identify(self, uid: int, gid: int, pid: int) -> Caller:
        """The caller's agent. The resolver guards pid reuse and decides how long an answer holds."""
        ident = self.identity.resolve(uid, gid, pid)
        return Caller(ident.agent, uid, gid, pid, ident.session_id, ident.how)

    # ----- may -----------------------------------------------------------

    def visible(self, caller: Caller, path: str, is_dir: bool = True) -> bool:
        return not self.policy_on or self.holder.current.visible(caller.agent, path, is_dir)

    def require(self, caller: Caller, op: str, path: str, rights: str) -> None:
        if not rights or not self.policy_on:
            return
        policy = self.holder.current
        have = policy.rights(caller.agent, path)
        need = _needed(rights)
        if need & ~have:
            # Refusing only `c` reveals nothing (the kernel already heard ENOENT
            # for an invisible name before it asks to create it): say EACCES.
            visible = need == Rights.C or Rights.R in have or policy.visible(caller.agent, path, True)
            code = errno.EACCES if visible else errno.ENOENT
            self._deny(caller, op, path, code, {"need": rights, "have": have.fixed()})
            raise Denied(code, f"{caller.agent} lacks {rights} on {path}")
        kind = _runaway_kind(rights) if self.audit_on else None
        if kind is not None and self.audit.runaway(caller.agent, op, path, caller.uid, caller.pid,
                                                   removal=kind == "removal"):
            self._deny(caller, op, path, errno.EACCES, {"reason": "runaway cooling-off"})
            raise Denied(errno.EACCES, f"{caller.agent} is cooling off after a runaway")

    def may_read(self, caller: Caller, path: str) -> bool:
        return not self.policy_on or Rights.R in self.holder.current.rights(caller.agent, path)

    def hidden(self, caller: Caller, op: str, path: str) -> None:
        """Record that a caller named an existing path it may not see (it is answered ENOENT)."""
        have = self.holder.current.rights(caller.agent, path)
        self._deny(caller, op, path, errno.ENOENT, {"need": "r", "have": have.fixed()})

    def require_subtree(self, caller: Caller, op: str, top: str, paths: Iterable[str]) -> None:
        """Moving a folder moves all it holds: the caller needs r and d on each path inside.

        That is what copying and deleting it would take. Without it, renaming
        a folder would carry files hidden from the caller (or closed to it)
        to a place where its rules give it more.
        """
        policy = self.holder.current
        need = Rights.R | Rights.D
        for p in paths:
            have = policy.rights(caller.agent, p)
            if need & ~have:
                self._deny(caller, op, top, errno.EACCES, {"need": "rd", "have": have.fixed(), "inside": p})
                raise Denied(errno.EACCES, f"{caller.agent} may not move {p} along with {top}")

    def check_linked_move(self, caller: Caller, src_path: str, new_path: str) -> None:
        policy = self.holder.current
        agent = policy.link_leak(src_path, new_path) or policy.link_leak(new_path, src_path)
        if agent is not None:
            self._deny(caller, "rename", src_path, errno.EXDEV,
                       {"reason": f"a file with other names; {agent}'s rights would differ", "new_path": new_path})
            raise Denied(errno.EXDEV, f"moving {src_path} to {new_path} would change {agent}'s rights "
                                      "on a file with other names")

    def check_link(self, caller: Caller, src_path: str, new_path: str) -> None:
        """A hard link must not give anyone more rights on the file than its old name did."""
        agent = self.holder.current.link_leak(src_path, new_path)
        if agent is not None:
            self._deny(caller, "link", src_path, errno.EACCES,
                       {"reason": f"{agent} would gain rights", "new_path": new_path})
            raise Denied(errno.EACCES, f"a link at {new_path} would give {agent} more rights")

    def timeout(self, path: str, strict: bool = False) -> float:
        policy = self.holder.current
        if self._cache_seconds[0] is not policy:
            # Once per policy: this runs for every entry and attribute reply.
            self._cache_seconds = (policy, float(policy.settings("mount").get("cache_seconds", 60.0)))
        cache = self._cache_seconds[1]
        if self.mount_agent is not None or not self.policy_on:
            return cache
        # The kernel's caches are shared by all callers and can only leak
        # visibility (every open or change is still checked here). Agreement
        # among the agents who see the parent suffices (Policy.cacheable) as
        # long as reaching the entry means walking through its parent; where
        # a process may hold a cwd or descriptor inside a directory that moved
        # or whose rules changed, every agent must agree (same_view).
        ok = policy.same_view(path) if strict else policy.cacheable(path)
        return cache if ok else 0.0

    def _deny(self, caller: Caller, op: str, path: str, code: int, details: dict[str, Any]) -> None:
        if not self.audit_on:
            return
        self.audit.record_nowait(AuditEvent(op, caller.agent, caller.uid, caller.pid, path,
                                            result=errno.errorcode.get(code, str(code)), details=details))

    # ----- locks ---------------------------------------------------------

    async def lock_wait(self, caller: Caller, op: str, path: str, access: Access, subtree: bool = False,
                        wait: bool = True) -> None:
        """EAGAIN on another agent's conflicting lock, after [locks].wait_seconds if `wait`.

        Only requests during which the kernel holds no inode lock may wait
        (open, opendir): a waiting setattr, create, unlink, rename, link or
        xattr request keeps its inode (and directory) locked in the kernel,
        which stalls the holder's own writes, creates and even its unlock for
        as long as it waits, so those fail at once.
        """
        if not self.locks_on:
            return
        try:
            await self.locks.wait_clear(caller.agent, path, access, subtree, None if wait else 0.0)
        except LockConflict as e:
            # Recorded as the operation attempted (open, unlink...), as every other refusal is.
            self._deny(caller, op, path, errno.EAGAIN,
                       {"lock": e.lock.agent, "mode": e.lock.mode.value, "on": e.lock.path,
                        "access": access.value})
            raise Denied(errno.EAGAIN, str(e)) from None

    def locked_paths(self) -> tuple[object | None, Sequence[str]]:
        if not self.locks_on:
            return None, ()
        snap = self.locks.snapshot()
        return snap, snap.paths

    def lock_xattr_get(self, caller: Caller, path: str) -> bytes:
        if not self.visible(caller, path):
            raise Denied(errno.ENOENT)
        value = format_lock_xattr(self.locks.covering(path), time.time_ns(), path)
        if not value:
            raise Denied(errno.ENODATA)  # "no such attribute", as for an unset xattr
        return value

    async def lock_xattr_set(self, caller: Caller, path: str, value: bytes) -> None:
        if not self.visible(caller, path):
            raise Denied(errno.ENOENT)
        try:
            mode, ttl, force = parse_lock_xattr(value)
        except ValueError as e:
            raise Denied(errno.EINVAL, str(e)) from None
        self.require(caller, "lock", path, "l")
        try:
            # No wait here: the kernel holds the inode lock of the file while this request
            # is out, so waiting would keep the holder from unlocking it. A refused request
            # keeps its place in the queue for a retry (agentfs lock --wait retries).
            lock = await self.locks.acquire(caller.agent, path, mode, ttl, caller.session_id, 0.0, force,
                                            queue=True)
        except LockConflict as e:
            # EBUSY, not EAGAIN: the kernel turns a setxattr EAGAIN into EOPNOTSUPP.
            self._deny(caller, "lock", path, errno.EBUSY, {"held_by": e.lock.agent, "mode": e.lock.mode.value})
            raise Denied(errno.EBUSY, str(e)) from None
        await self.record(caller, "lock", path, details={"mode": lock.mode.value, "token": lock.token,
                                                        "expires_ns": lock.expires_ns, "force": force})

    async def lock_xattr_remove(self, caller: Caller, path: str) -> None:
        if not self.visible(caller, path):
            raise Denied(errno.ENOENT)
        try:
            lock = await self.locks.release(caller.agent, path)
        except PermissionError as e:
            self._deny(caller, "unlock", path, errno.EPERM, {"reason": str(e)})
            raise Denied(errno.EPERM, str(e)) from None
        if lock is None:
            raise Denied(errno.ENODATA)  # "no such attribute", as for an unset xattr
        await self.record(caller, "unlock", path, details={"mode": lock.mode.value, "token": lock.token})

    def render_locks(self, caller: Caller) -> str:
        policy = self.holder.current
        shown = [lk for lk in self.locks.list() if policy.visible(caller.agent, lk.path, True)]
        text = format_locks_listing(shown)
        return text if text.endswith("\n") else text + "\n"

    # ----- record --------------------------------------------------------

    async def record(self, caller: Caller, op: str, path: str, new_path: str | None = None,
                     result: str = "ok", details: dict[str, Any] | None = None) -> None:
        if self.audit_on:
            # Durable (journaled) before the syscall is acknowledged; committed with the next group.
            await self.audit.change(op, caller.agent, caller.uid, caller.pid, path, new_path, result, details)
        if op == "rename" and new_path is not None:
            self.locks.on_rename(path, new_path)
        elif op == "exchange" and new_path is not None:
            self.locks.on_exchange(path, new_path)
        elif op in ("unlink", "rmdir"):
            self.locks.on_delete(path)

    async def open_write(self, caller: Caller, handle: int, path: str,
                         created: dict[str, Any] | None = None) -> None:
        if not self.audit_on:
            return
        await self.audit.change("open-w" if created is None else "create", caller.agent, caller.uid, caller.pid,
                                path, details=created, handle_add=handle)

    @property
    def hashes_writes(self) -> bool:
        """Write handles keep small files' bytes for `close_write` to hash (FileHandle.content)."""
        return self.audit_on

    def close_write(self, caller: Caller, handle: int, path: str, stats: dict[str, Any], fd: int | None) -> None:
        if not self.audit_on:
            if fd is not None:
                os.close(fd)
            return
        ev = AuditEvent("write", caller.agent, caller.uid, caller.pid, path)
        if fd is None:  # the handle wrote the whole (small) file: hash what it wrote
            self._record_write(handle, ev, stats, self.hasher.hash_chunks(stats["content"]))
            return
        if self._nursery is None or not stats.get("writes"):
            os.close(fd)
            self._record_write(handle, ev, stats, None)
            return
        if stats["size"] <= HASH_INLINE_BYTES:
            try:
                digest = self.hasher.hash_fd(fd, bool(stats.get("past_cache")))
            except OSError as e:
                log.warning("cannot hash %s: %s", path, e)
                digest = None
            finally:
                os.close(fd)
            self._record_write(handle, ev, stats, digest)
            return
        self._nursery.start_soon(self._hash_and_close, handle, ev, stats, fd)

    async def _hash_and_close(self, handle: int, ev: AuditEvent, stats: dict[str, Any], fd: int) -> None:
        try:
            st = os.fstat(fd)
            # Hashing reads every byte, holes included: a 1-byte write at a huge
            # offset must not keep the daemon busy for minutes.
            sparse = st.st_blocks * 512 < st.st_size // 2 and st.st_size > HASH_SPARSE_MIN_BYTES
            if st.st_size > HASH_MAX_BYTES or sparse:
                digest = None
                ev.details = {"hash_skipped": "sparse" if sparse else "larger than "
                              f"{HASH_MAX_BYTES >> 30} GiB"}
            else:
                digest = await self.hasher.hash_fd_async(fd, bool(stats.get("past_cache")))
        except OSError as e:
            log.warning("cannot hash %s: %s", ev.path, e)
            digest = None
        finally:
            os.close(fd)
        self._record_write(handle, ev, stats, digest)

    def _record_write(self, handle: int, ev: AuditEvent, stats: dict[str, Any], digest: str | None) -> None:
        self.audit.close_write(handle, ev, stats["writes"], stats["bytes"], stats["ranges"], stats["size"], digest)

    # ----- search --------------------------------------------------------

    async def search(self, caller: Caller, query: str) -> tuple[list[Any], str]:
        from agentfs.search.client import SearchUnavailable, query_async

        try:
            hits = await query_async(self.ws.root, query, k=10, agent=caller.agent)
        except SearchUnavailable:
            return [], "the search sidecar is not running: start it with `agentfs index`"
        except Exception as e:  # the sidecar's trouble must not become an EIO
            log.warning("search for %r failed: %s", query, e)
            return [], f"search failed: {e}"
        policy = self.holder.current
        return [h for h in hits if Rights.R in policy.rights(caller.agent, h.path)], ""

    # ----- lifecycle -----------------------------------------------------

    def reload(self) -> None:
        self.holder.reload()

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.audit.run)
            nursery.start_soon(self._housekeeping)
            task_status.started()

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(HOUSEKEEPING_SECONDS)
            try:
                # Parsing a large policy takes tens of ms: not on the FUSE loop.
                await trio.to_thread.run_sync(self.holder.maybe_reload)
                for lk in await self.locks.expire():
                    self.audit.record_nowait(AuditEvent("lock-expired", lk.agent, -1, 0, lk.path,
                                                        details={"mode": lk.mode.value, "token": lk.token}))
                self.identity.forget_dead()
            except Exception:
                log.exception("housekeeping failed; retrying")

    async def aclose(self) -> None:
        await self.audit.aclose()
        self.locks.close()
        self.identity.close()
