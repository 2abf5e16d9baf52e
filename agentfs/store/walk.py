"""Walking a backing subtree by descriptors, never following a symlink."""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any, Iterator

from agentfs.store.backing import join


def walk_below(dir_fd: int, name: str, path: str) -> Iterator[tuple[str, int]]:
    """(path, link count) of everything inside a backing folder, depth first, never following a symlink.

    The link count is that of non-folders (a stat each), 0 for folders.
    Holds one descriptor per level (not per folder seen), so a wide tree
    cannot exhaust them.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    stack: list[tuple[int, str, Any]] = []

    def enter(parent_fd: int, nm: str, p: str) -> None:
        fd = os.open(nm, flags, dir_fd=parent_fd)
        try:
            stack.append((fd, p, os.scandir(fd)))
        except BaseException:
            os.close(fd)
            raise

    enter(dir_fd, name, path)
    try:
        while stack:
            fd, dpath, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                entries.close()
                os.close(fd)
                continue
            p = join(dpath, entry.name)
            is_dir = entry.is_dir(follow_symlinks=False)
            nlink = 0
            if not is_dir:
                with contextlib.suppress(FileNotFoundError):
                    nlink = entry.stat(follow_symlinks=False).st_nlink
            yield p, nlink
            if is_dir:
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):  # gone or swapped meanwhile
                    enter(fd, entry.name, p)
    finally:
        for fd, _, entries in stack:
            entries.close()
            os.close(fd)


def open_below(root_fd: int, path: str, flags: int) -> int:
    """A descriptor (opened with `flags`) of workspace path `path` ("/a/b") under `root_fd`.

    Each folder on the way is opened with O_NOFOLLOW, and so is the last
    part: a symlink in place of a folder fails (ENOTDIR/ELOOP) rather than
    lead outside the tree. `.` and `..` are refused (EINVAL).
    """
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise OSError(errno.EINVAL, "'.' or '..' in a workspace path", path)
    if not parts:
        return os.open(".", flags | os.O_CLOEXEC, dir_fd=root_fd)
    fd = root_fd
    try:
        for part in parts[:-1]:
            nfd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            if fd != root_fd:
                os.close(fd)
            fd = nfd
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    finally:
        if fd != root_fd:
            os.close(fd)


def lstat_below(root_fd: int, path: str) -> os.stat_result | None:
    """The lstat of workspace `path` under `root_fd` (see open_below), or None if it is not there."""
    try:
        fd = open_below(root_fd, path, os.O_PATH)
    except OSError:
        return None
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)
