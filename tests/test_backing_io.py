"""The data path to the backing file: large writes past its page cache, large reads dropped behind.

Whether a page of a backing file is in the page cache is asked with mincore.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import mmap
import os
from pathlib import Path

import pytest

from agentfs.core.audit import iter_records
from agentfs.core.audit_content import ContentHasher
from agentfs.fuse.backing_io import BACKOFF_S, MIN_SAMPLES, STREAM_MIN, BackingIO
from conftest import OPEN_POLICY, make_workspace, mounted, run, wait_for

MIB = 1 << 20


_libc = ctypes.CDLL(None, use_errno=True)


def resident(path: Path, off: int = 0, size: int | None = None) -> int:
    """Pages of the range in the page cache, by mincore: unlike a RWF_NOWAIT read, it starts no I/O."""
    size = os.path.getsize(path) - off if size is None else size
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY, offset=off) as m:
        view = (ctypes.c_char * size).from_buffer(m)
        vec = (ctypes.c_ubyte * ((size + 4095) // 4096))()
        try:
            if _libc.mincore(ctypes.c_void_p(ctypes.addressof(view)), ctypes.c_size_t(size), vec):
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            del view
    return sum(b & 1 for b in vec)


def cached(path: Path, off: int = 0) -> bool:
    return resident(path, off, 4096) == 1


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def on_disk(path: Path, size: int) -> bytes:
    """A file of random bytes, written and out of the page cache; returns its bytes."""
    data = os.urandom(size)
    path.write_bytes(data)
    evict(path)  # dirty pages cannot be dropped: start from a file on disk
    return data


def has_direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def wfile(workdir: Path):
    p = workdir / "f.bin"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    yield p, fd
    os.close(fd)


def test_only_large_aligned_writes_qualify():
    io = BackingIO("always")
    assert io.wants_direct(0, MIB) and io.wants_direct(4096, STREAM_MIN)
    assert not io.wants_direct(0, STREAM_MIN - 4096)      # small
    assert not io.wants_direct(512, MIB)                  # unaligned offset
    assert not io.wants_direct(0, MIB + 1)                # unaligned size
    assert not BackingIO("never").wants_direct(0, MIB)


def test_a_direct_write_lands_on_disk_not_in_the_page_cache(wfile):
    p, fd = wfile
    io = BackingIO("always")
    data = os.urandom(2 * MIB)
    n, state = io.write(fd, 0, data, False)
    assert (n, state) == (2 * MIB, True) and has_direct(fd)
    assert not cached(p) and not cached(p, MIB)
    # an unaligned tail goes through the page cache, and the fd loses O_DIRECT
    n, state = io.write(fd, 2 * MIB, b"tail", True)
    assert (n, state) == (4, False) and not has_direct(fd)
    assert p.read_bytes() == data + b"tail"
    assert (io.direct_writes, io.buffered_writes) == (1, 1)


def test_buffered_writes_stay_in_the_page_cache_when_told_never(wfile):
    p, fd = wfile
    n, state = BackingIO("never").write(fd, 0, b"x" * MIB, False)
    assert (n, state) == (MIB, False) and not has_direct(fd) and cached(p)


def test_a_slow_disk_sends_auto_back_to_buffered_writes_for_a_while(wfile):
    p, fd = wfile
    clock = Clock()

    class SlowClock:
        """Each reading one second later: every write seems to take a second."""

        def __call__(self) -> float:
            clock.t += 1.0
            return clock.t

    io = BackingIO("auto", clock=SlowClock())
    for i in range(MIN_SAMPLES):  # 1 MB/s: far below the floor, judged after a few writes
        assert io.wants_direct(i * MIB, MIB)
        assert io.write(fd, i * MIB, b"a" * MIB, i > 0) == (MIB, True)
    io._clock = clock
    off = MIN_SAMPLES * MIB
    assert not io.wants_direct(off, MIB)
    assert io.write(fd, off, b"b" * MIB, True) == (MIB, False) and cached(p, off)
    clock.t += BACKOFF_S
    assert io.wants_direct(off + MIB, MIB)
    assert p.read_bytes() == b"a" * off + b"b" * MIB


def test_a_single_stall_among_fast_direct_writes_is_forgiven(wfile):
    p, fd = wfile
    clock = Clock()
    steps = iter([0.0003] * 8 + [0.01] + [0.0003] * 8)  # 3.5 GB/s, one 10 ms stall

    class StepClock:
        def __init__(self) -> None:
            self.start = True

        def __call__(self) -> float:
            self.start = not self.start
            if self.start:  # the second reading around a write: add that write's time
                clock.t += next(steps)
            return clock.t

    io = BackingIO("auto", clock=clock)
    for i in range(17):
        io._clock = StepClock()
        assert io.write(fd, i * MIB, b"c" * MIB, i > 0) == (MIB, True)
        io._clock = clock
        assert io.wants_direct((i + 1) * MIB, MIB)


def test_append_handles_never_go_direct(workdir: Path):
    p = workdir / "log"
    p.write_bytes(b"x" * 100)  # an unaligned end
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        assert BackingIO("always").write(fd, 0, b"y" * MIB, False) == (MIB, None)
        assert not has_direct(fd)
    finally:
        os.close(fd)
    assert p.read_bytes() == b"x" * 100 + b"y" * MIB


def test_a_failed_direct_write_leaves_the_fd_as_the_caller_believes(wfile):
    p, fd = wfile
    ro = os.open(p, os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            BackingIO("always").write(ro, 0, b"z" * MIB, False)  # EBADF, after O_DIRECT was set
        assert not has_direct(ro)
    finally:
        os.close(ro)


def test_large_reads_drop_the_backing_pages_they_served(workdir: Path):
    p = workdir / "r.bin"
    data = on_disk(p, 4 * MIB)
    fd = os.open(p, os.O_RDONLY)
    try:
        io = BackingIO()
        assert io.read(fd, 0, MIB) == data[:MIB]
        assert not cached(p, 0)
        assert io.read(fd, MIB, 4096) == data[MIB:MIB + 4096]  # a small read is left alone
        assert cached(p, MIB)
        assert io.read(fd, 4 * MIB - 10, 4096) == data[-10:]  # short at the end
        assert io.read(fd, 0, 2 * MIB) == data[:2 * MIB]  # larger than the buffer so far
    finally:
        os.close(fd)


def test_hashing_a_file_written_past_the_cache_leaves_none_of_it_cached(workdir: Path):
    p = workdir / "h.bin"
    data = on_disk(p, 24 * MIB)
    want = ContentHasher("sha256").hash_bytes(data)
    hasher = ContentHasher("sha256")
    fd = os.open(p, os.O_RDONLY)
    try:
        assert hasher.hash_fd(fd) == want
        assert cached(p, 0) and cached(p, 20 * MIB)  # an ordinary hash reads through the cache
        evict(p)
        assert hasher.hash_fd(fd, drop_behind=True) == want
        assert resident(p) == 0
    finally:
        os.close(fd)


@pytest.mark.parametrize("mode", ["always", "never"])
def test_streaming_through_the_mount(workdir: Path, mode: str):
    ws = make_workspace(workdir, OPEN_POLICY + f'\n[mount]\ndirect_writes = "{mode}"\n')
    mnt = workdir / "mnt"
    mnt.mkdir()
    with mounted(ws, mnt) as m:
        src = workdir / "src.bin"
        src.write_bytes(os.urandom(16 * MIB + 123))
        want = hashlib.sha256(src.read_bytes()).hexdigest()
        run(["dd", f"if={src}", f"of={mnt}/big.bin", "bs=1M", "status=none"])
        backing = ws.data_path / "big.bin"
        [rec] = wait_for(lambda: [r for r in iter_records(ws, path_glob="/big.bin") if r["op"] == "write"],
                         what="the write record")
        # past the page cache, and hashing it for the record did not bring it back
        assert cached(backing, 8 * MIB) == (mode == "never")
        assert hashlib.sha256((mnt / "big.bin").read_bytes()).hexdigest() == want
        assert hashlib.sha256(backing.read_bytes()).hexdigest() == want
        assert rec["details"]["size"] == 16 * MIB + 123
        assert rec["details"]["hash"] == ContentHasher().hash_path(backing)
        assert m.answers()
