"""The inode table's reading of where an object is now (`real_path`), without a kernel."""

from __future__ import annotations

import os

import pytest

from agentfs.fuse import inodes as inodes_mod
from agentfs.fuse.inodes import InodeTable


@pytest.fixture
def table(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    root_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    t = InodeTable(root_fd)
    a = t.remember(1, "a", os.stat(tmp_path / "a"))
    yield tmp_path, t, a
    t.close_all()
    os.close(root_fd)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_move_beside_the_table_is_seen_once_the_reading_is_old(table, monkeypatch):
    root, t, a = table
    clock = Clock()
    monkeypatch.setattr(inodes_mod.time, "monotonic", clock)
    assert t.real_path(a) == "/a"
    os.rename(root / "a", root / "b" / "a")  # another daemon, or an operator in the data tree
    assert t.real_path(a) == "/a"  # within the reading's short life
    clock.now += inodes_mod.REAL_PATH_TTL_S
    assert t.real_path(a) == "/b/a"


def test_a_move_made_through_the_table_is_seen_at_once(table, monkeypatch):
    root, t, a = table
    monkeypatch.setattr(inodes_mod.time, "monotonic", Clock())
    assert t.real_path(a) == "/a"
    os.rename(root / "a", root / "c")
    t.move(1, "a", 1, "c")
    assert t.real_path(a) == "/c"


def test_a_removed_object_has_no_real_path(table, monkeypatch):
    root, t, a = table
    monkeypatch.setattr(inodes_mod.time, "monotonic", Clock())
    assert t.real_path(a) == "/a"
    os.rmdir(root / "a")
    t.unlink(1, "a")
    assert t.real_path(a) is None


def test_fd_closer_closes_descriptors_itself_past_its_backlog():
    """Queued descriptors still count against RLIMIT_NOFILE: the queue is bounded."""
    import fcntl
    import threading

    from agentfs.fuse.inodes import FdCloser

    gate = threading.Event()

    class Stalled(FdCloser):
        def _run(self) -> None:
            gate.wait()
            super()._run()

    def is_open(fd: int) -> bool:
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
            return True
        except OSError:
            return False

    closer = Stalled()
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(FdCloser.BACKLOG_MAX + 10)]
    try:
        for fd in fds:
            closer(fd)
        assert [fd for fd in fds if is_open(fd)] == fds[:FdCloser.BACKLOG_MAX]
    finally:
        gate.set()
        closer.stop()
    assert not any(is_open(fd) for fd in fds)
