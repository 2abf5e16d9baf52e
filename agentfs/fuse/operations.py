"""The FUSE operations: thin handlers that translate requests for the core.

Every handler is wrapped so that any failure becomes an errno: an exception
escaping a pyfuse3 handler would end the main loop and the mount with it.
Syscalls on the backing tree run inline on the trio thread (measured faster
than threads); only fsync and what the governor hands to threads may wait.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as stat_mod
import threading
from typing import Any, Sequence

import pyfuse3

from agentfs.core.governor import Access, Caller, OpenGovernor
from agentfs.core.policy import stream_writes
from agentfs.fuse.backing_io import BackingIO
from agentfs.fuse.handles import DirHandle, FileHandle
from agentfs.fuse.inodes import Inode, InodeTable, Stale
from agentfs.fuse.lock_aliases import LockedLinks
from agentfs.fuse.ops_dirs import DirOps
from agentfs.fuse.ops_files import FileOps
from agentfs.fuse.ops_xattrs import XattrOps
from agentfs.fuse.requests import AT_FDCWD, SUID_SGID, check_name, handler, log
from agentfs.fuse.setid import drop_setid
from agentfs.store.backing import join, proc_path, renameat2, utimensat
from agentfs.store.walk import walk_below


class Operations(FileOps, DirOps, XattrOps, pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, root_fd: int, governor: OpenGovernor | None = None, virtual: Any = None,
                 inodes: InodeTable | None = None) -> None:
        super().__init__()
        self.inodes = inodes or InodeTable(root_fd)
        self._locked_links = LockedLinks()
        self.gov = governor or OpenGovernor()
        self.virtual = virtual
        self._handles: dict[int, FileHandle | DirHandle] = {}
        self._next_fh = 1
        self.io = BackingIO()
        holder = getattr(self.gov, "holder", None)
        if holder is not None:
            self._follow_mount_settings(holder.current)
            holder.add_listener(self._follow_mount_settings)
            holder.add_listener(lambda _policy: self._forget_kernel_entries())

    def _follow_mount_settings(self, policy: Any) -> None:
        mount = policy.settings("mount")
        self.io.mode = stream_writes(mount)
        self.io.read_mode = str(mount.get("direct_reads", "auto"))

    def _forget_kernel_entries(self) -> None:
        """After a policy change, make the kernel forget every entry it cached.

        Their timeouts were chosen under the old policy: an entry every agent
        saw alike was cached long, and would keep showing a path to an agent
        that may no longer see it. invalidate_entry blocks while a related
        request is in flight, so it runs in a thread of its own.
        """
        for _ in range(3):
            try:
                entries = self.inodes.make_strict()
                break
            except RuntimeError:  # the table changed under us; take another snapshot
                continue
        else:
            return

        def forget() -> None:
            for parent, name in entries:
                try:
                    pyfuse3.invalidate_entry(parent, os.fsencode(name))
                except OSError:
                    pass  # the kernel no longer knows it: nothing to forget
                except Exception:
                    log.exception("cannot invalidate %r in %d", name, parent)
                    return

        threading.Thread(target=forget, name="agentfs-forget", daemon=True).start()

    # ----- helpers -------------------------------------------------------

    def _caller(self, ctx: pyfuse3.RequestContext) -> Caller:
        return self.gov.identify(ctx.uid, ctx.gid, ctx.pid)

    def _path(self, ino: int) -> str:
        """The policy path of an inode: where the kernel says it is, else the names we know."""
        p = self.inodes.real_path(self.inodes.get(ino)) or self.inodes.path(ino)
        if p is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return p

    def _fd(self, node: Inode) -> int:
        return self.inodes.fd(node)

    def _entry(self, node: Inode, st: os.stat_result, path: str) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        e.generation = 0
        t = self.gov.timeout(path, node.strict)
        e.entry_timeout = t
        e.attr_timeout = t
        e.st_mode = st.st_mode
        e.st_nlink = st.st_nlink
        e.st_uid = st.st_uid
        e.st_gid = st.st_gid
        e.st_rdev = st.st_rdev
        e.st_size = st.st_size
        e.st_blksize = st.st_blksize
        e.st_blocks = st.st_blocks
        e.st_atime_ns = st.st_atime_ns
        e.st_mtime_ns = st.st_mtime_ns
        e.st_ctime_ns = st.st_ctime_ns
        return e

    def _new_fh(self, h: FileHandle | DirHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = h
        return fh

    def _file(self, fh: int) -> FileHandle:
        h = self._handles.get(fh)
        if not isinstance(h, FileHandle):
            raise pyfuse3.FUSEError(errno.EBADF)
        return h

    def _owner(self, parent_fd: int, ctx: pyfuse3.RequestContext) -> tuple[int, int]:
        """Owner of a new object: the caller, with the group of a setgid parent."""
        pst = os.fstat(parent_fd)
        gid = pst.st_gid if pst.st_mode & stat_mod.S_ISGID else ctx.gid
        return ctx.uid, gid

    def _child_of(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext) -> tuple[Inode, str, str, Caller]:
        if self._virtual(parent):
            raise pyfuse3.FUSEError(errno.EROFS)
        pnode = self.inodes.get(parent)
        nm = check_name(name)
        caller = self._caller(ctx)
        ppath = self._path(parent)
        if not self.gov.visible(caller, ppath):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return pnode, nm, join(ppath, nm), caller

    async def _lock_wait_names(self, caller: Caller, op: str, inode: int, path: str, access: Access,
                               wait: bool = True) -> None:
        """lock_wait on every known name of the inode, not only on `path`.

        open, setattr and xattr requests name no path, and `path` is just one
        of a hard-linked file's names: a lock on the name (or the directory)
        the caller went through must stop it all the same, and so must a lock
        on a name this daemon never looked up (LockedLinks).
        """
        node = self.inodes.get(inode)
        names = self.inodes.paths(inode) if len(node.links) > 1 else [path]
        for p in names:
            await self.gov.lock_wait(caller, op, p, access, wait=wait)
        for p in self._locked_links.others(self.gov, self.inodes, node, names):
            await self.gov.lock_wait(caller, op, p, access, wait=wait)

    def _virtual(self, ino: int) -> bool:
        return self.virtual is not None and self.virtual.owns(ino)

    async def _made(self, caller: Caller, op: str, pnode: Inode, nm: str, path: str,
                    ctx: pyfuse3.RequestContext, details: dict[str, Any] | None = None, mode: int = 0
                    ) -> tuple[Inode, os.stat_result]:
        """Give a new object its caller's owner, enter it in the table, record it."""
        pfd = self._fd(pnode)
        uid, gid = self._owner(pfd, ctx)
        os.chown(nm, uid, gid, dir_fd=pfd, follow_symlinks=False)
        st = os.stat(nm, dir_fd=pfd, follow_symlinks=False)
        lost = stat_mod.S_IMODE(mode) & ~stat_mod.S_IMODE(st.st_mode)
        if lost & SUID_SGID and stat_mod.S_ISREG(st.st_mode):
            # chown cleared setuid/setgid of a regular file; put back the mode the kernel vetted.
            fd = os.open(nm, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            try:
                os.chmod(proc_path(fd), stat_mod.S_IMODE(mode))
                st = os.fstat(fd)
            finally:
                os.close(fd)
        node = self.inodes.remember(pnode.ino, nm, st)
        await self.gov.record(caller, op, path, details=details)
        return node, st

    # ----- names ---------------------------------------------------------

    @handler
    async def lookup(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if self.virtual is not None and (parent == pyfuse3.ROOT_INODE or self.virtual.owns(parent)):
            hit = await self.virtual.lookup(parent, name, self._caller(ctx))
            if hit is not None:
                return hit
        pnode, nm, path, caller = self._child_of(parent, name, ctx)
        st = os.stat(nm, dir_fd=self._fd(pnode), follow_symlinks=False)
        if not self.gov.visible(caller, path, stat_mod.S_ISDIR(st.st_mode)):
            hidden = getattr(self.gov, "hidden", None)
            if hidden is not None:
                hidden(caller, "lookup", path)  # audits the denial: the caller knew the name
            raise pyfuse3.FUSEError(errno.ENOENT)
        node = self.inodes.remember(parent, nm, st)
        return self._entry(node, st, path)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            try:
                if self._virtual(ino):
                    self.virtual.forget(ino, n)
                else:
                    self.inodes.forget(ino, n)
            except Exception:
                log.exception("forget(%d, %d) failed", ino, n)

    @handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if self._virtual(inode):
            return await self.virtual.getattr(inode, self._caller(ctx))
        node = self.inodes.get(inode)
        path = self._path(inode)
        caller = self._caller(ctx)
        if not self.gov.visible(caller, path, node.is_dir) and not self._holds_open(caller, inode):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._entry(node, os.stat(self._fd(node)), path)

    def _holds_open(self, caller: Caller, ino: int) -> bool:
        """Some handle holds this file open.

        The kernel refreshes attributes (as the caller) while opening, on
        fstat and before reads. A handle carries its opener's rights (as a
        Unix descriptor does): refusing those refreshes would fail the very
        create a drop box allowed, and make a descriptor passed between
        agents work or not depending on cache timing. A caller that holds no
        reference cannot ask: every path walk to the inode was checked.
        """
        return any(isinstance(h, FileHandle) and h.ino == ino for h in self._handles.values())

    @handler
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if self._virtual(inode):
            raise pyfuse3.FUSEError(errno.EROFS)
        node = self.inodes.get(inode)
        path = self._path(inode)
        caller = self._caller(ctx)
        self.gov.require(caller, "setattr", path, "w")
        await self._lock_wait_names(caller, "setattr", inode, path, Access.WRITE, wait=False)
        fd = self._fd(node)
        is_link = node.kind == stat_mod.S_IFLNK
        before = os.stat(fd)
        changed: dict[str, Any] = {}
        if fields.update_size:
            h = self._handles.get(fh) if fh is not None else None
            if isinstance(h, FileHandle) and h.writable:
                os.ftruncate(h.fd, attr.st_size)
            else:
                wfd = os.open(proc_path(fd), os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.ftruncate(wfd, attr.st_size)
                finally:
                    os.close(wfd)
            node.changes += 1
            changed["size"] = attr.st_size
        if fields.update_mode:
            if is_link:
                raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
            os.chmod(proc_path(fd), stat_mod.S_IMODE(attr.st_mode))
            changed["mode"] = oct(stat_mod.S_IMODE(attr.st_mode))
        if fields.update_size:
            drop_setid(fd, caller)  # after the kernel's own (older) rule came as a mode change
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            if is_link:
                pnode, nm = self._a_link(node)
                os.chown(nm, uid, gid, dir_fd=self._fd(pnode), follow_symlinks=False)
            else:
                os.chown(proc_path(fd), uid, gid)
            changed.update({k: v for k, v in (("uid", uid), ("gid", gid)) if v != -1})
        if fields.update_atime or fields.update_mtime:
            at = attr.st_atime_ns if fields.update_atime else None
            mt = attr.st_mtime_ns if fields.update_mtime else None
            if is_link:
                pnode, nm = self._a_link(node)
                utimensat(self._fd(pnode), nm, at, mt)
            else:
                utimensat(AT_FDCWD, proc_path(fd), at, mt, follow=True)
            changed.update({k: v for k, v in (("atime_ns", at), ("mtime_ns", mt)) if v is not None})
        if not changed:
            # chown(f, -1, -1) arrives as a setattr of nothing; natively it moves ctime, and so does
            # a no-op chown of the backing object.
            if is_link:
                pnode, nm = self._a_link(node)
                os.chown(nm, -1, -1, dir_fd=self._fd(pnode), follow_symlinks=False)
            else:
                os.chown(proc_path(fd), -1, -1)
        st = os.stat(fd)
        # A chmod/chown to the values already there (tar does both for every
        # file) moved only ctime: it is done, but there is nothing to record.
        if "mode" in changed and stat_mod.S_IMODE(before.st_mode) == stat_mod.S_IMODE(st.st_mode):
            del changed["mode"]
        for key, old_v, new_v in (("uid", before.st_uid, st.st_uid), ("gid", before.st_gid, st.st_gid)):
            if key in changed and old_v == new_v:
                del changed[key]
        if changed:
            op = "truncate" if list(changed) == ["size"] else "setattr"
            await self.gov.record(caller, op, path, details=changed)
        return self._entry(node, st, path)

    def _a_link(self, node: Inode) -> tuple[Inode, str]:
        for parent, name in node.links:
            pnode = self.inodes.get(parent)
            return pnode, name
        raise Stale(node.ino)

    @handler
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        if self._virtual(inode):
            return await self.virtual.readlink(inode, self._caller(ctx))
        node = self.inodes.get(inode)
        path = self._path(inode)
        caller = self._caller(ctx)
        if not self.gov.visible(caller, path, False):
            raise pyfuse3.FUSEError(errno.ENOENT)
        self.gov.require(caller, "readlink", path, "r")
        return os.fsencode(os.readlink("", dir_fd=self._fd(node)))

    @handler
    async def mknod(self, parent: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        pnode, nm, path, caller = self._child_of(parent, name, ctx)
        self._reject_virtual_name(parent, nm)
        self.gov.require(caller, "mknod", path, "c")
        await self.gov.lock_wait(caller, "mknod", path, Access.WRITE, wait=False)
        os.mknod(nm, mode, rdev, dir_fd=self._fd(pnode))
        node, st = await self._made(caller, "mknod", pnode, nm, path, ctx, {"mode": oct(mode)}, mode)
        return self._entry(node, st, path)

    @handler
    async def mkdir(self, parent: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        pnode, nm, path, caller = self._child_of(parent, name, ctx)
        self._reject_virtual_name(parent, nm)
        self.gov.require(caller, "mkdir", path, "c")
        await self.gov.lock_wait(caller, "mkdir", path, Access.WRITE, wait=False)
        os.mkdir(nm, stat_mod.S_IMODE(mode), dir_fd=self._fd(pnode))
        node, st = await self._made(caller, "mkdir", pnode, nm, path, ctx)
        return self._entry(node, st, path)

    @handler
    async def symlink(self, parent: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        pnode, nm, path, caller = self._child_of(parent, name, ctx)
        self._reject_virtual_name(parent, nm)
        self.gov.require(caller, "symlink", path, "c")
        await self.gov.lock_wait(caller, "symlink", path, Access.WRITE, wait=False)
        os.symlink(os.fsdecode(target), nm, dir_fd=self._fd(pnode))
        node, st = await self._made(caller, "symlink", pnode, nm, path, ctx, {"target": os.fsdecode(target)})
        return self._entry(node, st, path)

    def _reject_virtual_name(self, parent: int, nm: str) -> None:
        if self.virtual is not None and parent == pyfuse3.ROOT_INODE and self.virtual.reserved(nm):
            raise pyfuse3.FUSEError(errno.EEXIST)

    @handler
    async def unlink(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._remove(parent, name, ctx, is_dir=False)

    @handler
    async def rmdir(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._remove(parent, name, ctx, is_dir=True)

    async def _remove(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext, is_dir: bool) -> None:
        if self._virtual(parent) or (self.virtual is not None and parent == pyfuse3.ROOT_INODE
                                     and self.virtual.reserved(os.fsdecode(name))):
            raise pyfuse3.FUSEError(errno.EROFS)
        pnode, nm, path, caller = self._child_of(parent, name, ctx)
        pfd = self._fd(pnode)
        if not self.gov.visible(caller, path, is_dir):
            raise pyfuse3.FUSEError(errno.ENOENT)
        op = "rmdir" if is_dir else "unlink"
        self.gov.require(caller, op, path, "d")
        await self.gov.lock_wait(caller, op, path, Access.DELETE, subtree=is_dir, wait=False)
        child = self.inodes.child(parent, nm)
        if child is not None and len(child.links) == 1:
            # Its last name goes: pin the object so fstat/ftruncate on open
            # handles (and a shell's cwd in a removed directory) keep working.
            with contextlib.suppress(Stale, OSError):
                self._fd(child)
        if is_dir:
            os.rmdir(nm, dir_fd=pfd)
        else:
            os.unlink(nm, dir_fd=pfd)
        self.inodes.unlink(parent, nm)
        await self.gov.record(caller, op, path)

    @handler
    async def rename(self, parent_old: int, name_old: bytes, parent_new: int, name_new: bytes,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        for p, n in ((parent_old, name_old), (parent_new, name_new)):
            if self._virtual(p) or (self.virtual is not None and p == pyfuse3.ROOT_INODE
                                    and self.virtual.reserved(os.fsdecode(n))):
                raise pyfuse3.FUSEError(errno.EXDEV if p != parent_old else errno.EROFS)
        po, no, path_old, caller = self._child_of(parent_old, name_old, ctx)
        pn, nn, path_new, _ = self._child_of(parent_new, name_new, ctx)
        if flags & ~(pyfuse3.RENAME_EXCHANGE | pyfuse3.RENAME_NOREPLACE):
            raise pyfuse3.FUSEError(errno.EINVAL)
        ofd, nfd = self._fd(po), self._fd(pn)
        src = os.stat(no, dir_fd=ofd, follow_symlinks=False)
        if not self.gov.visible(caller, path_old, stat_mod.S_ISDIR(src.st_mode)):
            raise pyfuse3.FUSEError(errno.ENOENT)
        try:
            dst: os.stat_result | None = os.stat(nn, dir_fd=nfd, follow_symlinks=False)
        except FileNotFoundError:
            dst = None
        exchange = bool(flags & pyfuse3.RENAME_EXCHANGE)
        self.gov.require(caller, "rename", path_old, "d")
        self.gov.require(caller, "rename", path_new, "c")
        if dst is not None and (src.st_dev, src.st_ino) != (dst.st_dev, dst.st_ino):
            self.gov.require(caller, "rename", path_new, "wd" if not exchange else "d")
            if exchange:
                self.gov.require(caller, "rename", path_old, "c")
        check_subtree = getattr(self.gov, "require_subtree", None)
        if check_subtree is not None:
            # A moved folder carries everything in it to where rights may differ.
            if stat_mod.S_ISDIR(src.st_mode):
                self._check_moved_folder(caller, ofd, no, path_old, path_new)
            if exchange and dst is not None and stat_mod.S_ISDIR(dst.st_mode):
                self._check_moved_folder(caller, nfd, nn, path_new, path_old)
        # A file with other names stays under them: a move of one name must
        # not change who may do what with it (unless the new name is already
        # one of them: then rename does nothing).
        same = dst is not None and (src.st_dev, src.st_ino) == (dst.st_dev, dst.st_ino)
        if not stat_mod.S_ISDIR(src.st_mode) and src.st_nlink > 1 and not same:
            self.gov.check_linked_move(caller, path_old, path_new)
        if exchange and dst is not None and not stat_mod.S_ISDIR(dst.st_mode) and dst.st_nlink > 1 and not same:
            self.gov.check_linked_move(caller, path_new, path_old)
        await self.gov.lock_wait(caller, "rename", path_old, Access.DELETE, subtree=stat_mod.S_ISDIR(src.st_mode),
                                 wait=False)
        if dst is not None:
            await self.gov.lock_wait(caller, "rename", path_new, Access.DELETE, subtree=stat_mod.S_ISDIR(dst.st_mode),
                                     wait=False)
        else:
            await self.gov.lock_wait(caller, "rename", path_new, Access.WRITE, wait=False)
        replaced = self.inodes.child(parent_new, nn) if dst is not None and not exchange else None
        if replaced is not None and not replaced.is_dir and len(replaced.links) == 1:
            with contextlib.suppress(Stale, OSError):
                self._fd(replaced)
        renameat2(ofd, no, nfd, nn, flags)
        if exchange:
            self.inodes.exchange(parent_old, no, parent_new, nn)
        else:
            self.inodes.move(parent_old, no, parent_new, nn)
        moved = [(src, path_new)] + ([(dst, path_old)] if exchange and dst is not None else [])
        for st, where in moved:
            if stat_mod.S_ISDIR(st.st_mode):
                self._forget_below(self.inodes.child(parent_new if where == path_new else parent_old,
                                                           nn if where == path_new else no))
        await self.gov.record(caller, "exchange" if exchange else "rename", path_old, path_new)

    def _check_moved_folder(self, caller: Caller, dfd: int, name: str, path: str, to: str) -> None:
        """The caller needs r and d on everything inside; and a file inside with
        other names (elsewhere) must keep its rights, as for a file moved alone."""
        below = list(walk_below(dfd, name, path))
        self.gov.require_subtree(caller, "rename", path, (p for p, _ in below))
        for p, nlink in below:
            if nlink > 1:
                self.gov.check_linked_move(caller, p, to + p[len(path):])

    def _forget_below(self, node: Inode | None) -> None:
        """Drop the kernel's entries under a folder that moved, and cache them strictly from now on.

        They were cached with timeouts chosen for the old place; a process
        whose cwd is inside would otherwise stat them by name for that long,
        and could reach entries cached later by the agents of the new place.
        """
        if node is None:
            return
        for parent, name in self.inodes.make_strict(node.ino):
            pyfuse3.invalidate_entry_async(parent, os.fsencode(name), ignore_enoent=True)

    @handler
    async def link(self, inode: int, new_parent: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if self._virtual(inode) or self._virtual(new_parent):
            raise pyfuse3.FUSEError(errno.EXDEV)
        node = self.inodes.get(inode)
        pnode, nm, path, caller = self._child_of(new_parent, new_name, ctx)
        self._reject_virtual_name(new_parent, nm)
        src_path = self._path(inode)
        if not self.gov.visible(caller, src_path, False):
            raise pyfuse3.FUSEError(errno.ENOENT)
        self.gov.require(caller, "link", src_path, "r")
        self.gov.require(caller, "link", path, "c")
        self.gov.check_link(caller, src_path, path)
        await self._lock_wait_names(caller, "link", inode, src_path, Access.WRITE, wait=False)
        await self.gov.lock_wait(caller, "link", path, Access.WRITE, wait=False)
        pfd = self._fd(pnode)
        if node.kind == stat_mod.S_IFLNK:
            spnode, snm = self._a_link(node)
            os.link(snm, nm, src_dir_fd=self._fd(spnode), dst_dir_fd=pfd, follow_symlinks=False)
        else:
            os.link(proc_path(self._fd(node)), nm, dst_dir_fd=pfd, follow_symlinks=True)
        st = os.stat(nm, dir_fd=pfd, follow_symlinks=False)
        node = self.inodes.remember(new_parent, nm, st)
        await self.gov.record(caller, "link", src_path, path)
        return self._entry(node, st, path)

    # ----- files ---------------------------------------------------------
