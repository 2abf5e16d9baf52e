"""Bringing the index in line with the data tree, file by file.

The indexer runs as root over the backing directory, which agents fill, so
it never follows a symlink: the tree is walked with directory fds and every
path from the change feed is opened component by component with
O_NOFOLLOW. Otherwise a symlink planted by an agent could pull /etc/shadow
into the index under a path that agent may read.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from typing import Callable, Iterable

from agentfs.search.chunker import chunk_text
from agentfs.search.extract import MAX_FILE_BYTES, extract
from agentfs.search.index import IndexDB
from agentfs.store.walk import lstat_below, open_below
from agentfs.workspace import Workspace

log = logging.getLogger(__name__)

SKIP_DIRS = frozenset({".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", ".tox", ".mypy_cache"})


@dataclass
class SyncStats:
    seen: int = 0
    indexed: int = 0
    deleted: int = 0
    chunks_added: int = 0
    chunks_kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def _hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class Indexer:
    """Keeps one IndexDB in step with one workspace's data tree."""

    def __init__(self, ws: Workspace, db: IndexDB) -> None:
        self.ws = ws
        self.db = db
        self.root = str(ws.data_path)

    # -- reading without following symlinks ----------------------------------------

    def _open(self, path: str, flags: int) -> int:
        """An fd for workspace path `path` ("/a/b"), refusing symlinks at every step."""
        root = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return open_below(root, path, flags)
        finally:
            os.close(root)

    def _stat(self, path: str) -> os.stat_result | None:
        root = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return lstat_below(root, path)
        finally:
            os.close(root)

    def _read(self, path: str) -> tuple[os.stat_result, bytes]:
        # O_NOATIME: indexing must not change what agents see of their files.
        fd = self._open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOATIME)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
            if st.st_size > MAX_FILE_BYTES:
                return st, b""
            chunks = []
            while True:
                b = os.read(fd, 1 << 20)
                if not b:
                    break
                chunks.append(b)
            return st, b"".join(chunks)
        finally:
            os.close(fd)

    # -- one file ---------------------------------------------------------------------

    def index_file(self, path: str, st: os.stat_result | None = None, stats: SyncStats | None = None) -> bool:
        """Re-index `path` if it changed; True if the index changed."""
        stats = stats if stats is not None else SyncStats()
        stats.seen += 1
        row = self.db.file(path)
        if st is not None and row is not None and (row.size, row.mtime_ns, row.ino) == (
                st.st_size, st.st_mtime_ns, st.st_ino):
            return False
        try:
            st, data = self._read(path)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EINVAL):
                return self.forget([path], stats) > 0
            log.info("cannot read %s: %s", path, e)
            self.db.put_file(path, -1, -1, -1, "", "unknown", "unreadable", [])
            stats.skipped["unreadable"] = stats.skipped.get("unreadable", 0) + 1
            return True
        too_large = st.st_size > MAX_FILE_BYTES
        digest = f"size:{st.st_size}" if too_large else _hash(data)
        if row is not None and row.hash == digest:
            self.db.touch_file(row.id, st.st_size, st.st_mtime_ns, st.st_ino)
            return False
        ex = extract(path, b"\0" * (MAX_FILE_BYTES + 1) if too_large else data)
        chunks = chunk_text(path, ex.text, ex.kind) if ex.text is not None else []
        if ex.skipped:
            stats.skipped[ex.skipped] = stats.skipped.get(ex.skipped, 0) + 1
        kept, added = self.db.put_file(path, st.st_size, st.st_mtime_ns, st.st_ino, digest, ex.kind,
                                       ex.skipped, chunks)
        stats.indexed += 1
        stats.chunks_kept += kept
        stats.chunks_added += added
        return True

    def forget(self, paths: Iterable[str], stats: SyncStats | None = None) -> int:
        """Drop paths and, for directories, everything under them."""
        doomed: set[str] = set()
        for p in paths:
            doomed.update(self.db.paths_under(p))
        n = self.db.delete_files(sorted(doomed)) if doomed else 0
        if stats is not None:
            stats.deleted += n
        return n

    # -- trees ------------------------------------------------------------------------------

    def walk(self, top: str = "/") -> list[tuple[str, os.stat_result]]:
        """Every regular file under workspace path `top`, with its stat, symlinks not followed."""
        out: list[tuple[str, os.stat_result]] = []
        try:
            fd = self._open(top, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return out
        base = "/" + top.strip("/") if top.strip("/") else ""
        try:
            for dirpath, dirnames, filenames, dfd in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
                dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
                rel = dirpath[2:] if dirpath.startswith("./") else ""
                prefix = base + ("/" + os.fsdecode(rel) if rel else "")
                for name in filenames:
                    try:
                        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        out.append((f"{prefix}/{os.fsdecode(name)}", st))
        finally:
            os.close(fd)
        return out

    def scan(self, top: str = "/", progress: Callable[[int, int], None] | None = None) -> SyncStats:
        """Catch up with a subtree: index what changed, forget what is gone."""
        stats = SyncStats()
        files = self.walk(top)
        known = self.db.paths_under(top) if top.strip("/") else list(self.db.file_stats())
        present = {p for p, _ in files}
        gone = [p for p in known if p not in present]
        if gone:
            stats.deleted += self.db.delete_files(gone)
        for i, (path, st) in enumerate(files, 1):
            self.index_file(path, st, stats)
            if progress:
                progress(i, len(files))
        return stats

    def sync_paths(self, paths: Iterable[str]) -> SyncStats:
        """Bring named paths (from the change feed) up to date, whatever they now are."""
        stats = SyncStats()
        for path in dict.fromkeys(paths):
            st = self._stat(path)
            if st is None or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                self.forget([path], stats)
            elif stat.S_ISDIR(st.st_mode):
                sub = self.scan(path)
                stats.indexed += sub.indexed
                stats.deleted += sub.deleted
            else:
                self.index_file(path, st, stats)
        return stats
