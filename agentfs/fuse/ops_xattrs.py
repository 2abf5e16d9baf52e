"""Handlers of extended attributes and access(); user.* passes through, user.agentfs.* is ours."""

from __future__ import annotations

import errno
import os
import stat as stat_mod

import pyfuse3

from agentfs.core.governor import Access, Denied
from agentfs.fuse.inodes import Inode
from agentfs.fuse.requests import handler
from agentfs.store.backing import proc_path


class XattrOps:
    def _xattr_target(self, inode: int, name: bytes | None, reading: bool = False) -> tuple[Inode, str]:
        if name is not None and not name.startswith(b"user."):
            # Only user.* passes through: reading security.* finds nothing, anything else is unsupported.
            missing = reading and name.startswith(b"security.")
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR if missing else errno.EOPNOTSUPP)
        node = self.inodes.get(inode)
        if node.kind == stat_mod.S_IFLNK:
            raise pyfuse3.FUSEError(errno.EPERM if name is not None else pyfuse3.ENOATTR)
        return node, proc_path(self._fd(node))

    @handler
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if name == b"security.capability":
            # The kernel asks this before every write(); answer without a syscall.
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        if self._virtual(inode):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        if self.virtual is not None and name.startswith(b"user.agentfs."):
            return await self.virtual.get_control_xattr(inode, name, self._caller(ctx), self._path(inode))
        path = self._path(inode)
        caller = self._caller(ctx)
        if not self.gov.visible(caller, path):
            raise pyfuse3.FUSEError(errno.ENOENT)
        # Names other than user.* are answered alike for everyone (before the
        # rights check): `ls -l` asks security.selinux of folders an agent
        # sees only because they lead to its paths, and must not hear EACCES.
        node, target = self._xattr_target(inode, name, reading=True)
        self.gov.require(caller, "getxattr", path, "r")
        if node.kind == stat_mod.S_IFLNK:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return os.getxattr(target, os.fsdecode(name))

    @handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        if self._virtual(inode):
            return []
        node = self.inodes.get(inode)
        path = self._path(inode)
        caller = self._caller(ctx)
        if not self.gov.visible(caller, path):
            raise pyfuse3.FUSEError(errno.ENOENT)
        # Names are content too: without `r` there are none to show, as a
        # listing shows only the entries one may see (not an error: `ls -l`
        # asks this of every folder on the way to an agent's own).
        if node.kind == stat_mod.S_IFLNK or not self.gov.may_read(caller, path):
            return []
        names = os.listxattr(proc_path(self._fd(node)))
        return [os.fsencode(n) for n in names if n.startswith("user.")]

    @handler
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        if self._virtual(inode):
            raise pyfuse3.FUSEError(errno.EROFS)
        path = self._path(inode)
        caller = self._caller(ctx)
        if self.virtual is not None and name.startswith(b"user.agentfs."):
            return await self.virtual.set_control_xattr(inode, name, value, caller, path)
        if not self.gov.visible(caller, path):
            raise pyfuse3.FUSEError(errno.ENOENT)
        self.gov.require(caller, "setxattr", path, "w")
        try:
            await self._lock_wait_names(caller, "setxattr", inode, path, Access.WRITE, wait=False)
        except Denied as e:
            # Linux hands a setxattr EAGAIN to the caller as EOPNOTSUPP ("not supported"): say busy.
            raise pyfuse3.FUSEError(errno.EBUSY if e.errno == errno.EAGAIN else e.errno) from None
        _, target = self._xattr_target(inode, name)
        os.setxattr(target, os.fsdecode(name), value)
        await self.gov.record(caller, "setxattr", path, details={"name": os.fsdecode(name)})

    @handler
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if self._virtual(inode):
            raise pyfuse3.FUSEError(errno.EROFS)
        path = self._path(inode)
        caller = self._caller(ctx)
        if self.virtual is not None and name.startswith(b"user.agentfs."):
            return await self.virtual.remove_control_xattr(inode, name, caller, path)
        if not self.gov.visible(caller, path):
            raise pyfuse3.FUSEError(errno.ENOENT)
        self.gov.require(caller, "removexattr", path, "w")
        await self._lock_wait_names(caller, "removexattr", inode, path, Access.WRITE, wait=False)
        _, target = self._xattr_target(inode, name)
        os.removexattr(target, os.fsdecode(name))
        await self.gov.record(caller, "removexattr", path, details={"name": os.fsdecode(name)})

    @handler
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        if self._virtual(inode):
            return not (mode & os.W_OK)
        path = self._path(inode)
        caller = self._caller(ctx)
        if not self.gov.visible(caller, path):
            raise pyfuse3.FUSEError(errno.ENOENT)
        need = ("r" if mode & os.R_OK else "") + ("w" if mode & os.W_OK else "")
        try:
            self.gov.require(caller, "access", path, need)
        except Denied:
            return False
        return True
