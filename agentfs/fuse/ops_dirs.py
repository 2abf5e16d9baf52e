"""Handlers of directories as such: opendir, readdir (stable offsets), statfs."""

from __future__ import annotations

import errno
import os
import stat as stat_mod

import pyfuse3
import trio

from agentfs.core.governor import Access
from agentfs.fuse.handles import DirHandle
from agentfs.fuse.inodes import Inode
from agentfs.fuse.requests import handler
from agentfs.store.backing import join


class DirOps:
    @handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        caller = self._caller(ctx)
        if self._virtual(inode):
            return await self.virtual.opendir(inode, caller, self._new_fh)
        self.inodes.get(inode)
        path = self._path(inode)
        if not self.gov.visible(caller, path):
            raise pyfuse3.FUSEError(errno.ENOENT)
        await self.gov.lock_wait(caller, "opendir", path, Access.READ)
        return self._new_fh(DirHandle(inode, caller, path))

    @handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        h = self._handles.get(fh)
        if not isinstance(h, DirHandle):
            raise pyfuse3.FUSEError(errno.EBADF)
        if self.virtual is not None and self.virtual.owns(h.ino):
            return await self.virtual.readdir(h, start_id, token)
        node = self.inodes.get(h.ino)
        dfd = self._fd(node)
        if start_id == 0 or h.names is None:
            # A snapshot per pass keeps offsets stable under concurrent changes;
            # rewinddir (offset 0) takes a new one, as POSIX asks.
            lfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
            try:
                names = os.listdir(lfd)
            finally:
                os.close(lfd)
            if h.ino == pyfuse3.ROOT_INODE and self.virtual is not None:
                names = [n for n in names if not self.virtual.reserved(n)] + self.virtual.root_names()
            h.names = [".", ".."] + names
        names = h.names
        for i in range(start_id, len(names)):
            nm = names[i]
            if nm in (".", ".."):
                ino = h.ino if nm == "." or h.ino == pyfuse3.ROOT_INODE else self._parent_of(node)
                target = self.inodes.get(ino)
                st = os.stat(self._fd(target))
                if not pyfuse3.readdir_reply(token, os.fsencode(nm), self._entry(target, st, h.path), i + 1):
                    return
                continue
            if h.ino == pyfuse3.ROOT_INODE and self.virtual is not None and self.virtual.reserved(nm):
                attr = await self.virtual.root_entry(nm, h.caller)
                if not pyfuse3.readdir_reply(token, os.fsencode(nm), attr, i + 1):
                    return
                continue
            try:
                st = os.stat(nm, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            path = join(h.path, nm)
            if not self.gov.visible(h.caller, path, stat_mod.S_ISDIR(st.st_mode)):
                continue
            child = self.inodes.remember(h.ino, nm, st)
            if not pyfuse3.readdir_reply(token, os.fsencode(nm), self._entry(child, st, path), i + 1):
                self.inodes.forget(child.ino, 1)
                return

    def _parent_of(self, node: Inode) -> int:
        for parent, _ in node.links:
            return parent
        return pyfuse3.ROOT_INODE

    @handler
    async def releasedir(self, fh: int) -> None:
        self._handles.pop(fh, None)

    @handler
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        h = self._handles.get(fh)
        if not isinstance(h, DirHandle) or self._virtual(h.ino):
            return
        dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._fd(self.inodes.get(h.ino)))
        try:
            await trio.to_thread.run_sync(os.fsync, dfd)
        finally:
            os.close(dfd)

    @handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = os.statvfs(self._fd(self.inodes.get(pyfuse3.ROOT_INODE)))
        out = pyfuse3.StatvfsData()
        for f in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                  "f_favail", "f_namemax"):
            setattr(out, f, getattr(sv, f))
        return out
