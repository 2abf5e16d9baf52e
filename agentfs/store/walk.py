"""Walking a backing subtree by descriptors, never following a symlink."""

from __future__ import annotations

import contextlib
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


def lstat_below(root_fd: int, path: str) -> os.stat_result | None:
    """The lstat of workspace `path` under `root_fd`, or None if it is not there.

    Each folder on the way is opened with O_NOFOLLOW, so a symlink in place
    of one gives None rather than something outside the tree; a symlink at
    the end is described itself, as lstat does.
    """
    parts = [p for p in path.split("/") if p]
    if not parts:
        return os.fstat(root_fd)
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd, opened = root_fd, []
    try:
        for part in parts[:-1]:
            fd = os.open(part, flags, dir_fd=fd)
            opened.append(fd)
        return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
    except OSError:
        return None
    finally:
        for o in opened:
            os.close(o)
