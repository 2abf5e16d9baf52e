"""Run the same operation on a native directory and through the mount, and compare.

Shared by the POSIX comparison tests and the randomised comparison: an
operation is a function of a tree root; it runs on both trees (optionally as
a real non-root user, in a forked child), and what it returned or the errno it
failed with, plus the stat fields POSIX defines for the paths it touched, must
be the same on both sides. Times are compared as changes (did mtime/ctime
move?), never as absolute values.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import os
import pickle
import stat
import time
from pathlib import Path
from typing import Any, Callable, Iterable

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
CLOCK_REALTIME_COARSE = 5  # the clock ext4 stamps times with


def _check(ret: int) -> int:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret


def renameat2(old: Path | bytes, new: Path | bytes, flags: int) -> None:
    _check(_libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags))


def utimensat(path: Path, atime: tuple[int, int], mtime: tuple[int, int], follow: bool = True) -> None:
    """utimensat(2) with explicit (sec, nsec) pairs, so UTIME_NOW and UTIME_OMIT can be sent."""
    ts = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    _check(_libc.utimensat(AT_FDCWD, os.fsencode(path), ts, 0 if follow else AT_SYMLINK_NOFOLLOW))


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", value) or ("err", errno name): what a caller can observe of a syscall."""
    try:
        return ("ok", fn())
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, e.errno))


def as_user(uid: int, gid: int, fn: Callable[[], Any], umask: int = 0o022,
            groups: Iterable[int] = ()) -> tuple[str, Any]:
    """The outcome of `fn` run by a real non-root user (a forked child that drops root)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            os.umask(umask)
            res = outcome(fn)
            data = pickle.dumps(res)
        except BaseException as e:  # report, never return into pytest's stack
            data = pickle.dumps(("crash", repr(e)))
        with contextlib.suppress(BaseException):
            os.write(w, data)
        os._exit(0)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    os.waitpid(pid, 0)
    res = pickle.loads(b"".join(chunks))
    assert res[0] != "crash", res
    return res


def sig(p: Path | bytes, with_size_of_dirs: bool = False) -> tuple:
    """The POSIX-defined, comparable stat fields of `p` (not followed), or (errno name,)."""
    try:
        st = os.lstat(p)
    except OSError as e:
        return (errno.errorcode.get(e.errno, e.errno),)
    size = st.st_size if (with_size_of_dirs or not stat.S_ISDIR(st.st_mode)) else None
    return (stat.filemode(st.st_mode), st.st_mode, st.st_nlink, st.st_uid, st.st_gid, size,
            st.st_rdev if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) else 0)


def times(p: Path | bytes) -> tuple[int, int, int, int] | None:
    try:
        st = os.lstat(p)
    except OSError:
        return None
    return st.st_ino, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns


def time_moves(before: tuple | None, after: tuple | None, atime: bool) -> tuple | str | None:
    """Which of (atime, mtime, ctime) an operation moved ("replaced" if the name is another object now)."""
    if before is None or after is None:
        return None
    if before[0] != after[0]:
        return "replaced"
    moved = tuple(a != b for a, b in zip(before[1:], after[1:]))
    return moved if atime else moved[1:]


def clock_tick() -> None:
    """Wait for ext4's coarse clock to advance, so a change of time is visible as one."""
    t0 = time.clock_gettime_ns(CLOCK_REALTIME_COARSE)
    deadline = time.monotonic() + 1
    while time.clock_gettime_ns(CLOCK_REALTIME_COARSE) == t0 and time.monotonic() < deadline:
        time.sleep(0.001)


def tree(root: Path, xattrs: bool = True) -> dict[bytes, tuple]:
    """Everything observable of a tree: names, types, modes, owners, sizes, contents, links, targets."""
    out: dict[bytes, tuple] = {}
    broot = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(broot, followlinks=False):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, broot)
            extra: Any = None
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    extra = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            xa: Any = None
            if xattrs and not stat.S_ISLNK(st.st_mode):
                xa = sorted((n, os.getxattr(p, n)) for n in os.listxattr(p) if n.startswith("user."))
            out[rel] = (stat.filemode(st.st_mode), st.st_nlink, st.st_uid, st.st_gid,
                        None if stat.S_ISDIR(st.st_mode) else st.st_size, extra, xa)
    return out


class Pair:
    """A native directory and the same directory through the mount, driven in lockstep."""

    def __init__(self, native: Path, mounted: Path) -> None:
        self.native, self.mounted = native, mounted

    @property
    def roots(self) -> tuple[Path, Path]:
        return self.native, self.mounted

    def setup(self, fn: Callable[[Path], Any]) -> None:
        """Prepare both trees alike (as root); must succeed on both."""
        for root in self.roots:
            fn(root)

    def run(self, fn: Callable[[Path], Any], watch: Iterable[str | bytes] = (), *,
            user: tuple[int, int] | None = None, umask: int = 0o022, atime: bool = False,
            times_too: bool = True) -> tuple[str, Any]:
        """Run `fn(root)` on both trees; assert same outcome, same stat of `watch`, same time moves."""
        watch = list(watch)
        results = []
        for root in self.roots:
            paths = [root / os.fsdecode(w) for w in watch]
            t0 = [times(p) for p in paths]
            if times_too:
                clock_tick()
            if user is None:
                res = outcome(lambda: fn(root))
            else:
                res = as_user(user[0], user[1], lambda: fn(root), umask=umask)
            st = [sig(p) for p in paths]
            moves = [time_moves(a, times(p), atime) for a, p in zip(t0, paths)] if times_too else None
            results.append((res, st, moves))
        (rn, sn, mn), (rm, sm, mm) = results
        assert rm == rn, f"outcome differs: native {rn}, mount {rm}"
        for w, a, b in zip(watch, sn, sm):
            assert b == a, f"stat of {w!r} differs: native {a}, mount {b}"
        if times_too:
            for w, a, b in zip(watch, mn, mm):
                assert b == a, f"time changes (atime?, mtime, ctime) of {w!r} differ: native {a}, mount {b}"
        return rn

    def same_tree(self, xattrs: bool = True) -> None:
        tn, tm = tree(self.native, xattrs), tree(self.mounted, xattrs)
        only_n = sorted(set(tn) - set(tm))
        only_m = sorted(set(tm) - set(tn))
        assert not only_n and not only_m, f"names differ: native only {only_n}, mount only {only_m}"
        diff = {k: (tn[k], tm[k]) for k in tn if tn[k] != tm[k]}
        assert not diff, f"entries differ (native, mount): {diff}"


@contextlib.contextmanager
def live_mount_beside_native(prefix: str):
    """A mount of an open workspace and a native directory on the same filesystem.

    At the end the mount must still answer and its daemon must have logged no
    internal error (an exception that reached the handler wrapper).
    """
    import shutil
    import tempfile

    from conftest import make_workspace, mounted

    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(base, 0o755)
    ws = make_workspace(base)
    native = base / "native"
    native.mkdir()
    try:
        with mounted(ws, base / "mnt") as m:
            yield m, native
            assert m.answers() and m.alive()
        logs = "".join(p.read_text(errors="replace") for p in ws.run_path.glob("mount-*.log"))
        assert "internal error" not in logs, logs
    finally:
        shutil.rmtree(base, ignore_errors=True)
