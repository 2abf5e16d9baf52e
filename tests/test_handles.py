"""FileHandle's kept bytes: the file's content only while nothing else changed it."""

from __future__ import annotations

import os

import pytest

from agentfs.core.governor import Caller
from agentfs.fuse.handles import KEEP_BYTES, FileHandle
from agentfs.fuse.inodes import Inode


@pytest.fixture
def fd(tmp_path):
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    yield fd
    os.close(fd)


def _handle(fd: int, node: Inode) -> FileHandle:
    return FileHandle(fd, node.ino, Caller("a", 0, 0, 1), "/f", True, False, node=node, chunks=[])


def _node() -> Inode:
    return Inode(ino=2, dev=1, backing_ino=3, kind=0o100000)


def test_writes_in_order_from_zero_are_the_content(fd):
    h = _handle(fd, _node())
    h.write(0, b"abc")
    h.write(3, b"def")
    assert h.content(6) == [b"abc", b"def"]
    assert h.content(7) is None  # the file is longer than what was written


def test_a_write_out_of_order_or_past_the_limit_stops_keeping(fd):
    h = _handle(fd, _node())
    h.write(3, b"def")
    assert h.content(6) is None
    big = _handle(fd, _node())
    big.write(0, b"x" * (KEEP_BYTES + 1))
    assert big.chunks is None


def test_another_handles_write_or_a_truncation_after_ours_stops_it(fd):
    node = _node()
    a, b = _handle(fd, node), _handle(fd, node)
    a.write(0, b"abc")
    b.write(0, b"x")
    assert a.content(3) is None and b.content(3) is None
    c = _handle(fd, node)
    c.write(0, b"abc")
    assert c.content(3) == [b"abc"]
    node.changes += 1  # what a truncation through the daemon does
    assert c.content(3) is None


def test_another_handles_write_before_ours_does_not_matter(fd):
    node = _node()
    a, b = _handle(fd, node), _handle(fd, node)
    b.write(0, b"x")
    a.write(0, b"abc")
    assert a.content(3) == [b"abc"]
