"""No input kills the mount.

Odd open flags, binary and maximal names, odd xattrs, huge offsets and a
storm of concurrent renames and deletes are fired at one mount; after each the
mount must still answer, the daemon must be alive, and its log must show no
"internal error" (what our handler wrapper logs when a Python exception
escapes a handler). A daemon killed mid-write leaves what it acknowledged on
disk and a stale mountpoint that `agentfs mount` recovers.
"""

from __future__ import annotations

import errno
import mmap
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agentfs.fuse.mounting import is_stale
from agentfs.fuse.daemon import inode_fd_budget
from conftest import Mount, make_workspace, mounted, wait_for
from posix_pair import outcome, tree


def log_text(m: Mount) -> str:
    return "".join(p.read_text(errors="replace") for p in m.ws.run_path.glob("mount-*.log"))


def healthy(m: Mount) -> None:
    assert m.alive(), "the daemon died"
    assert m.answers(), "the mount stopped answering"
    log = log_text(m)
    assert "internal error" not in log, log[-4000:]
    assert "Traceback" not in log, log[-4000:]


def _try(fn) -> str:
    """Run a syscall for its effect on the daemon; any clean errno is fine."""
    try:
        fn()
        return "ok"
    except OSError as e:
        assert e.errno not in (errno.ENOTCONN, errno.ECONNABORTED), f"the mount died: {e}"
        return errno.errorcode.get(e.errno, str(e.errno))


FLAG_BITS = [os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_EXCL, os.O_TRUNC, os.O_APPEND,
             os.O_NONBLOCK, os.O_DSYNC, os.O_SYNC, os.O_DIRECT, os.O_NOATIME, os.O_NOFOLLOW,
             os.O_DIRECTORY, os.O_CLOEXEC, os.O_ASYNC, os.O_LARGEFILE, os.O_NOCTTY, os.O_PATH,
             0o3, 0x40000000, 0x20000000, 0x80000000 >> 1]


def test_odd_open_flags(mount):
    m = mount.path
    (m / "f").write_bytes(b"0123456789" * 1000)
    (m / "d").mkdir()
    os.symlink("f", m / "l")
    os.symlink("nowhere", m / "dl")
    assert outcome(lambda: os.open(m / "l", os.O_RDONLY | os.O_NOFOLLOW)) == ("err", "ELOOP")
    assert outcome(lambda: os.open(m / "f", os.O_RDONLY | os.O_DIRECTORY)) == ("err", "ENOTDIR")
    r = outcome(lambda: os.open(m / "d", os.O_TMPFILE | os.O_WRONLY, 0o600))
    assert r[0] == "err" and r[1] in ("ENOTSUP", "EISDIR", "EINVAL"), r  # ENOTSUP == EOPNOTSUPP
    fd = os.open(m / "f", os.O_PATH)
    assert os.fstat(fd).st_size == 10000
    os.close(fd)
    rng = random.Random(7)
    for _ in range(400):
        flags = 0
        for bit in rng.sample(FLAG_BITS, rng.randint(1, 5)):
            flags |= bit
        name = rng.choice(["f", "d", "l", "dl", "missing", "d/new"])
        try:
            fd = os.open(m / name, flags, 0o644)
        except OSError as e:
            assert e.errno != errno.ENOTCONN
            continue
        try:
            _try(lambda: os.read(fd, 4096))
            _try(lambda: os.pread(fd, 100, 3))  # unaligned under O_DIRECT
            _try(lambda: os.write(fd, b"abc"))
            _try(lambda: os.pwrite(fd, b"x" * 4096, 4096))
            _try(lambda: os.fsync(fd))
            _try(lambda: os.ftruncate(fd, 5000))
        finally:
            os.close(fd)
    healthy(mount)


def test_o_direct_unaligned_and_aligned(mount):
    m = mount.path
    fd = os.open(m / "direct", os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        buf = mmap.mmap(-1, 4096)
        buf[:] = b"a" * 4096
        assert os.pwritev(fd, [buf], 0) == 4096
        for off, size in ((1, 10), (4095, 3), (0, 1), (4096 * 3 + 7, 5000)):
            _try(lambda: os.pread(fd, size, off))
            _try(lambda: os.pwrite(fd, b"z" * size, off))
        rb = mmap.mmap(-1, 4096)
        assert os.preadv(fd, [rb], 0) == 4096
    finally:
        os.close(fd)
    healthy(mount)


def test_binary_maximal_and_odd_names(mount):
    m = os.fsencode(mount.path)
    names = [b"\xff" * 255, b"\n" * 10, b"a\nb\rc", b"\x01" * 255, b"-", b"--", b" ", b"\\",
             "é".encode() * 127, b"\xe9" * 255, b"x" * 256, b"y" * 1000, b".hidden", b"..."]
    for n in names:
        p = os.path.join(m, n)
        for op in (lambda: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)), lambda: os.stat(p),
                   lambda: os.setxattr(p, "user.k", b"v"), lambda: os.rename(p, p + b"2"[: 255 - len(n)] or p),
                   lambda: os.mkdir(p + b"d" if len(n) < 255 else p), lambda: os.symlink(n, p + b"s"),
                   lambda: os.link(p, p + b"h"), lambda: os.listdir(m)):
            _try(op)
    assert len([n for n in os.listdir(m) if n.startswith(b"\xff")]) >= 1
    healthy(mount)


def test_odd_xattrs(mount):
    p = mount.path / "f"
    p.write_bytes(b"")
    for name, value in (("user.", b""), ("user.e", b""), ("user.big", b"v" * 65536), ("user.big", b"v" * 65537),
                        ("user.four", b"v" * 4000), ("user." + "n" * 250, b"v"), ("trusted.x", b"v"),
                        ("security.x", b"v"), ("system.posix_acl_access", b"\x02\x00\x00\x00"), ("bogus", b""),
                        ("user.agentfs.", b""), ("user.agentfs.lock", b"garbage\xff")):
        _try(lambda: os.setxattr(p, name, value))
        _try(lambda: os.getxattr(p, name))
        _try(lambda: os.removexattr(p, name))
    _try(lambda: os.listxattr(p))
    _try(lambda: os.getxattr(mount.path, "user.x"))
    assert outcome(lambda: os.setxattr(p, "", b"")) [0] == "err"
    healthy(mount)


def test_huge_offsets_and_closed_descriptors(mount):
    p = mount.path / "f"
    p.write_bytes(b"data")
    fd = os.open(p, os.O_RDWR)
    for off in (2**31, 2**32 + 1, 2**62, 2**63 - 1):
        assert outcome(lambda o=off: os.pread(fd, 10, o)) in (("ok", b""), ("err", "EINVAL"))
        _try(lambda o=off: os.pwrite(fd, b"x", o))
    assert outcome(lambda: os.lseek(fd, -1, os.SEEK_SET)) == ("err", "EINVAL")
    _try(lambda: os.lseek(fd, 0, os.SEEK_DATA))
    _try(lambda: os.lseek(fd, 0, os.SEEK_HOLE))
    _try(lambda: os.truncate(p, 2**63 - 1))
    os.close(fd)
    assert outcome(lambda: os.write(fd, b"x")) == ("err", "EBADF")
    assert outcome(lambda: os.read(fd, 1)) == ("err", "EBADF")
    healthy(mount)


def _storm(root: str, seed: int, seconds: float) -> None:
    rng = random.Random(seed)
    names = [os.path.join(root, n) for n in ("a", "b", "c", "d", "e")] + \
            [os.path.join(root, "a", n) for n in ("x", "y")]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        a, b = rng.choice(names), rng.choice(names)
        op = rng.randrange(11)
        try:
            if op == 0:
                os.rename(a, b)
            elif op == 1:
                os.unlink(a)
            elif op == 2:
                os.close(os.open(a, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644))
            elif op == 3:
                os.mkdir(a)
            elif op == 4:
                os.rmdir(a)
            elif op == 5:
                os.link(a, b)
            elif op == 6:
                os.symlink(os.path.basename(b), a)
            elif op == 7:
                os.listdir(os.path.dirname(a))
            elif op == 8:
                with open(a, "ab") as f:
                    f.write(b"x" * rng.randrange(1, 9000))
            elif op == 9:
                os.stat(a)
            else:
                os.truncate(a, rng.randrange(0, 5000))
        except OSError as e:
            if e.errno in (errno.ENOTCONN, errno.ECONNABORTED):
                raise


def test_concurrent_renames_and_deletes_from_threads_and_processes(mount):
    root = str(mount.path / "storm")
    os.mkdir(root)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_storm, args=(root, s, 4.0)) for s in range(4)]
    for p in procs:
        p.start()
    threads = [threading.Thread(target=_storm, args=(root, 100 + s, 4.0)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0, "a storm process hit a dead mount"
    healthy(mount)
    # After the storm the mount shows exactly the backing tree: no name maps to a wrong object.
    through, backing = tree(Path(root), xattrs=False), tree(mount.ws.data_path / "storm", xattrs=False)
    assert through == backing
    healthy(mount)


def _writer(path: str, conn) -> None:
    """Write numbered 4 KiB blocks, reporting each one the kernel acknowledged."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    i = 0
    try:
        while True:
            block = (b"%08d" % i) * 512
            os.write(fd, block)
            conn.send(i)
            i += 1
    except OSError as e:
        conn.send(("stopped", e.errno))


def test_daemon_killed_mid_write_keeps_acknowledged_data_and_remounts(ws, workdir):
    mnt = workdir / "mnt"
    with mounted(ws, mnt) as m:
        ctx = multiprocessing.get_context("fork")
        rx, tx = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_writer, args=(str(mnt / "log.bin"), tx))
        child.start()
        acked = -1
        while acked < 200:
            assert rx.poll(10), "the writer made no progress"
            acked = rx.recv()
        os.kill(m.pid, signal.SIGKILL)
        wait_for(lambda: not m.alive(), what="daemon death")
        child.join(20)
        if child.is_alive():
            child.kill()
            child.join()
        last = acked
        stopped = None
        while rx.poll(0):
            msg = rx.recv()
            if isinstance(msg, tuple):
                stopped = msg
            else:
                last = msg
        assert stopped is not None and stopped[1] in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO), stopped
        assert is_stale(mnt), "a killed daemon should leave ENOTCONN behind"
        data = (ws.data_path / "log.bin").read_bytes()
        assert len(data) >= (last + 1) * 4096
        for i in range(last + 1):
            assert data[i * 4096:(i + 1) * 4096] == (b"%08d" % i) * 512, f"acknowledged block {i} lost"
        with mounted(ws, mnt) as m2:
            assert m2.answers()
            assert (mnt / "log.bin").read_bytes()[:4096] == b"00000000" * 512
            healthy(m2)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_termination_signals_unmount_cleanly(ws, workdir, signame):
    mnt = workdir / "mnt"
    with mounted(ws, mnt) as m:
        (mnt / "f").write_bytes(b"kept")
        os.kill(m.pid, getattr(signal, signame))
        wait_for(lambda: not m.alive(), what="daemon exit")
        assert not os.path.ismount(mnt)
        assert (ws.data_path / "f").read_bytes() == b"kept"
        assert "internal error" not in log_text(m)


def test_helper_sees_a_dead_mount(ws, workdir):
    with mounted(ws, workdir / "mnt") as m:
        healthy(m)
        os.kill(m.pid, signal.SIGKILL)
        wait_for(lambda: not m.alive(), what="daemon death")
        with pytest.raises(AssertionError):
            healthy(m)
        assert _try(lambda: os.listdir(Path("/"))) == "ok"


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_forgotten_inodes_release_their_descriptors(mount):
    """Each inode the kernel knows pins a descriptor; when the kernel forgets, they must all go."""
    base = _fds(mount.pid)
    d = mount.path / "many"
    d.mkdir()
    for i in range(1000):
        p = d / f"f{i}"
        p.write_bytes(b"x")
        if i % 3 == 0:
            os.link(p, d / f"h{i}")
        if i % 5 == 0:
            os.symlink(f"f{i}", d / f"s{i}")
    for e in os.scandir(d):
        e.stat(follow_symlinks=False)
    assert _fds(mount.pid) > base + 150  # descriptors are opened lazily, not for every entry
    for e in list(os.scandir(d)):
        os.unlink(e.path)
    os.rmdir(d)

    def settled() -> bool:
        Path("/proc/sys/vm/drop_caches").write_text("2")
        return _fds(mount.pid) < base + 50
    wait_for(settled, timeout=20, interval=0.2, what="descriptors released after the kernel forgot the inodes")
    (mount.path / "after").write_bytes(b"still works")
    assert (mount.path / "after").read_bytes() == b"still works"
    healthy(mount)


def test_create_never_opens_a_fifo_or_device_that_took_the_name(tmp_path):
    """create() finding its name taken opens it as root: a FIFO there would block the whole daemon.

    The kernel looks a name up before it sends create, so only a race (a name
    swapped in between) gets here; the handler is called directly to hit it
    every time.
    """
    import stat as stat_mod

    import pyfuse3
    import trio

    from agentfs.fuse.operations import Operations

    root = tmp_path / "data"
    root.mkdir()
    os.mkfifo(root / "fifo")
    os.mknod(root / "dev", 0o666 | stat_mod.S_IFCHR, os.makedev(1, 5))
    (root / "dir").mkdir()
    (root / "file").write_bytes(b"regular")
    ops = Operations(os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))

    class Ctx:
        uid, gid, pid, umask = 0, 0, os.getpid(), 0o022

    results: dict[bytes, object] = {}

    async def main() -> None:
        for name in (b"fifo", b"dev", b"dir", b"file"):
            for flags in (os.O_WRONLY, os.O_RDONLY):
                try:
                    fi, _ = await ops.create(pyfuse3.ROOT_INODE, name, 0o100644, os.O_CREAT | flags, Ctx())
                    await ops.release(fi.fh)
                    results[name] = "opened"
                except pyfuse3.FUSEError as e:
                    results[name] = errno.errorcode[e.errno]

    th = threading.Thread(target=trio.run, args=(main,), daemon=True)
    th.start()
    th.join(10)
    if th.is_alive():
        os.close(os.open(root / "fifo", os.O_RDONLY | os.O_NONBLOCK))  # release the blocked open
        th.join(5)
        pytest.fail("create() blocked on a FIFO")
    assert results == {b"fifo": "ENXIO", b"dev": "ENXIO", b"dir": "EISDIR", b"file": "opened"}, results


def test_more_files_than_descriptors_the_daemon_may_hold(workdir):
    """A tree larger than the inode table's descriptor budget still works: old ones are closed and reopened."""
    ws = make_workspace(workdir)
    mnt = workdir / "mnt-fds"
    with mounted(ws, mnt, prefix=("prlimit", "--nofile=2000:2000")) as m:
        budget = inode_fd_budget(2000)
        n = budget + 1000
        per_dir = 500
        for d in range(0, n, per_dir):
            sub = mnt / f"d{d}"
            sub.mkdir()
            for i in range(min(per_dir, n - d)):
                (sub / f"f{i}").write_bytes(b"x")
        assert sum(len(os.listdir(mnt / f"d{d}")) for d in range(0, n, per_dir)) == n
        held = len(os.listdir(f"/proc/{m.pid}/fd"))
        assert held < budget + 200, held
        for d in range(0, n, per_dir):
            shutil.rmtree(mnt / f"d{d}")
        assert [e for e in os.listdir(mnt) if e.startswith("d")] == []
        assert m.answers()


def test_a_tree_deeper_than_pythons_recursion_limit_works_and_can_be_removed(workdir):
    """ext4 has no depth limit; the daemon climbs parents in loops, even with its descriptors evicted."""
    ws = make_workspace(workdir)
    mnt = workdir / "mnt-deep"
    depth = 1500
    with mounted(ws, mnt, prefix=("prlimit", "--nofile=1000:1000")) as m:
        (mnt / "deep").mkdir()
        cur = os.open(mnt / "deep", os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in range(depth):
                os.mkdir("d", dir_fd=cur)
                nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=cur)
                os.close(cur)
                cur = nxt
            with open(os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=cur), "w") as f:
                f.write("deep\n")
        finally:
            os.close(cur)
        # more objects than the daemon may hold descriptors for: the chain's are evicted
        (mnt / "wide").mkdir()
        for i in range(inode_fd_budget(1000) + 100):
            (mnt / "wide" / f"f{i}").write_bytes(b"")
        r = subprocess.run(["find", str(mnt / "deep"), "-name", "leaf.txt"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.count("leaf.txt") == 1, r.stderr[-300:]
        subprocess.run(["rm", "-rf", str(mnt / "deep"), str(mnt / "wide")], check=True)
        assert not (ws.data_path / "deep").exists() and not (ws.data_path / "wide").exists()
        healthy(m)
