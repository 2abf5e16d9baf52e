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
    steps = iter([0.0003] * MIN_SAMPLES + [0.01] + [0.0003] * 8)  # 3.5 GB/s, one 10 ms stall once judged

    class StepClock:
        def __init__(self) -> None:
            self.start = True

        def __call__(self) -> float:
            self.start = not self.start
            if self.start:  # the second reading around a write: add that write's time
                clock.t += next(steps)
            return clock.t

    io = BackingIO("auto", clock=clock)
    for i in range(MIN_SAMPLES + 9):
        io._clock = StepClock()
        assert io.write(fd, i * MIB, b"c" * MIB, i > 0) == (MIB, True)
        io._clock = clock
        assert io.wants_direct((i + 1) * MIB, MIB)


def test_a_slow_disk_keeps_direct_writes_when_the_page_cache_was_slower_still(wfile):
    p, fd = wfile
    clock = Clock()

    class Ticks:
        """Each reading `step` seconds later: every write seems to take `step`."""

        def __init__(self, step: float) -> None:
            self.step = step

        def __call__(self) -> float:
            clock.t += self.step
            return clock.t

    size = STREAM_MIN
    io = BackingIO("auto", clock=Ticks(0.001))  # 128 KiB a ms: 131 MB/s, under the floor
    off = 0
    for _ in range(MIN_SAMPLES):
        assert io.write(fd, off, b"d" * size, off > 0) == (size, True)
        off += size
    assert not io.wants_direct(off, size)
    io._clock = Ticks(0.002)  # and the page cache, tried meanwhile, at half that
    state = True
    for _ in range(MIN_SAMPLES):
        n, state = io.write(fd, off, b"e" * size, state)
        assert (n, state) == (size, False)
        off += size
    clock.t += BACKOFF_S
    io._clock = Ticks(0.001)
    for _ in range(MIN_SAMPLES + 8):  # judged again: slow, but not slower than the cache
        assert io.wants_direct(off, size)
        n, state = io.write(fd, off, b"f" * size, state)
        assert (n, state) == (size, True)
        off += size
    assert io.wants_direct(off, size)


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


def test_large_buffered_reads_drop_the_backing_pages_they_served(workdir: Path):
    p = workdir / "r.bin"
    data = on_disk(p, 4 * MIB)
    fd = os.open(p, os.O_RDONLY)
    try:
        io = BackingIO()
        # fd_direct None: a handle that must not read past the page cache (a writable one)
        assert io.read(fd, 0, MIB) == (data[:MIB], None)
        assert not cached(p, 0)
        assert io.read(fd, MIB, 4096) == (data[MIB:MIB + 4096], None)  # a small read is left alone
        assert cached(p, MIB)
        assert io.read(fd, 4 * MIB - 10, 4096)[0] == data[-10:]  # short at the end
        assert io.read(fd, 0, 2 * MIB)[0] == data[:2 * MIB]  # larger than the buffer so far
        assert io.direct_reads == 0 and not has_direct(fd)
    finally:
        os.close(fd)


@pytest.fixture
def rfile(workdir: Path):
    """A file of 4 MiB - 10 random bytes on disk, none of it cached, open read-only."""
    p = workdir / "d.bin"
    data = on_disk(p, 4 * MIB - 10)
    fd = os.open(p, os.O_RDONLY)
    yield p, fd, data
    os.close(fd)


def test_large_aligned_reads_of_a_read_only_handle_go_past_the_page_cache(rfile):
    p, fd, data = rfile
    io = BackingIO()
    assert io.read(fd, 0, MIB, False) == (data[:MIB], True)
    assert has_direct(fd) and resident(p) == 0
    assert io.read(fd, MIB, 2 * MIB, True) == (data[MIB:3 * MIB], True)  # a larger buffer than so far
    # A small aligned read keeps the fd as it is; an unaligned one reads through the cache.
    assert io.read(fd, 3 * MIB, 8192, True) == (data[3 * MIB:3 * MIB + 8192], True)
    assert has_direct(fd) and not cached(p, 3 * MIB)
    assert io.read(fd, 3 * MIB + 100, 50, True) == (data[3 * MIB + 100:3 * MIB + 150], False)
    assert not has_direct(fd) and cached(p, 3 * MIB)
    assert io.read(fd, 3 * MIB, MIB, False) == (data[3 * MIB:], True)  # short at the end of the file
    assert io.direct_reads == 4
    assert BackingIO(read_mode="never").read(fd, 0, MIB, True) == (data[:MIB], False) and not has_direct(fd)


def test_a_read_past_the_cache_sees_buffered_writes_not_yet_on_disk(rfile):
    p, fd, data = rfile
    wfd = os.open(p, os.O_WRONLY)
    try:
        os.pwrite(wfd, b"new" * 1000, 4096)  # dirty in the page cache, not written back
        assert BackingIO("never", read_mode="always").read(fd, 0, MIB, False)[0] == \
            data[:4096] + b"new" * 1000 + data[7096:MIB]
    finally:
        os.close(wfd)


def test_slow_direct_reads_send_auto_back_to_buffered_reads_for_a_while(rfile):
    p, fd, data = rfile
    clock = Clock()

    class SlowClock:
        def __call__(self) -> float:
            clock.t += 1.0
            return clock.t

    io = BackingIO(clock=SlowClock())
    state: bool | None = False
    for i in range(MIN_SAMPLES):  # 1 MB/s, judged after a few reads
        view, state = io.read(fd, 0, MIB, state)
        assert state is True
    io._clock = clock
    assert io.read(fd, MIB, MIB, state) == (data[MIB:2 * MIB], False)
    assert not has_direct(fd) and io.direct_reads == MIN_SAMPLES
    clock.t += BACKOFF_S
    assert io.read(fd, 2 * MIB, MIB, False) == (data[2 * MIB:3 * MIB], True)


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


def _backing_fd_flags(pid: int, backing: Path) -> list[int]:
    """The flags of the daemon's descriptors open on `backing` for I/O (not its O_PATH inode fds)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != str(backing):
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        flags = int(next(line.split()[1] for line in info.splitlines() if line.startswith("flags:")), 8)
        if not flags & os.O_PATH:
            out.append(flags)
    return out


@pytest.mark.parametrize("mode", ["always", "never"])  # "auto" would depend on this disk's speed
def test_a_reader_streaming_through_the_mount_reads_past_the_backing_cache(workdir: Path, mode: str):
    ws = make_workspace(workdir, OPEN_POLICY + f'\n[mount]\ndirect_reads = "{mode}"\n')
    mnt = workdir / "mnt"
    mnt.mkdir()
    backing = ws.data_path / "big.bin"
    data = on_disk(backing, 16 * MIB + 123)
    with mounted(ws, mnt) as m:
        with open(mnt / "big.bin", "rb", buffering=0) as f:
            got = f.read(4 * MIB)  # the kernel's readahead asks for 1 MiB at a time
            flags = _backing_fd_flags(m.pid, backing)
            got += f.read()
        assert got == data
        assert len(flags) == 1 and bool(flags[0] & os.O_DIRECT) == (mode == "always")
        # Direct, or dropped behind: no second copy either way, but for small
        # requests (under 128 KiB) the kernel sent before the first large one.
        assert resident(backing, 0, 16 * MIB) < 256
        # A writable handle never reads past the cache (its own writes may be pending in it).
        with open(mnt / "big.bin", "r+b", buffering=0) as f:
            f.seek(8 * MIB)
            assert f.read(MIB) == data[8 * MIB:9 * MIB]
            assert not any(fl & os.O_DIRECT for fl in _backing_fd_flags(m.pid, backing))
        assert m.answers()
