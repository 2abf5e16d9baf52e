"""Handlers of open files: open, create, read, write, release, fsync.

The agent is resolved at open and kept on the handle: read, write and
release carry no caller.
"""

from __future__ import annotations

import errno
import os
import re
import stat as stat_mod
from typing import Any

import pyfuse3
import trio

from agentfs.core.governor import Access, Caller
from agentfs.fuse.handles import FileHandle
from agentfs.fuse.inodes import Inode
from agentfs.fuse.requests import OPEN_DROP, SUID_SGID, fd_for_write, handler
from agentfs.fuse.setid import drop_setid
from agentfs.store.backing import proc_path


def _open_taken_name(name: str, flags: int, dir_fd: int) -> int:
    """Open a name that create() found taken, if it is a regular file.

    The name may have become a FIFO or a device since the kernel's lookup: opened
    here as root, a FIFO would block the whole daemon and a device would be served
    through a regular file handle. Those answer ENXIO (as opening a socket does), a
    directory EISDIR (as open(O_CREAT) of one does natively).
    """
    def check(mode: int) -> None:
        if not stat_mod.S_ISREG(mode):
            e = errno.EISDIR if stat_mod.S_ISDIR(mode) else errno.ENXIO
            raise OSError(e, os.strerror(e))

    check(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    fd = os.open(name, flags | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dir_fd)
    try:
        check(os.fstat(fd).st_mode)  # swapped in between: never served
        if not flags & os.O_NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kernel_at_least(major: int, minor: int, release: str | None = None) -> bool:
    m = re.match(r"(\d+)\.(\d+)", release if release is not None else os.uname().release)
    return m is not None and (int(m.group(1)), int(m.group(2))) >= (major, minor)


# Kernels before 6.6 invalidate no other handle's cached pages on a direct
# write, and later ones at first only before the write (a reader racing it
# could cache the old bytes again). 6.18 is where readers racing thousands of
# appends were checked never to go stale; older kernels keep the cached path.
WRITE_ONLY_DIRECT = _kernel_at_least(6, 18)


class FileOps:
    @handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if self._virtual(inode):
            return await self.virtual.open(inode, flags, self._caller(ctx), self._new_fh)
        node = self.inodes.get(inode)
        path = self._path(inode)
        caller = self._caller(ctx)
        if not self.gov.visible(caller, path, False):
            raise pyfuse3.FUSEError(errno.ENOENT)
        writable = fd_for_write(flags)
        acc = flags & os.O_ACCMODE
        need = ("r" if acc in (os.O_RDONLY, os.O_RDWR) else "") + ("w" if writable else "")
        self.gov.require(caller, "open", path, need)
        await self._lock_wait_names(caller, "open", inode, path, Access.WRITE if writable else Access.READ)
        fd = os.open(proc_path(self._fd(node)), (flags & ~OPEN_DROP) | os.O_CLOEXEC)
        return await self._opened(fd, node, caller, path, flags, writable)

    async def _opened(self, fd: int, node: Inode, caller: Caller, path: str, flags: int,
                      writable: bool, created: dict[str, Any] | None = None) -> pyfuse3.FileInfo:
        """A handle for `fd`; `created` (the details of a file just made) makes its record the create."""
        direct = bool(flags & os.O_DIRECT)
        # A write-only handle goes past the kernel's page cache (FOPEN_DIRECT_IO):
        # nothing can read through it, so caching its pages only costs one more
        # copy of every write and a page cache the size of the file (a 1 GiB
        # write took 0.6-0.7 s instead of 0.9-2.9 s). mmap of a write-only fd is
        # refused (EACCES) before it reaches us, as natively. Only on kernels that
        # drop other handles' cached pages of the range such a write covers
        # (WRITE_ONLY_DIRECT): older ones would leave readers stale.
        write_only = (flags & os.O_ACCMODE) == os.O_WRONLY
        h = FileHandle(fd, node.ino, caller, path, writable, direct, io=self.io, write_only=write_only,
                       node=node, chunks=[] if writable and self.gov.hashes_writes else None)
        fh = self._new_fh(h)
        try:
            if writable:
                await self.gov.open_write(caller, fh, path, created)
            if flags & os.O_TRUNC and created is None:
                node.changes += 1
                drop_setid(fd, caller)  # the backing open truncated as root
                await self.gov.record(caller, "truncate", path, details={"size": 0, "on": "open"})
        except BaseException:
            del self._handles[fh]
            os.close(fd)
            raise
        # Other handles keep the page cache: the kernel sends a client's O_DIRECT I/O
        # straight to us anyway, and FOPEN_DIRECT_IO on a readable handle would only
        # break mmap of the file (ENODEV), which works natively.
        return pyfuse3.FileInfo(fh=fh, direct_io=WRITE_ONLY_DIRECT and write_only, keep_cache=not direct)

    @handler
    async def create(self, parent: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        pnode, nm, path, caller = self._child_of(parent, name, ctx)
        self._reject_virtual_name(parent, nm)
        pfd = self._fd(pnode)
        self.gov.require(caller, "create", path, "c")
        await self.gov.lock_wait(caller, "create", path, Access.WRITE, wait=False)
        base = (flags & ~OPEN_DROP) | os.O_CLOEXEC | os.O_NOFOLLOW
        created = True
        try:
            fd = os.open(nm, base | os.O_CREAT | os.O_EXCL, stat_mod.S_IMODE(mode), dir_fd=pfd)
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            # The name exists after all (hidden from the caller, or made meanwhile): c on
            # the name is no right to open, truncate or append to someone else's file.
            acc = flags & os.O_ACCMODE
            need = ("r" if acc in (os.O_RDONLY, os.O_RDWR) else "") + ("w" if fd_for_write(flags) else "")
            self.gov.require(caller, "open", path, need)
            created = False
            fd = _open_taken_name(nm, base, pfd)
        try:
            if created:
                uid, gid = self._owner(pfd, ctx)
                os.fchown(fd, uid, gid)
                if mode & SUID_SGID:  # chown cleared them; the kernel already vetted the mode
                    os.fchmod(fd, stat_mod.S_IMODE(mode))
            st = os.fstat(fd)
            node = self.inodes.remember(parent, nm, st)
        except BaseException:
            os.close(fd)
            raise
        made = {"mode": oct(stat_mod.S_IMODE(st.st_mode))} if created else None
        fi = await self._opened(fd, node, caller, path, flags, created or fd_for_write(flags), made)
        return fi, self._entry(node, st, path)

    @handler
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        # A memoryview of a reused buffer: pyfuse3 replies with its bytes before
        # this task yields, so nothing may await between the read and the return.
        h = self._handles.get(fh)
        if not isinstance(h, FileHandle):
            if self.virtual is not None and h is not None:
                return await self.virtual.read(h, off, size)
            raise pyfuse3.FUSEError(errno.EBADF)
        return h.read(off, size)

    @handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._file(fh)
        if not h.writable:
            raise pyfuse3.FUSEError(errno.EBADF)
        return h.write(off, buf)

    async def flush(self, fh: int) -> None:
        """Not implemented, on purpose: nothing is pending at close() here.

        ENOSYS once makes the kernel stop sending FLUSH for the mount
        (close() then succeeds at once), which saves a round trip on every
        close(); release still follows, as before, asynchronously.
        """
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @handler
    async def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if not isinstance(h, FileHandle):
            if self.virtual is not None and h is not None:
                self.virtual.release(h)
            return
        try:
            if h.writable:
                size = os.fstat(h.fd).st_size
                stats = {"writes": h.writes, "bytes": h.nbytes, "ranges": h.ranges, "size": size,
                         "past_cache": h.past_cache}
                content = h.content(size) if h.writes else None
                if content is not None:
                    stats["content"] = content
                self.gov.close_write(h.caller, fh, h.path, stats, None if content is not None else os.dup(h.fd))
        finally:
            os.close(h.fd)

    @handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self._file(fh)
        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, h.fd)
        # A write-back failure that writing behind met on this fd (which took it from the kernel)
        late = h.stream.take_error()
        if late is not None:
            raise pyfuse3.FUSEError(late.errno or errno.EIO)
