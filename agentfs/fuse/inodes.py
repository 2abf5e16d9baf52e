"""The inode table: what the kernel's inode numbers stand for in the backing tree.

Each known inode holds an O_PATH|O_NOFOLLOW descriptor of its backing object
(as libfuse's passthrough_hp does): operations act on descriptors, never on
absolute backing paths, so nothing reached through the mount can resolve a
symlink or `..` inside the backing store, and renames in the backing tree do
not confuse us. Descriptors are opened lazily: readdirplus announces many
entries that are never used.

Each inode also remembers the names it is known by, as (parent inode, name)
links, because the policy speaks in paths. A directory has one link; a
regular file may have several (hard links).
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import stat as stat_mod
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import pyfuse3

log = logging.getLogger(__name__)

O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
# Inode numbers we invent (for objects on another device than the root's,
# where backing inode numbers could collide) start here.
_SYNTHETIC_BASE = 1 << 62
# How long a path read from /proc stays good for policy decisions. Reading it
# costs a /proc walk on every request (~5 % of `rm -rf`); a request burst on
# one directory reuses it. Moves made by this daemon invalidate it at once;
# one made beside it (another mount of the workspace, the data tree itself)
# is seen within this long, the same order as the window between any check
# and the act it guards.
REAL_PATH_TTL_S = 0.005


class FdCloser:
    """Closes descriptors on a thread of its own.

    Closing the last descriptor of a deleted file is where ext4 frees it;
    done inline, `rm -rf` of a large tree spends a third of the daemon's
    time blocked there.
    """

    # Descriptors queued but not yet closed still count against RLIMIT_NOFILE.
    # A burst of evictions (reopening the folders above a file 1,500 levels
    # deep) can queue hundreds while the loop holds the GIL; past this many
    # the caller closes them itself, so the queue never costs more than this.
    BACKLOG_MAX = 64

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="agentfs-fd-closer", daemon=True)
        self._thread.start()

    def __call__(self, fd: int) -> None:
        if self._q.qsize() >= self.BACKLOG_MAX:
            os.close(fd)
        else:
            self._q.put(fd)

    def _run(self) -> None:
        while (fd := self._q.get()) is not None:
            try:
                os.close(fd)
            except OSError as e:
                log.warning("closing descriptor %d failed: %s", fd, e)

    def stop(self) -> None:
        """Close everything queued, then end the thread."""
        self._q.put(None)
        self._thread.join()


class Stale(Exception):
    """The backing object behind an inode is gone or was replaced outside the mount."""


@dataclass(eq=False)
class Inode:
    ino: int
    dev: int
    backing_ino: int
    kind: int  # stat.S_IFMT bits
    fd: int | None = None
    nlookup: int = 0
    links: dict[tuple[int, str], None] = field(default_factory=dict)
    # The last path of an inode whose every name is gone but which is still
    # open or looked up (fstat of an unlinked open file must keep working).
    orphan_path: str | None = None
    # Set on a directory that moved, or on every directory when the policy
    # changed, and inherited by what is found below it: processes may hold a
    # cwd or descriptor inside, so its entries may be cached only where every
    # agent sees them alike. Lives until the kernel forgets the inode.
    strict: bool = False
    # (good until, moves counter, path) of the last /proc reading: see real_path.
    real: tuple[float, int, str | None] | None = None
    # Counts content changes through this daemon (writes, truncations): a write
    # handle may hash the bytes it wrote only if nothing else changed the file
    # after its own writes (FileHandle.content).
    changes: int = 0

    @property
    def is_dir(self) -> bool:
        return self.kind == stat_mod.S_IFDIR


class InodeTable:
    """Inodes by kernel number, by backing (dev, ino), and children by (parent, name)."""

    def __init__(self, root_fd: int, max_fds: int = 1 << 20, close: "Callable[[int], None]" = os.close) -> None:
        """`max_fds` bounds the O_PATH descriptors held (the least recently used
        are closed and reopened by name when needed); `close` closes them."""
        self.max_fds = max_fds
        self._close = close
        self._open: OrderedDict[int, Inode] = OrderedDict()
        st = os.fstat(root_fd)
        self.root_real = os.readlink(f"/proc/self/fd/{root_fd}")
        self.root_dev = st.st_dev
        root = Inode(pyfuse3.ROOT_INODE, st.st_dev, st.st_ino, stat_mod.S_IFDIR, fd=root_fd, nlookup=1)
        self._by_ino: dict[int, Inode] = {root.ino: root}
        self._by_backing: dict[tuple[int, int], Inode] = {(st.st_dev, st.st_ino): root}
        self._children: dict[tuple[int, str], int] = {}
        self._next_synthetic = _SYNTHETIC_BASE
        # Bumped whenever a directory moves, so cached directory paths stay right.
        self._generation = 0
        self._dir_paths: dict[int, tuple[int, str]] = {root.ino: (0, "/")}
        # Bumped by every move this daemon makes: cached /proc paths may be stale.
        self._moves = 0
        # Bumped whenever a name goes away (unlink, rmdir, a move's source or
        # target): what a path names may have changed (LockedLinks).
        self.removals = 0

    def __len__(self) -> int:
        return len(self._by_ino)

    def get(self, ino: int) -> Inode:
        try:
            return self._by_ino[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def child(self, parent: int, name: str) -> Inode | None:
        ino = self._children.get((parent, name))
        return self._by_ino.get(ino) if ino is not None else None

    def _number_for(self, st: os.stat_result) -> int:
        if st.st_dev == self.root_dev and st.st_ino != pyfuse3.ROOT_INODE and st.st_ino < _SYNTHETIC_BASE:
            return st.st_ino
        self._next_synthetic += 1
        return self._next_synthetic

    def remember(self, parent: int, name: str, st: os.stat_result, fd: int | None = None) -> Inode:
        """The inode for `st`, found by (parent, name); adds one kernel lookup."""
        key = (st.st_dev, st.st_ino)
        node = self._by_backing.get(key)
        if node is None:
            node = Inode(self._number_for(st), st.st_dev, st.st_ino, stat_mod.S_IFMT(st.st_mode))
            self._by_backing[key] = node
            self._by_ino[node.ino] = node
            if fd is not None:
                self._hold(node, fd)
        elif fd is not None:
            if node.fd is None:
                self._hold(node, fd)
            else:
                os.close(fd)
        self.link(node, parent, name)
        node.nlookup += 1
        return node

    def link(self, node: Inode, parent: int, name: str) -> None:
        old = self._children.get((parent, name))
        if old is not None and old != node.ino:
            self.unlink(parent, name)
        self._children[(parent, name)] = node.ino
        node.links[(parent, name)] = None
        node.orphan_path = None
        pnode = self._by_ino.get(parent)
        if pnode is not None and pnode.strict:
            node.strict = True

    def unlink(self, parent: int, name: str) -> Inode | None:
        ino = self._children.pop((parent, name), None)
        if ino is None:
            return None
        self.removals += 1
        node = self._by_ino.get(ino)
        if node is not None:
            node.real = None
            if len(node.links) == 1:
                node.orphan_path = self.path(ino)
            node.links.pop((parent, name), None)
            if node.is_dir:
                self._generation += 1
        return node

    def move(self, old_parent: int, old_name: str, new_parent: int, new_name: str) -> None:
        node = self.child(old_parent, old_name)
        self._moves += 1
        self.unlink(new_parent, new_name)
        if node is not None:
            self.unlink(old_parent, old_name)
            self.link(node, new_parent, new_name)
            if node.is_dir:
                self._generation += 1

    def exchange(self, p1: int, n1: str, p2: int, n2: str) -> None:
        a, b = self.child(p1, n1), self.child(p2, n2)
        self._moves += 1
        self.unlink(p1, n1)
        self.unlink(p2, n2)
        if a is not None:
            self.link(a, p2, n2)
        if b is not None:
            self.link(b, p1, n1)
        self._generation += 1

    def make_strict(self, ino: int | None = None) -> list[tuple[int, str]]:
        """Mark `ino` and every known inode below it (all inodes if None) strict.

        Returns the (parent, name) entries below, for the kernel to forget.
        """
        entries = list(self._children)
        if ino is None:
            for node in self._by_ino.values():
                node.strict = True
            return entries
        below: dict[int, list[tuple[int, str]]] = {}
        for parent, name in entries:
            below.setdefault(parent, []).append((parent, name))
        out: list[tuple[int, str]] = []
        todo = [ino]
        while todo:
            cur = self._by_ino.get(todo.pop())
            if cur is None or cur.strict and cur.ino != ino:
                continue
            cur.strict = True
            for parent, name in below.get(cur.ino, ()):
                out.append((parent, name))
                child = self._by_ino.get(self._children.get((parent, name), -1))
                if child is not None:
                    child.strict = True
                    if child.is_dir:
                        todo.append(child.ino)
        return out

    def forget(self, ino: int, nlookup: int) -> None:
        node = self._by_ino.get(ino)
        if node is None or ino == pyfuse3.ROOT_INODE:
            return
        node.nlookup -= nlookup
        if node.nlookup > 0:
            return
        for parent, name in list(node.links):
            if self._children.get((parent, name)) == ino:
                del self._children[(parent, name)]
        del self._by_ino[ino]
        self._by_backing.pop((node.dev, node.backing_ino), None)
        self._dir_paths.pop(ino, None)
        if node.fd is not None:
            self._open.pop(ino, None)
            self._close(node.fd)
            node.fd = None

    def _hold(self, node: Inode, fd: int) -> None:
        node.fd = fd
        self._open[node.ino] = node
        if len(self._open) > self.max_fds:
            self._evict()

    def _evict(self) -> None:
        """Close the least recently used tenth of the descriptors that can be reopened by name."""
        target = self.max_fds - max(1, self.max_fds // 10)
        for ino, node in list(self._open.items()):
            if len(self._open) <= target:
                break
            # The root has no name to reopen it by; an inode with no name left
            # (unlinked while open) only lives on through its descriptor.
            if ino == pyfuse3.ROOT_INODE or not node.links or node.fd is None:
                continue
            del self._open[ino]
            self._close(node.fd)
            node.fd = None

    def fd(self, node: Inode) -> int:
        """The O_PATH descriptor of `node`, opened on first use and checked to be the same object."""
        if node.fd is not None:
            if node.ino in self._open:
                self._open.move_to_end(node.ino)
            return node.fd
        self._open_ancestors(node)
        for parent, name in list(node.links):
            pnode = self._by_ino.get(parent)
            if pnode is None:
                continue
            try:
                fd = os.open(name, O_PATH_FLAGS, dir_fd=self.fd(pnode))
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    raise  # out of descriptors is not "stale": say so
                continue
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == (node.dev, node.backing_ino):
                self._hold(node, fd)
                return fd
            os.close(fd)
        raise Stale(node.ino)

    def _open_ancestors(self, node: Inode) -> None:
        """Reopen the folders above `node` that lost their descriptors, top down.

        `fd` opens a node relative to its parent's descriptor; in a tree
        deeper than Python's recursion limit, asking each parent in turn
        would overflow, so the chain is walked in a loop first.
        """
        missing: list[Inode] = []
        cur = node
        while len(missing) <= len(self._by_ino):
            up = self._up(cur)
            if up is None or up[0].fd is not None:
                break
            missing.append(up[0])
            cur = up[0]
        for d in reversed(missing):
            self.fd(d)

    def real_path(self, node: Inode) -> str | None:
        """Where `node` is in the data tree now, as the kernel knows it.

        Another daemon of the workspace (or an operator in the backing tree)
        may have renamed it since we learnt its name; its descriptor's /proc
        link follows it. None when unknowable (deleted, path beyond PATH_MAX,
        not under the root): callers then use the names we know.
        """
        if node.ino == pyfuse3.ROOT_INODE:
            return "/"
        now = time.monotonic()
        cached = node.real
        if cached is not None and cached[0] > now and cached[1] == self._moves:
            return cached[2]
        path = self._read_real_path(node)
        node.real = (now + REAL_PATH_TTL_S, self._moves, path)
        return path

    def _read_real_path(self, node: Inode) -> str | None:
        try:
            fd = self.fd(node)
            target = os.readlink(f"/proc/self/fd/{fd}")
        except (Stale, OSError):
            return None
        if target.endswith(" (deleted)"):
            # The name it was opened through is gone. The file may live on
            # under other names (hard links), but this text is none of them:
            # as a policy path it would match the wrong rules.
            return None
        root = self.root_real
        if len(target) > len(root) and target.startswith(root) and target[len(root)] == "/":
            return target[len(root):]
        return None

    def path(self, ino: int) -> str | None:
        """One workspace path of `ino` ("/" for the root), or None if it has no name left."""
        node = self._by_ino.get(ino)
        if node is None:
            return None
        if node.is_dir:
            return self._dir_path(node)
        for parent, name in node.links:
            pnode = self._by_ino.get(parent)
            ppath = self._dir_path(pnode) if pnode is not None else None
            if ppath is not None:
                return ppath + name if ppath == "/" else f"{ppath}/{name}"
        return node.orphan_path

    def _up(self, node: Inode) -> tuple[Inode, str] | None:
        """The parent (and `node`'s name in it) of `node`'s first name whose parent we know."""
        return next(((self._by_ino[p], n) for p, n in node.links if p in self._by_ino), None)

    def _dir_path(self, node: Inode) -> str | None:
        """A directory's path, climbing to the root or a cached path in a loop, not by recursion.

        Trees may be deeper than Python's recursion limit (ext4 has none).
        """
        chain: list[tuple[Inode, str]] = []
        cur = node
        while True:
            if cur.ino == pyfuse3.ROOT_INODE:
                base: str | None = "/"
                break
            cached = self._dir_paths.get(cur.ino)
            if cached is not None and cached[0] == self._generation:
                base = cached[1]
                break
            up = self._up(cur)
            if up is None or len(chain) > len(self._by_ino):
                base = cur.orphan_path if up is None else None
                if base is None:
                    return None
                break
            chain.append((cur, up[1]))
            cur = up[0]
        p = base
        for d, name in reversed(chain):
            p = p + name if p == "/" else f"{p}/{name}"
            self._dir_paths[d.ino] = (self._generation, p)
        return p

    def paths(self, ino: int) -> list[str]:
        """Every known workspace path of `ino` (hard links give several)."""
        node = self._by_ino.get(ino)
        if node is None:
            return []
        if node.is_dir or len(node.links) <= 1:
            p = self.path(ino)
            return [p] if p else []
        out = []
        for parent, name in node.links:
            ppath = self.path(parent)
            if ppath is not None:
                out.append(ppath + name if ppath == "/" else f"{ppath}/{name}")
        return out

    def close_all(self) -> None:
        for node in self._by_ino.values():
            if node.fd is not None and node.ino != pyfuse3.ROOT_INODE:
                self._close(node.fd)
                node.fd = None
        self._open.clear()
