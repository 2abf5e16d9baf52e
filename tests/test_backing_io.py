"""The data path to the backing file: large writes past its page cache, large reads dropped behind.

Whether a page of a backing file is in the page cache is asked with mincore.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import mmap
import os
from pathlib import Path

import pytest

from agentfs.core.audit import iter_records
from agentfs.core.audit_content import ContentHasher
from agentfs.fuse import backing_io
from agentfs.fuse.backing_io import BACKOFF_S, BEHIND_BYTES, MIN_SAMPLES, STREAM_MIN, BackingIO, WriteStream
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


def test_direct_mode_sends_large_aligned_writes_past_the_page_cache(wfile):
    p, fd = wfile
    io = BackingIO("direct")
    st = WriteStream()
    data = os.urandom(2 * MIB)
    assert io.write(fd, 0, data, st) == 2 * MIB
    assert has_direct(fd) and st.direct and st.past_cache
    assert not cached(p) and not cached(p, MIB)
    # small, or unaligned: through the page cache, and the fd loses O_DIRECT
    assert io.write(fd, 2 * MIB, b"s" * 4096, st) == 4096
    assert not has_direct(fd) and not st.direct and cached(p, 2 * MIB)
    assert io.write(fd, 3 * MIB + 512, b"u" * MIB, st) == MIB and not has_direct(fd)
    assert io.write(fd, 2 * MIB + 4096, b"tail", st) == 4
    assert p.read_bytes()[:2 * MIB + 4100] == data + b"s" * 4096 + b"tail"
    assert (io.direct_writes, io.buffered_writes, io.behind_writes) == (1, 3, 0)


def test_cache_mode_leaves_writes_in_the_page_cache(wfile):
    p, fd = wfile
    st = WriteStream()
    assert BackingIO("cache").write(fd, 0, b"x" * MIB, st) == MIB
    assert not has_direct(fd) and cached(p) and not st.past_cache


def test_a_stream_written_behind_keeps_only_its_last_pages_cached(wfile):
    p, fd = wfile
    io = BackingIO()  # "behind", the default
    st = WriteStream()
    data = os.urandom(32 * MIB)
    for off in range(0, 32 * MIB, MIB):
        assert io.write(fd, off, data[off:off + MIB], st) == MIB
    assert resident(p) <= BEHIND_BYTES // 4096
    assert not cached(p, 0) and not cached(p, 32 * MIB - BEHIND_BYTES - 4096) and cached(p, 32 * MIB - 4096)
    assert st.past_cache and not st.direct and not has_direct(fd) and st.late_error is None
    assert (io.behind_writes, io.buffered_writes) == (32, 0)
    # a small write is left to the page cache
    assert io.write(fd, 32 * MIB, b"end", st) == 3 and io.buffered_writes == 1
    assert p.read_bytes() == data + b"end"


def test_a_write_back_failure_met_behind_waits_for_the_next_fsync(wfile, monkeypatch):
    p, fd = wfile
    calls = []

    def failing(fd: int, off: int, size: int, flags: int) -> None:
        calls.append((off, size, flags))
        if flags == backing_io.SYNC_WAIT:
            raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(backing_io, "sync_range", failing)
    io = BackingIO()
    st = WriteStream()
    for off in range(0, BEHIND_BYTES + 2 * MIB, MIB):
        assert io.write(fd, off, b"w" * MIB, st) == MIB  # the write itself succeeded
    assert (0, MIB, backing_io.SYNC_WAIT) in calls and (MIB, MIB, backing_io.SYNC_WAIT) in calls
    e = st.take_error()
    assert isinstance(e, OSError) and e.errno == errno.EIO
    assert st.take_error() is None  # reported once, as the kernel does


def test_a_filesystem_without_sync_file_range_gets_plain_writes(wfile, monkeypatch):
    p, fd = wfile

    def unsupported(fd: int, off: int, size: int, flags: int) -> None:
        raise OSError(errno.ESPIPE, "Illegal seek")

    monkeypatch.setattr(backing_io, "sync_range", unsupported)
    io = BackingIO()
    st = WriteStream()
    assert io.write(fd, 0, b"a" * MIB, st) == MIB and st.plain and st.late_error is None
    assert io.write(fd, MIB, b"b" * MIB, st) == MIB
    assert (io.behind_writes, io.buffered_writes) == (0, 1)
    assert p.read_bytes() == b"a" * MIB + b"b" * MIB


class SlowClock:
    """Each reading `step` seconds later than the last, on `clock`: every write seems to take that long."""

    def __init__(self, clock: Clock, step: float = 1.0) -> None:
        self.clock, self.step = clock, step

    def __call__(self) -> float:
        self.clock.t += self.step
        return self.clock.t


def test_a_slow_disk_sends_writes_behind_back_to_the_page_cache_for_a_while(wfile):
    p, fd = wfile
    clock = Clock()
    io = BackingIO(clock=SlowClock(clock))
    st = WriteStream()
    for i in range(MIN_SAMPLES):  # 1 MB/s: far below the floor, judged after a few writes
        assert io.write(fd, i * MIB, b"a" * MIB, st) == MIB
    assert io.behind_writes == MIN_SAMPLES
    io._clock = clock
    off = MIN_SAMPLES * MIB
    assert io.write(fd, off, b"b" * MIB, st) == MIB
    assert (io.behind_writes, io.buffered_writes) == (MIN_SAMPLES, 1)
    clock.t += BACKOFF_S
    assert io.write(fd, off + MIB, b"c" * MIB, st) == MIB
    assert (io.behind_writes, io.buffered_writes) == (MIN_SAMPLES + 1, 1)
    assert p.read_bytes() == b"a" * off + b"b" * MIB + b"c" * MIB


def test_a_single_stall_among_fast_writes_behind_is_forgiven(wfile):
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

    io = BackingIO(clock=clock)
    st = WriteStream()
    for i in range(MIN_SAMPLES + 9):
        io._clock = StepClock()
        assert io.write(fd, i * MIB, b"c" * MIB, st) == MIB
        io._clock = clock
    assert (io.behind_writes, io.buffered_writes) == (MIN_SAMPLES + 9, 0)


def test_a_slow_disk_keeps_writing_behind_when_the_page_cache_was_slower_still(wfile):
    p, fd = wfile
    clock = Clock()
    size = STREAM_MIN
    io = BackingIO(clock=SlowClock(clock, 0.001))  # 128 KiB a ms: 131 MB/s, under the floor
    st = WriteStream()
    off = 0
    for _ in range(MIN_SAMPLES):
        assert io.write(fd, off, b"d" * size, st) == size
        off += size
    assert io.behind_writes == MIN_SAMPLES
    io._clock = SlowClock(clock, 0.002)  # and the page cache, tried meanwhile, at half that
    for _ in range(MIN_SAMPLES):
        assert io.write(fd, off, b"e" * size, st) == size
        off += size
    assert io.buffered_writes == MIN_SAMPLES
    clock.t += BACKOFF_S
    io._clock = SlowClock(clock, 0.001)
    for _ in range(MIN_SAMPLES + 8):  # judged again: slow, but not slower than the cache
        assert io.write(fd, off, b"f" * size, st) == size
        off += size
    assert (io.behind_writes, io.buffered_writes) == (2 * MIN_SAMPLES + 8, MIN_SAMPLES)


def test_append_handles_never_go_direct(workdir: Path):
    p = workdir / "log"
    p.write_bytes(b"x" * 100)  # an unaligned end
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        st = WriteStream()
        assert BackingIO("direct").write(fd, 0, b"y" * MIB, st) == MIB
        assert st.plain and not has_direct(fd)
    finally:
        os.close(fd)
    assert p.read_bytes() == b"x" * 100 + b"y" * MIB


def test_a_failed_direct_write_leaves_the_fd_as_the_caller_believes(wfile):
    p, fd = wfile
    ro = os.open(p, os.O_RDONLY)
    st = WriteStream()
    try:
        with pytest.raises(OSError):
            BackingIO("direct").write(ro, 0, b"z" * MIB, st)  # EBADF, after O_DIRECT was set
        assert not has_direct(ro) and not st.direct
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
        assert BackingIO("cache", read_mode="always").read(fd, 0, MIB, False)[0] == \
            data[:4096] + b"new" * 1000 + data[7096:MIB]
    finally:
        os.close(wfd)


def test_slow_direct_reads_send_auto_back_to_buffered_reads_for_a_while(rfile):
    p, fd, data = rfile
    clock = Clock()
    io = BackingIO(clock=SlowClock(clock))
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


@pytest.mark.parametrize("setting", ['stream_writes = "behind"', 'stream_writes = "direct"',
                                     'stream_writes = "cache"', 'direct_writes = "always"'])
def test_streaming_through_the_mount(workdir: Path, setting: str):
    """Each way a large write can reach the disk, and the old key's "always" still meaning direct."""
    ws = make_workspace(workdir, OPEN_POLICY + f'\n[mount]\n{setting}\n')
    mode = setting.split('"')[1]
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
        # past the page cache (behind: all but the last pages), and hashing it for the record did
        # not bring it back
        assert cached(backing, 0) == (mode == "cache")
        if mode == "behind":
            assert 0 < resident(backing) <= BEHIND_BYTES // 4096 + 1
        elif mode != "cache":
            assert resident(backing) <= 1  # the 123-byte tail went through the cache
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


def test_fsync_reports_a_write_back_failure_that_writing_behind_took_from_the_kernel(tmp_path, monkeypatch):
    """The handler, called directly: an EIO of the disk cannot be made to order under a mount here."""
    import pyfuse3
    import trio

    from agentfs.fuse.operations import Operations

    def failing(fd: int, off: int, size: int, flags: int) -> None:
        if flags == backing_io.SYNC_WAIT:
            raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(backing_io, "sync_range", failing)
    root = tmp_path / "data"
    root.mkdir()
    ops = Operations(os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))

    class Ctx:
        uid, gid, pid, umask = 0, 0, os.getpid(), 0o022

    outcomes: list[object] = []

    async def main() -> None:
        fi, _ = await ops.create(pyfuse3.ROOT_INODE, b"f", 0o100644, os.O_CREAT | os.O_WRONLY, Ctx())
        for off in range(0, BEHIND_BYTES + MIB, MIB):
            outcomes.append(await ops.write(fi.fh, off, b"q" * MIB))
        for _ in range(2):
            try:
                await ops.fsync(fi.fh, False)
                outcomes.append("ok")
            except pyfuse3.FUSEError as e:
                outcomes.append(errno.errorcode[e.errno])
        await ops.release(fi.fh)

    trio.run(main)
    assert outcomes == [MIB] * (BEHIND_BYTES // MIB + 1) + ["EIO", "ok"]
    assert (root / "f").read_bytes() == b"q" * (BEHIND_BYTES + MIB)
