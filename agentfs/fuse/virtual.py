"""Virtual entries on the mount: `.agentfs/` (whoami, locks) and `.search/`.

They are read-only and answered per caller, and every entry gets a zero
cache timeout, since two agents looking at the same name see different
things. `.agentfs/` files are rendered when opened (read() carries no
caller), so like /proc files they show a size of 0; a query's `results.md`
is built with its listing and shows its real size.
Searching never blocks the FUSE loop: the daemon awaits the sidecar over a
socket, and results are cached briefly per (agent, query).
"""

from __future__ import annotations

import errno
import logging
import os
import stat as stat_mod
import time
from dataclasses import dataclass
from typing import Any, Callable

import pyfuse3

from agentfs.core.governor import Caller, Denied
from agentfs.fuse.handles import DirHandle
from agentfs.workspace import Workspace

log = logging.getLogger(__name__)

CONTROL_DIR = ".agentfs"
SEARCH_DIR = ".search"
LOCK_XATTR = b"user.agentfs.lock"
VIRTUAL_BASE = (1 << 63) - (1 << 40)
RESULT_TTL = 10.0
# Names that file managers and shells probe in every directory; they must not start searches.
PROBES = frozenset({
    ".hidden", ".directory", "autorun.inf", ".xdg-volume-info", "desktop.ini", "Desktop.ini",
    ".Trash", "Thumbs.db", ".DS_Store", "folder.jpg", "folder.png", ".git", ".svn", ".hg",
    "AppleDouble", ".localized", "__pycache__", ".envrc", ".nomedia",
})


@dataclass(eq=False)
class VNode:
    ino: int
    kind: int
    name: str
    parent: int
    agent: str | None = None
    query: str | None = None
    target: bytes | None = None  # symlinks
    render: Callable[[Caller], Any] | None = None  # files: async content producer
    # A file whose content is known before it is opened (results.md): its real
    # size is shown, so tools that trust st_size (mmap, head -c) see it all.
    data: bytes | None = None
    key: tuple = ()
    nlookup: int = 0  # the kernel's references (lookups and readdirplus entries), as for real inodes


@dataclass(eq=False)
class VFileHandle:
    data: bytes


@dataclass
class _Cached:
    at: float
    hits: list[Any]
    note: str = ""


class VirtualTree:
    def __init__(self, ws: Workspace, gov: Any, mount_agent: str | None = None) -> None:
        self.ws = ws
        self.gov = gov
        self.mount_agent = mount_agent
        self._nodes: dict[int, VNode] = {}
        self._keys: dict[tuple, int] = {}
        self._next = VIRTUAL_BASE
        self._results: dict[tuple[str, str], _Cached] = {}
        self.control = self._node(("dir", CONTROL_DIR), stat_mod.S_IFDIR, CONTROL_DIR, pyfuse3.ROOT_INODE)
        self.search = self._node(("dir", SEARCH_DIR), stat_mod.S_IFDIR, SEARCH_DIR, pyfuse3.ROOT_INODE)
        self._control_files = {
            "whoami": self._node(("f", "whoami"), stat_mod.S_IFREG, "whoami", self.control.ino,
                                 render=self._render_whoami),
            "locks": self._node(("f", "locks"), stat_mod.S_IFREG, "locks", self.control.ino,
                                render=self._render_locks),
        }
        self._fixed = frozenset(self._nodes)

    # ----- bookkeeping ---------------------------------------------------

    def _node(self, key: tuple, kind: int, name: str, parent: int, **kw: Any) -> VNode:
        ino = self._keys.get(key)
        if ino is not None:
            return self._nodes[ino]
        self._next += 1
        node = VNode(self._next, kind, name, parent, key=key, **kw)
        self._nodes[node.ino] = node
        self._keys[key] = node.ino
        return node

    def owns(self, ino: int) -> bool:
        return ino >= VIRTUAL_BASE

    def reserved(self, name: str) -> bool:
        return name in (CONTROL_DIR, SEARCH_DIR)

    def root_names(self) -> list[str]:
        return [CONTROL_DIR, SEARCH_DIR]

    def forget(self, ino: int, n: int) -> None:
        """Drop a query's nodes once the kernel holds no reference to them.

        Any caller can name any number of queries (a stat each), so keeping
        them all would let one user grow the daemon without bound.
        """
        node = self._nodes.get(ino)
        if node is None or node.ino in self._fixed:
            return
        node.nlookup -= n
        if node.nlookup <= 0:
            del self._nodes[ino]
            if self._keys.get(node.key) == ino:
                del self._keys[node.key]

    def _ref(self, node: VNode) -> pyfuse3.EntryAttributes:
        """The entry of `node` as handed to the kernel, which now holds one more reference."""
        node.nlookup += 1
        return self._attr(node)

    def _attr(self, node: VNode, size: int = 0) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        e.entry_timeout = 0
        e.attr_timeout = 0
        if node.kind == stat_mod.S_IFDIR:
            e.st_mode = stat_mod.S_IFDIR | 0o555
            e.st_nlink = 2
        elif node.kind == stat_mod.S_IFLNK:
            e.st_mode = stat_mod.S_IFLNK | 0o777
            e.st_nlink = 1
            size = len(node.target or b"")
        else:
            e.st_mode = stat_mod.S_IFREG | 0o444
            e.st_nlink = 1
            if node.data is not None:
                size = len(node.data)
        e.st_size = size
        e.st_blksize = 4096
        now = time.time_ns()
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = now
        return e

    # ----- lookups -------------------------------------------------------

    async def lookup(self, parent: int, name: bytes, caller: Caller) -> pyfuse3.EntryAttributes | None:
        """An entry under a virtual directory, or None to let the real tree answer."""
        nm = os.fsdecode(name)
        if parent == pyfuse3.ROOT_INODE:
            if nm == CONTROL_DIR:
                return self._attr(self.control)
            if nm == SEARCH_DIR:
                return self._attr(self.search)
            return None
        pnode = self._nodes.get(parent)
        if pnode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if pnode is self.control:
            f = self._control_files.get(nm)
            if f is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attr(f)
        if pnode is self.search:
            if nm in PROBES or nm.startswith(".") or len(name) > 255:
                raise pyfuse3.FUSEError(errno.ENOENT)
            q = self._node(("q", caller.agent, nm), stat_mod.S_IFDIR, nm, self.search.ino,
                           agent=caller.agent, query=nm)
            return self._ref(q)
        if pnode.query is not None:
            for child in await self._query_children(pnode, caller):
                if child.name == nm:
                    return self._ref(child)
            raise pyfuse3.FUSEError(errno.ENOENT)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def getattr(self, ino: int, caller: Caller) -> pyfuse3.EntryAttributes:
        node = self._nodes.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(node)

    async def readlink(self, ino: int, caller: Caller) -> bytes:
        node = self._nodes.get(ino)
        if node is None or node.target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target

    # ----- files ---------------------------------------------------------

    async def open(self, ino: int, flags: int, caller: Caller, new_fh: Callable[[Any], int]) -> pyfuse3.FileInfo:
        node = self._nodes.get(ino)
        if node is None or (node.render is None and node.data is None):
            raise pyfuse3.FUSEError(errno.EISDIR if node is not None else errno.ENOENT)
        if (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        data = node.data if node.data is not None else await node.render(caller)
        fh = new_fh(VFileHandle(data if isinstance(data, bytes) else data.encode()))
        # direct_io: a size of 0 (files rendered per open) must not cut reads short.
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    async def read(self, h: Any, off: int, size: int) -> bytes:
        if not isinstance(h, VFileHandle):
            raise pyfuse3.FUSEError(errno.EISDIR)
        return h.data[off:off + size]

    def release(self, h: Any) -> None:
        """Content lives in the handle; nothing to free beyond it."""

    async def _render_whoami(self, caller: Caller) -> str:
        how = "mount" if self.mount_agent else caller.how
        lines = [f"agent: {caller.agent}", f"uid: {caller.uid}", f"gid: {caller.gid}", f"pid: {caller.pid}"]
        if caller.session_id is not None:
            lines.append(f"session: {caller.session_id}")
        if how:
            lines.append(f"via: {how}")
        lines.append(f"workspace: {self.ws.root}")
        return "\n".join(lines) + "\n"

    async def _render_locks(self, caller: Caller) -> str:
        render = getattr(self.gov, "render_locks", None)
        if render is None:
            return "no lock manager on this mount\n"
        return render(caller)

    # ----- directories ---------------------------------------------------

    async def opendir(self, ino: int, caller: Caller, new_fh: Callable[[Any], int]) -> int:
        node = self._nodes.get(ino)
        if node is None or node.kind != stat_mod.S_IFDIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return new_fh(DirHandle(ino, caller, "/" + node.name))

    async def readdir(self, h: DirHandle, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        node = self._nodes.get(h.ino)
        if node is None:
            return
        if node is self.control:
            children = list(self._control_files.values())
        elif node is self.search:
            children = []
        else:
            children = await self._query_children(node, h.caller)
        for i in range(start_id, len(children)):
            c = children[i]
            if not pyfuse3.readdir_reply(token, os.fsencode(c.name), self._attr(c), i + 1):
                return
            c.nlookup += 1  # readdirplus: the kernel took a reference to each entry it accepted

    async def root_entry(self, name: str, caller: Caller) -> pyfuse3.EntryAttributes:
        return self._attr(self.control if name == CONTROL_DIR else self.search)

    # ----- search --------------------------------------------------------

    async def _query_children(self, qnode: VNode, caller: Caller) -> list[VNode]:
        hits, note = await self._hits(caller, qnode.query or "")
        children: list[VNode] = []
        width = max(2, len(str(len(hits))))
        lines = [f"# Search: {qnode.query}", ""]
        if note:
            lines += [f"_{note}_", ""]
        for rank, hit in enumerate(hits, 1):
            base = os.path.basename(hit.path) or "root"
            name = f"{rank:0{width}d}-{base}"
            if len(os.fsencode(name)) > 255:
                name = os.fsdecode(os.fsencode(name)[:255])
            target = os.fsencode("../.." + hit.path)
            link = self._node(("hit", caller.agent, qnode.query, name), stat_mod.S_IFLNK, name, qnode.ino)
            link.target = target
            children.append(link)
            snippet = " ".join(str(hit.snippet).split())[:400]
            lines += [f"## {rank}. {hit.path} (lines {hit.start_line}-{hit.end_line}, score {hit.score:.4f})",
                      "", f"> {snippet}", ""]
        if not hits:
            lines.append("No results.")
        text = "\n".join(lines) + "\n"
        results = self._node(("results", caller.agent, qnode.query), stat_mod.S_IFREG, "results.md", qnode.ino)
        results.data = text.encode()
        return children + [results]

    async def _hits(self, caller: Caller, query: str) -> tuple[list[Any], str]:
        key = (caller.agent, query)
        now = time.monotonic()
        cached = self._results.get(key)
        if cached is not None and now - cached.at < RESULT_TTL:
            return cached.hits, cached.note
        search = getattr(self.gov, "search", None)
        if search is None:
            hits, note = [], "search is not available on this mount"
        else:
            hits, note = await search(caller, query)
        if len(self._results) > 512:
            self._results.clear()
        self._results[key] = _Cached(now, hits, note)
        return hits, note

    # ----- the lock xattr ------------------------------------------------

    async def get_control_xattr(self, ino: int, name: bytes, caller: Caller, path: str) -> bytes:
        if name != LOCK_XATTR:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        fn = getattr(self.gov, "lock_xattr_get", None)
        if fn is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return fn(caller, path)

    async def set_control_xattr(self, ino: int, name: bytes, value: bytes, caller: Caller, path: str) -> None:
        fn = getattr(self.gov, "lock_xattr_set", None)
        if name != LOCK_XATTR or fn is None:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        try:
            await fn(caller, path, value)
        except Denied as e:
            raise pyfuse3.FUSEError(e.errno) from None

    async def remove_control_xattr(self, ino: int, name: bytes, caller: Caller, path: str) -> None:
        fn = getattr(self.gov, "lock_xattr_remove", None)
        if name != LOCK_XATTR or fn is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        try:
            await fn(caller, path)
        except Denied as e:
            raise pyfuse3.FUSEError(e.errno) from None

