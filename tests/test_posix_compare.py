"""Each operation through the mount against the same operation on a native directory.

Same result, same errno, same mode/owner/size, and the same time fields moved
(or not), as root and as real non-root users. One mount serves the module;
each test works in its own fresh subdirectory of both trees.
"""

from __future__ import annotations

import errno
import itertools
import mmap
import os
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from posix_pair import (live_mount_beside_native, RENAME_EXCHANGE, RENAME_NOREPLACE, UTIME_NOW, UTIME_OMIT, Pair, as_user, outcome,
                        renameat2, sig, utimensat)

T1, T2 = 2901, 2902
_counter = itertools.count()


@pytest.fixture(scope="module")
def live(users):
    with live_mount_beside_native("agentfs-pc-") as pair:
        yield pair


@pytest.fixture
def pair(live) -> Pair:
    m, native = live
    name = f"t{next(_counter)}"
    p = Pair(native / name, m.path / name)
    for root in p.roots:
        root.mkdir()
        os.chmod(root, 0o777)
    return p


def _write(p: Path, data: bytes = b"x" * 100, mode: int = 0o644) -> None:
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(p, mode)


def _ftruncate_through(p: Path, flags: int, size: int) -> None:
    fd = os.open(p, flags)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def _quiet(p: Path, mode: int = 0o644) -> None:
    """A file made without a write through the mount (the audit hasher reads written files, moving atime)."""
    os.mknod(p, stat.S_IFREG | mode)
    os.chmod(p, mode)


def _read(p: Path) -> bytes:
    with open(p, "rb") as f:
        return f.read()


# ----- lookup / stat ----------------------------------------------------------


def test_stat_of_every_kind_of_object(pair):
    def make(r):
        _write(r / "f", b"hello")
        (r / "d").mkdir()
        os.symlink("f", r / "l")
        os.mkfifo(r / "p")
        os.mknod(r / "c", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    pair.run(make, ["f", "d", "l", "p", "c", "."])
    for name in ("f", "d", "l", "p", "c", "missing", "f/x", "l/x"):
        pair.run(lambda r, n=name: sig(r / n) if os.lstat(r / n) else None)
        pair.run(lambda r, n=name: sig(r / n) if os.stat(r / n) else None)
    pair.same_tree()


def test_readdir_inode_numbers_match_stat(pair):
    pair.setup(lambda r: [_write(r / f"f{i}") for i in range(20)])
    with os.scandir(pair.mounted) as it:
        for e in it:
            assert e.inode() == os.lstat(e.path).st_ino


# ----- truncate -----------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 5, 100, 4096, 1 << 20])
@pytest.mark.parametrize("how", ["path", "fd"])
def test_truncate_grow_and_shrink(pair, size, how):
    pair.setup(lambda r: _write(r / "f", bytes(range(100))))

    def trunc(r):
        if how == "path":
            os.truncate(r / "f", size)
        else:
            fd = os.open(r / "f", os.O_RDWR)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
        return _read(r / "f")
    pair.run(trunc, ["f"])


def test_truncate_errors(pair):
    pair.setup(lambda r: ((r / "d").mkdir(), _write(r / "ro", mode=0o444)))
    pair.run(lambda r: os.truncate(r / "d", 0))
    pair.run(lambda r: os.truncate(r / "missing", 0))
    pair.run(lambda r: os.truncate(r / "ro", -1))
    pair.run(lambda r: os.truncate(r / "ro", 3), ["ro"], user=(T1, T1))  # EACCES for others

    pair.run(lambda r: _ftruncate_through(r / "ro", os.O_RDONLY, 1), ["ro"])


# ----- chmod ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o000, 0o777, 0o4755, 0o2755, 0o1777, 0o7777, 0o6711])
@pytest.mark.parametrize("kind", ["file", "dir"])
def test_chmod_as_root(pair, mode, kind):
    pair.setup(lambda r: _write(r / "o") if kind == "file" else (r / "o").mkdir())
    pair.run(lambda r: os.chmod(r / "o", mode), ["o"])


def test_chmod_as_owner_and_others(pair):
    def make(r):
        _write(r / "mine", mode=0o644)
        os.chown(r / "mine", T1, T1)
        _write(r / "gid_not_mine", mode=0o755)
        os.chown(r / "gid_not_mine", T1, 0)
        _write(r / "roots", mode=0o644)
    pair.setup(make)
    pair.run(lambda r: os.chmod(r / "mine", 0o4750), ["mine"], user=(T1, T1))
    # A setgid bit for a group the owner is not in is dropped silently.
    pair.run(lambda r: os.chmod(r / "gid_not_mine", 0o2755), ["gid_not_mine"], user=(T1, T1))
    pair.run(lambda r: os.chmod(r / "roots", 0o666), ["roots"], user=(T1, T1))


def test_chmod_through_a_symlink_changes_the_target(pair):
    pair.setup(lambda r: (_write(r / "f"), os.symlink("f", r / "l")))
    pair.run(lambda r: os.chmod(r / "l", 0o600), ["l", "f"])


@pytest.mark.parametrize("access", [os.O_WRONLY, os.O_RDWR], ids=["write-only", "read-write"])
@pytest.mark.parametrize("mode", [0o6777, 0o6766, 0o4700, 0o2766], ids=oct)
def test_write_by_non_root_clears_setuid(pair, access, mode):
    """The kernel clears only setgid-with-group-execute for FUSE, and nothing for write-only handles.

    Natively setgid also goes when the writer is not in the file's group
    (0o6766 here: group 0); the daemon applies that rule itself.
    """
    def make(r):
        _write(r / "f", mode=0o666)
        if mode == 0o4700:
            os.chown(r / "f", T1, T1)  # before the chmod: chown clears the bits itself
        if mode == 0o2766:
            os.chown(r / "f", 0, T1)  # the writer's group, no group execute: setgid stays
        os.chmod(r / "f", mode)
    pair.setup(make)

    def append(r):
        fd = os.open(r / "f", access | os.O_APPEND)
        try:
            return os.write(fd, b"more")
        finally:
            os.close(fd)
    pair.run(append, ["f"], user=(T1, T1))


def _truncate_path(r):
    os.truncate(r / "f", 10)


def _ftruncate(r):
    _ftruncate_through(r / "f", os.O_WRONLY, 10)


def _open_trunc(r):
    os.close(os.open(r / "f", os.O_WRONLY | os.O_TRUNC))


@pytest.mark.parametrize("how", [_truncate_path, _ftruncate, _open_trunc], ids=lambda f: f.__name__)
@pytest.mark.parametrize("mode", [0o6777, 0o6766], ids=oct)
def test_truncate_by_non_root_clears_setuid(pair, how, mode):
    def make(r):
        _write(r / "f", mode=0o666)
        os.chmod(r / "f", mode)
    pair.setup(make)
    pair.run(how, ["f"], user=(T1, T1))


def test_readers_and_mappings_see_a_write_only_writer_at_once(pair):
    """Write-only handles bypass the kernel's page cache: other handles' cached pages must not go stale."""
    pair.setup(lambda r: _write(r / "f", b"old-content\n"))

    def scenario(r):
        rfd = os.open(r / "f", os.O_RDONLY)
        rw = os.open(r / "f", os.O_RDWR)
        m = mmap.mmap(rw, 12)
        try:
            before = (os.pread(rfd, 12, 0), m[:12])
            w = os.open(r / "f", os.O_WRONLY)
            os.pwrite(w, b"NEW", 0)
            os.close(w)
            w = os.open(r / "f", os.O_WRONLY | os.O_APPEND)
            os.write(w, b"tail\n")
            os.close(w)
            return before, os.pread(rfd, 100, 0), m[:12], os.fstat(rfd).st_size, os.stat(r / "f").st_size
        finally:
            m.close()
            os.close(rw)
            os.close(rfd)
    assert pair.run(scenario, ["f"])[1][1:3] == (b"NEW-content\ntail\n", b"NEW-content\n")


def test_a_reader_racing_appends_never_stays_stale(pair):
    """A reader re-reading the tail while a write-only handle appends ends up with every byte."""
    pair.setup(lambda r: _write(r / "log", b""))

    def scenario(r):
        rfd = os.open(r / "log", os.O_RDONLY)
        stop = threading.Event()

        def tail():
            while not stop.is_set():
                os.pread(rfd, 8192, max(0, os.fstat(rfd).st_size - 100))
        t = threading.Thread(target=tail)
        t.start()
        try:
            w = os.open(r / "log", os.O_WRONLY | os.O_APPEND)
            for i in range(2000):
                os.write(w, b"line %06d\n" % i)
            os.close(w)
        finally:
            stop.set()
            t.join()
        try:
            return os.pread(rfd, 1 << 20, 0) == b"".join(b"line %06d\n" % i for i in range(2000))
        finally:
            os.close(rfd)
    assert pair.run(scenario, times_too=False) == ("ok", True)


def test_chown_by_root_clears_setuid_of_files(pair):
    def make(r):
        _write(r / "f", mode=0o755)
        os.chmod(r / "f", 0o6755)
        (r / "d").mkdir()
        os.chmod(r / "d", 0o2755)
    pair.setup(make)
    pair.run(lambda r: os.chown(r / "f", T1, T2), ["f"])
    pair.run(lambda r: os.chown(r / "d", T1, T2), ["d"])


# ----- chown ----------------------------------------------------------------------


def test_chown(pair):
    def make(r):
        _write(r / "f")
        os.symlink("f", r / "l")
        _write(r / "mine")
        os.chown(r / "mine", T1, T1)
    pair.setup(make)
    pair.run(lambda r: os.chown(r / "f", T1, T2), ["f"])
    pair.run(lambda r: os.chown(r / "f", -1, 0), ["f"])
    pair.run(lambda r: os.lchown(r / "l", T2, T2), ["l", "f"])
    pair.run(lambda r: os.chown(r / "mine", T2, -1), ["mine"], user=(T1, T1))  # EPERM
    pair.run(lambda r: os.chown(r / "mine", -1, T2), ["mine"], user=(T1, T1))  # not a member: EPERM
    pair.run(lambda r: os.chown(r / "mine", T1, T1), ["mine"], user=(T1, T1))  # no-op allowed
    pair.run(lambda r: os.chown(r / "f", T1, T1), ["f"], user=(T1, T1))


# ----- utimens --------------------------------------------------------------------

_NOW = (0, UTIME_NOW)
_OMIT = (0, UTIME_OMIT)


@pytest.mark.parametrize("at,mt", [
    ((1_000_000_000, 123_456_789), (1_100_000_000, 5)),
    (_NOW, _NOW),
    (_OMIT, (1_200_000_000, 0)),
    ((1_300_000_000, 0), _OMIT),
    (_NOW, _OMIT),
    (_OMIT, _NOW),
    (_OMIT, _OMIT),
    ((-1, 0), (4_000_000_000, 999_999_999)),
])
def test_utimensat_explicit_now_and_omit(pair, at, mt):
    pair.setup(lambda r: (_quiet(r / "f"), os.utime(r / "f", ns=(10**18, 10**18))))
    pair.run(lambda r: utimensat(r / "f", at, mt), ["f"], atime=True)

    def explicit(r):
        st = os.lstat(r / "f")
        return tuple(v for v, t in ((st.st_atime_ns, at), (st.st_mtime_ns, mt)) if t[1] not in (UTIME_NOW,))
    pair.run(explicit)


def test_utime_of_symlink_itself(pair):
    pair.setup(lambda r: (_write(r / "f"), os.symlink("f", r / "l")))
    pair.run(lambda r: os.utime(r / "l", ns=(5 * 10**17, 6 * 10**17), follow_symlinks=False), ["l", "f"],
             atime=True)
    pair.run(lambda r: (os.lstat(r / "l").st_atime_ns, os.lstat(r / "l").st_mtime_ns))


def test_utime_as_non_owner(pair):
    def make(r):
        _quiet(r / "shared", mode=0o666)
        _quiet(r / "ro", mode=0o644)
    pair.setup(make)
    pair.run(lambda r: os.utime(r / "shared"), ["shared"], user=(T1, T1))  # write access suffices
    pair.run(lambda r: os.utime(r / "shared", ns=(1, 1)), ["shared"], user=(T1, T1))  # EPERM
    pair.run(lambda r: os.utime(r / "ro"), ["ro"], user=(T1, T1))  # EACCES
    for opt in ("-a", "-m"):  # NOW for one time, OMIT for the other: the owner only (EPERM)
        pair.run(lambda r, o=opt: subprocess.run(["touch", o, str(r / "shared")], capture_output=True).returncode,
                 ["shared"], user=(T1, T1), atime=True)
    pair.setup(lambda r: os.chown(r / "shared", T1, T1))
    for opt in ("-a", "-m"):
        pair.run(lambda r, o=opt: subprocess.run(["touch", o, str(r / "shared")], capture_output=True).returncode,
                 ["shared"], user=(T1, T1), atime=True)


# ----- mknod / mkdir / rmdir / unlink -------------------------------------------------


def test_mknod_fifo_and_devices(pair):
    pair.run(lambda r: os.mkfifo(r / "p", 0o640), ["p", "."])
    pair.run(lambda r: os.mkfifo(r / "p", 0o640), ["p", "."])  # EEXIST
    pair.run(lambda r: os.mknod(r / "c", 0o644 | stat.S_IFCHR, os.makedev(1, 3)), ["c", "."])
    pair.run(lambda r: os.mknod(r / "b", 0o644 | stat.S_IFBLK, os.makedev(7, 0)), ["b"])
    pair.run(lambda r: os.mknod(r / "reg", 0o600 | stat.S_IFREG), ["reg"])
    pair.run(lambda r: os.mknod(r / "s", 0o600 | stat.S_IFSOCK), ["s"])
    pair.run(lambda r: os.mknod(r / "c2", 0o644 | stat.S_IFCHR, os.makedev(1, 3)), ["c2"], user=(T1, T1))


def test_mkdir_rmdir(pair):
    pair.run(lambda r: os.mkdir(r / "d", 0o751), ["d", "."])
    pair.run(lambda r: os.mkdir(r / "d"), ["d", "."])  # EEXIST
    pair.run(lambda r: os.mkdir(r / "d" / "sub"), ["d", "d/sub"])
    pair.run(lambda r: os.mkdir(r / "nope" / "sub"))  # ENOENT
    pair.setup(lambda r: _write(r / "f"))
    pair.run(lambda r: os.mkdir(r / "f" / "sub"))  # ENOTDIR
    pair.run(lambda r: os.mkdir(r / "f"))  # EEXIST
    pair.run(lambda r: os.rmdir(r / "d"), ["d"])  # ENOTEMPTY
    pair.run(lambda r: os.rmdir(r / "f"), ["f"])  # ENOTDIR
    pair.run(lambda r: os.rmdir(r / "missing"))
    pair.run(lambda r: os.rmdir(r / "d" / "sub" / "."))  # EINVAL
    pair.run(lambda r: os.rmdir(r / "d" / "sub"), ["d", "d/sub"])
    pair.run(lambda r: os.rmdir(r / "d"), [".", "d"])


def test_unlink(pair):
    pair.setup(lambda r: ((r / "d").mkdir(), _write(r / "f"), os.symlink("f", r / "l")))
    pair.run(lambda r: os.unlink(r / "d"), ["d", "."])  # EISDIR on Linux
    pair.run(lambda r: os.unlink(r / "missing"))
    pair.run(lambda r: os.unlink(r / "l"), ["l", "f", "."])
    pair.run(lambda r: os.unlink(r / "f"), ["f", "."])
    pair.run(lambda r: os.unlink(r / "f"))


def test_sticky_directory_protects_other_users_files(pair):
    def make(r):
        (r / "tmp").mkdir()
        os.chmod(r / "tmp", 0o1777)
        _write(r / "tmp" / "roots", mode=0o666)
        _write(r / "tmp" / "t2s", mode=0o666)
        os.chown(r / "tmp" / "t2s", T2, T2)
    pair.setup(make)
    pair.run(lambda r: os.unlink(r / "tmp" / "roots"), ["tmp/roots"], user=(T1, T1))  # EPERM
    pair.run(lambda r: os.rename(r / "tmp" / "t2s", r / "tmp" / "x"), ["tmp/t2s"], user=(T1, T1))
    pair.run(lambda r: os.unlink(r / "tmp" / "t2s"), ["tmp/t2s"], user=(T2, T2))


# ----- rename ------------------------------------------------------------------------


def _rename_fixture(r: Path) -> None:
    _write(r / "a", b"aaa")
    _write(r / "b", b"bb")
    (r / "empty").mkdir()
    (r / "full").mkdir()
    _write(r / "full" / "x")
    (r / "d").mkdir()
    (r / "d" / "sub").mkdir()
    os.symlink("a", r / "la")


RENAMES = [
    ("a", "b", 0), ("a", "new", 0), ("a", "a", 0), ("a", "empty", 0), ("empty", "a", 0),
    ("empty", "full", 0), ("full", "empty", 0), ("d", "d/sub/inner", 0), ("d", "d/sub", 0),
    ("a", "b", RENAME_NOREPLACE), ("a", "new", RENAME_NOREPLACE), ("a", "b", RENAME_EXCHANGE),
    ("a", "full", RENAME_EXCHANGE), ("a", "missing", RENAME_EXCHANGE), ("missing", "a", 0),
    ("a", "b", RENAME_EXCHANGE | RENAME_NOREPLACE), ("la", "new", 0), ("a", "la", 0),
    ("full/x", "x", 0), ("a", "full/x", 0), ("a", "nope/x", 0), ("a/", "b", 0), ("d", "d", 0),
    ("d", "d/sub", RENAME_EXCHANGE), ("full", "d/sub", RENAME_EXCHANGE), ("d/sub", "d/..", 0),
]


@pytest.mark.parametrize("old,new,flags", RENAMES)
def test_rename(pair, old, new, flags):
    pair.setup(_rename_fixture)
    pair.run(lambda r: renameat2(r / old, r / new, flags), [old.rstrip("/"), new, "."])
    pair.same_tree()


def test_rename_updates_ctime_and_keeps_inode(pair):
    pair.setup(_rename_fixture)
    ino = os.lstat(pair.mounted / "a").st_ino
    pair.run(lambda r: os.rename(r / "a", r / "full" / "moved"), ["full/moved", "full", "."])
    assert os.lstat(pair.mounted / "full" / "moved").st_ino == ino
    assert _read(pair.mounted / "full" / "moved") == b"aaa"


def test_renamed_directory_keeps_serving_its_children(pair):
    pair.setup(lambda r: ((r / "d1").mkdir(), (r / "d1" / "deep").mkdir(), _write(r / "d1" / "deep" / "f")))
    assert _read(pair.mounted / "d1" / "deep" / "f") == b"x" * 100
    pair.run(lambda r: os.rename(r / "d1", r / "d2"))
    pair.run(lambda r: _read(r / "d2" / "deep" / "f"))
    pair.run(lambda r: _write(r / "d2" / "deep" / "g", b"after"))
    pair.run(lambda r: _read(r / "d1" / "deep" / "f"))
    pair.same_tree()


# ----- link ----------------------------------------------------------------------------


def test_hard_links(pair):
    pair.setup(lambda r: (_write(r / "f"), (r / "d").mkdir(), os.symlink("f", r / "l")))
    pair.run(lambda r: os.link(r / "f", r / "g"), ["f", "g", "."])
    pair.run(lambda r: os.link(r / "f", r / "d" / "h"), ["f", "g", "d/h"])
    pair.run(lambda r: os.lstat(r / "f").st_ino == os.lstat(r / "g").st_ino == os.lstat(r / "d" / "h").st_ino)
    pair.run(lambda r: os.link(r / "d", r / "d2"))  # EPERM
    pair.run(lambda r: os.link(r / "f", r / "g"))  # EEXIST
    pair.run(lambda r: os.link(r / "missing", r / "m2"))
    pair.run(lambda r: os.link(r / "l", r / "l2", follow_symlinks=False), ["l", "l2", "f"])
    pair.run(lambda r: os.link(r / "l", r / "l3", follow_symlinks=True), ["l", "l3", "f"])
    pair.run(lambda r: os.unlink(r / "g"), ["f", "d/h"])
    pair.run(lambda r: _write(r / "d" / "h", b"via h"))
    pair.run(lambda r: _read(r / "f"), ["f"])
    pair.same_tree()


def test_link_needs_ownership_or_protected_hardlinks_allow(pair):
    pair.setup(lambda r: _write(r / "roots", mode=0o600))
    pair.run(lambda r: os.link(r / "roots", r / "mine"), ["roots"], user=(T1, T1))


# ----- symlink / readlink --------------------------------------------------------------


@pytest.mark.parametrize("target", ["f", "../f", "/etc/hostname", "dangling", "d/", "a" * 4000, "x\ny", ""])
def test_symlink_and_readlink(pair, target):
    pair.setup(lambda r: (_write(r / "f"), (r / "d").mkdir()))
    pair.run(lambda r: os.symlink(target, r / "l"), ["l", "."])
    pair.run(lambda r: os.readlink(r / "l"))
    pair.run(lambda r: sig(os.path.realpath(r / "l")) and None)


def test_readlink_errors_and_following(pair):
    pair.setup(lambda r: (_write(r / "f", b"target"), os.symlink("f", r / "l"), os.symlink("l", r / "ll"),
                          os.symlink("loop", r / "loop")))
    pair.run(lambda r: os.readlink(r / "f"))  # EINVAL
    pair.run(lambda r: os.readlink(r / "missing"))
    pair.run(lambda r: _read(r / "ll"))
    pair.run(lambda r: _read(r / "loop"))  # ELOOP
    pair.run(lambda r: os.symlink("x", r / "f"))  # EEXIST
    pair.run(lambda r: os.symlink("f", r / "ul"), ["ul"], user=(T1, T1))


# ----- open / create / read / write / release / fsync ------------------------------------


def _fdo(path: Path, flags: int, mode: int = 0o666):
    def go(r):
        fd = os.open(r / path, flags, mode)
        os.close(fd)
    return go


@pytest.mark.parametrize("flags", [
    os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC, os.O_CREAT | os.O_EXCL | os.O_WRONLY,
    os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_DIRECTORY, os.O_RDONLY | os.O_NOFOLLOW,
    os.O_CREAT | os.O_WRONLY, os.O_RDWR | os.O_APPEND, os.O_WRONLY | os.O_SYNC, os.O_RDONLY | os.O_NOATIME,
])
@pytest.mark.parametrize("name", ["f", "d", "l", "missing", "ro"])
def test_open_flags(pair, flags, name):
    def make(r):
        _write(r / "f", b"0123456789")
        (r / "d").mkdir()
        os.symlink("f", r / "l")
        _write(r / "ro", b"ro", mode=0o444)
    pair.setup(make)
    pair.run(_fdo(Path(name), flags), [name, "f"])
    if name != "d":
        pair.run(_fdo(Path(name), flags), [name, "f"], user=(T1, T1))
    pair.run(lambda r: _read(r / "f") if (r / "f").exists() else None)


def test_read_write_append_trunc(pair):
    def seq(r):
        fd = os.open(r / "f", os.O_RDWR | os.O_CREAT, 0o600)
        out = [os.write(fd, b"hello world"), os.pread(fd, 5, 6), os.lseek(fd, 0, os.SEEK_CUR)]
        os.close(fd)
        fd = os.open(r / "f", os.O_WRONLY | os.O_APPEND)
        os.lseek(fd, 0, os.SEEK_SET)
        out += [os.write(fd, b"!"), os.lseek(fd, 0, os.SEEK_CUR)]
        os.fsync(fd)
        os.fdatasync(fd)
        os.close(fd)
        out.append(_read(r / "f"))
        fd = os.open(r / "f", os.O_RDWR | os.O_TRUNC)
        out += [os.fstat(fd).st_size, os.write(fd, b"new"), os.pread(fd, 100, 0)]
        os.close(fd)
        return out
    pair.run(seq, ["f", "."])


def test_wrong_direction_on_a_descriptor_is_ebadf(pair):
    pair.setup(lambda r: _write(r / "f"))

    def write_rdonly(r):
        fd = os.open(r / "f", os.O_RDONLY)
        try:
            return os.write(fd, b"no")
        finally:
            os.close(fd)

    def read_wronly(r):
        fd = os.open(r / "f", os.O_WRONLY)
        try:
            return os.read(fd, 10)
        finally:
            os.close(fd)
    pair.run(write_rdonly, ["f"])
    pair.run(read_wronly, ["f"])


def test_o_excl_and_create_modes(pair):
    pair.run(_fdo(Path("f"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640), ["f", "."])
    pair.run(_fdo(Path("f"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640), ["f", "."])
    pair.setup(lambda r: os.symlink("dangling-target", r / "dl"))
    pair.run(_fdo(Path("dl"), os.O_CREAT | os.O_EXCL | os.O_WRONLY), ["dl"])  # EEXIST, not followed
    pair.run(_fdo(Path("dl"), os.O_CREAT | os.O_WRONLY), ["dl", "dangling-target"])  # creates the target
    pair.run(_fdo(Path("."), os.O_CREAT | os.O_WRONLY))  # EISDIR


def test_o_direct_aligned_io(pair):
    def direct(r):
        buf = mmap.mmap(-1, 8192)
        buf[:] = bytes(range(256)) * 32
        fd = os.open(r / "f", os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
        try:
            out = [os.pwritev(fd, [buf], 4096)]
            rb = mmap.mmap(-1, 8192)
            out.append(os.preadv(fd, [rb], 4096))
            out.append(rb[:] == buf[:])
            out.append(os.preadv(fd, [rb], 0))
            out.append(rb[:4096] == bytes(4096))
            out.append(os.preadv(fd, [rb], 1 << 20))  # past the end
        finally:
            os.close(fd)
        return out + [os.stat(r / "f").st_size, _read(r / "f")[4096:4100]]
    pair.run(direct, ["f"])


# ----- directories -------------------------------------------------------------------


def test_ls_a_lists_the_same_names(pair):
    pair.setup(lambda r: [(_write(r / f"f{i}"), (r / f"d{i}").mkdir()) for i in range(30)])
    for sub in ("", "d3"):
        out = pair.run(lambda r: sorted(subprocess.run(["ls", "-a", "-1", "-f", str(r / sub)], capture_output=True,
                                                       check=True).stdout.split(b"\n")))
        assert b"." in out[1] and b".." in out[1]
    pair.run(lambda r: sorted(os.listdir(r)))
    pair.run(lambda r: os.listdir(r / "f1"))  # ENOTDIR


def test_readdir_is_stable_while_entries_come_and_go(pair):
    stable = {f"stable-{i:04d}" for i in range(1000)}
    for root in pair.roots:
        for n in stable:
            (root / n).write_bytes(b"")
    stop = threading.Event()

    def churn(root: Path) -> None:
        i = 0
        while not stop.is_set():
            p = root / f"churn-{i % 300:04d}"
            try:
                if i // 300 % 2 == 0:
                    p.write_bytes(b"")
                else:
                    p.unlink()
            except OSError:
                pass
            i += 1
    for root in pair.roots:
        t = threading.Thread(target=churn, args=(root,))
        t.start()
        try:
            for _ in range(10):
                names = os.listdir(root)
                assert len(names) == len(set(names)), f"duplicates in a listing of {root}"
                missing = stable - set(names)
                assert not missing, f"{len(missing)} stable names missing from a listing of {root}"
        finally:
            stop.set()
            t.join()
        stop.clear()


def test_rewinddir_sees_new_entries(pair):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.opendir.restype = ctypes.c_void_p
    libc.opendir.argtypes = [ctypes.c_char_p]
    libc.readdir.restype = ctypes.c_void_p
    libc.readdir.argtypes = [ctypes.c_void_p]
    libc.rewinddir.argtypes = [ctypes.c_void_p]
    libc.closedir.argtypes = [ctypes.c_void_p]

    def count(dirp):
        n = 0
        while libc.readdir(dirp):
            n += 1
        return n

    def go(r):
        dirp = libc.opendir(os.fsencode(r))
        try:
            first = count(dirp)
            _write(r / "later")
            libc.rewinddir(dirp)
            return first, count(dirp)
        finally:
            libc.closedir(dirp)
    pair.run(go)


def test_statfs(pair):
    n, m = os.statvfs(pair.native), os.statvfs(pair.mounted)
    assert (m.f_bsize, m.f_frsize, m.f_blocks, m.f_files, m.f_namemax) == \
        (n.f_bsize, n.f_frsize, n.f_blocks, n.f_files, n.f_namemax)
    assert abs(m.f_bfree - n.f_bfree) < n.f_blocks // 100


# ----- xattrs ------------------------------------------------------------------------


def test_user_xattrs(pair):
    pair.setup(lambda r: (_write(r / "f"), (r / "d").mkdir(), os.symlink("f", r / "l")))
    for name in ("f", "d"):
        pair.run(lambda r, n=name: os.setxattr(r / n, "user.k", b"v1"), [name])
        pair.run(lambda r, n=name: os.getxattr(r / n, "user.k"))
        pair.run(lambda r, n=name: os.setxattr(r / n, "user.k", b"v2", os.XATTR_CREATE))  # EEXIST
        pair.run(lambda r, n=name: os.setxattr(r / n, "user.new", b"", os.XATTR_REPLACE))  # ENODATA
        pair.run(lambda r, n=name: os.setxattr(r / n, "user.k", b"v3", os.XATTR_REPLACE))
        pair.run(lambda r, n=name: os.setxattr(r / n, "user.empty", b""))
        pair.run(lambda r, n=name: sorted(os.listxattr(r / n)))
        pair.run(lambda r, n=name: os.getxattr(r / n, "user.missing"))  # ENODATA
        pair.run(lambda r, n=name: os.removexattr(r / n, "user.k"))
        pair.run(lambda r, n=name: os.removexattr(r / n, "user.k"))  # ENODATA
        pair.run(lambda r, n=name: os.getxattr(r / n, "user.empty"))
    pair.run(lambda r: os.setxattr(r / "l", "user.k", b"v", follow_symlinks=False))  # EPERM
    pair.run(lambda r: os.listxattr(r / "l", follow_symlinks=False))
    pair.run(lambda r: os.getxattr(r / "l", "user.empty"))  # followed: the target's
    pair.run(lambda r: os.setxattr(r / "f", "user." + "k" * 250, b"v"))  # name too long: ERANGE
    pair.run(lambda r: os.setxattr(r / "f", "user.big", b"v" * 5000))
    pair.run(lambda r: os.getxattr(r / "f", "user.big"))
    pair.same_tree()


def test_user_xattrs_as_non_root(pair):
    pair.setup(lambda r: (_write(r / "shared", mode=0o666), _write(r / "ro", mode=0o644),
                          os.setxattr(r / "ro", "user.k", b"v")))
    pair.run(lambda r: os.setxattr(r / "shared", "user.k", b"v"), user=(T1, T1))
    pair.run(lambda r: os.setxattr(r / "ro", "user.k", b"w"), user=(T1, T1))  # EACCES
    pair.run(lambda r: os.getxattr(r / "ro", "user.k"), user=(T1, T1))


# ----- access and permissions for non-root users -------------------------------------


@pytest.mark.parametrize("mode", [0o000, 0o400, 0o200, 0o100, 0o644, 0o755, 0o604, 0o060])
def test_access_as_non_root(pair, mode):
    pair.setup(lambda r: _write(r / "f", mode=mode))
    for bits in (os.F_OK, os.R_OK, os.W_OK, os.X_OK, os.R_OK | os.W_OK):
        pair.run(lambda r, b=bits: os.access(r / "f", b), user=(T1, T1))
    pair.run(lambda r: os.access(r / "f", os.R_OK | os.W_OK | os.X_OK))  # root


def test_private_directory_is_closed_to_others(pair):
    def make(r):
        (r / "priv").mkdir(mode=0o700)
        os.chmod(r / "priv", 0o700)
        _write(r / "priv" / "f")
        _write(r / "secret", mode=0o600)
    pair.setup(make)
    for op in (lambda r: os.stat(r / "priv" / "f"), lambda r: os.listdir(r / "priv"),
               lambda r: _write(r / "priv" / "new"), lambda r: _read(r / "secret"),
               lambda r: _write(r / "secret"), lambda r: os.unlink(r / "priv" / "f"),
               lambda r: os.rename(r / "secret", r / "mine"), lambda r: os.chmod(r / "secret", 0o777),
               lambda r: os.mkdir(r / "priv" / "x")):
        pair.run(op, ["priv", "secret"], user=(T1, T1))
    pair.run(lambda r: os.rename(r / "secret", r / "mine"), ["secret"], user=(T1, T1))  # dir is 0777


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000, 0o027])
def test_created_objects_get_the_callers_mode_umask_and_owner(pair, umask):
    def make(r):
        fd = os.open(r / "f", os.O_CREAT | os.O_WRONLY, 0o666)
        os.close(fd)
        os.mkdir(r / "d", 0o777)
        os.mkfifo(r / "p", 0o666)
        os.symlink("f", r / "l")
        fd = os.open(r / "x", os.O_CREAT | os.O_WRONLY, 0o4777)
        os.close(fd)
    pair.run(make, ["f", "d", "p", "l", "x", "."], user=(T1, T1), umask=umask)


def test_setgid_directory_gives_its_group(pair):
    def make(r):
        (r / "g").mkdir()
        os.chown(r / "g", 0, T2)
        os.chmod(r / "g", 0o2777)
    pair.setup(make)

    def create(r):
        _write(r / "g" / "f", mode=0o644)
        os.mkdir(r / "g" / "d")
        fd = os.open(r / "g" / "sg", os.O_CREAT | os.O_WRONLY, 0o2755)
        os.close(fd)
    pair.run(create, ["g", "g/f", "g/d", "g/sg"], user=(T1, T1))
    pair.run(lambda r: os.mkdir(r / "g" / "byroot"), ["g/byroot"])


# ----- names and paths ----------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 254, 255, 256, 300, 4096])
def test_name_max(pair, length):
    name = "n" * length
    pair.run(lambda r: _write(r / name), [name] if length <= 255 else [])
    pair.run(lambda r: os.mkdir(r / (name[:-1] + "d")))
    pair.run(lambda r: os.stat(r / name).st_size)
    pair.run(lambda r: os.symlink("x", r / (name[:-1] + "s")))
    pair.run(lambda r: os.rename(r / (name[:-1] + "d"), r / (name[:-1] + "e")))
    pair.run(lambda r: sorted(os.listdir(r)))


def test_name_max_for_rename_and_link_targets(pair):
    pair.setup(lambda r: _write(r / "f"))
    pair.run(lambda r: os.rename(r / "f", r / ("n" * 256)))
    pair.run(lambda r: os.link(r / "f", r / ("n" * 256)))
    pair.run(lambda r: os.rename(r / "f", r / ("n" * 255)))
    pair.run(lambda r: os.link(r / ("n" * 255), r / ("m" * 255)))


def test_a_4000_byte_path_works(pair):
    comps = ["p" * 199 + str(i % 10) for i in range(19)]

    def deep(r):
        d = r
        for c in comps:
            d = d / c
            os.mkdir(d)
        f = d / ("f" * 150)
        _write(f, b"deep")
        return len(os.fsencode(os.path.relpath(f, r))), _read(f), os.listdir(d)
    res = pair.run(deep)
    assert res[0] == "ok" and res[1][0] > 3900 and res[1][1] == b"deep", res


def test_binary_names_round_trip(pair):
    names = [b"\xff\xfe", b"caf\xe9", b"a\nb", b"\x01\x02", b"tab\tname", b" lead", b"trail ",
             "日本語".encode(), b"\xed\xa0\x80surrogate", b"-rf", b"*?[]"]

    def make(r):
        br = os.fsencode(r)
        for n in names:
            fd = os.open(os.path.join(br, n), os.O_CREAT | os.O_WRONLY, 0o644)
            os.write(fd, n)
            os.close(fd)
        return sorted(os.listdir(br))
    pair.run(make)
    for n in names:
        pair.run(lambda r, n=n: open(os.path.join(os.fsencode(r), n), "rb").read())
        pair.run(lambda r, n=n: os.rename(os.path.join(os.fsencode(r), n), os.path.join(os.fsencode(r), n + b"2")))
    pair.same_tree()


# ----- sparse and large files ----------------------------------------------------------


def test_sparse_file(pair):
    def sparse(r):
        fd = os.open(r / "s", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.lseek(fd, 1 << 20, os.SEEK_SET)
            os.write(fd, b"end")
            st = os.fstat(fd)
            return st.st_size, st.st_blocks <= 16, os.pread(fd, 10, 4096) == bytes(10)
        finally:
            os.close(fd)
    res = pair.run(sparse, ["s"])
    assert res == ("ok", ((1 << 20) + 3, True, True))


def test_file_larger_than_4_gib(pair):
    big = (5 << 30) + 7

    def large(r):
        fd = os.open(r / "big", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, b"tail", big - 4)
            os.pwrite(fd, b"mid", 1 << 32)
            st = os.fstat(fd)
            return (st.st_size, st.st_blocks <= 64, os.pread(fd, 4, big - 4), os.pread(fd, 3, 1 << 32),
                    os.pread(fd, 8, big), os.lseek(fd, 0, os.SEEK_END))
        finally:
            os.close(fd)
    res = pair.run(large, ["big"])
    assert res == ("ok", (big, True, b"tail", b"mid", b"", big))
    pair.run(lambda r: os.truncate(r / "big", 6 << 30), ["big"])
    pair.run(lambda r: os.truncate(r / "big", 3), ["big"])


def test_outcome_helper_sees_errors():
    assert outcome(lambda: os.stat("/nonexistent/x")) == ("err", "ENOENT")
    assert as_user(T1, T1, lambda: os.getuid()) == ("ok", T1)
    assert outcome(lambda: os.open("/", os.O_WRONLY)) == ("err", errno.errorcode[errno.EISDIR])


# ----- open-unlinked files, special files, creation edge cases ----------------------------


def test_open_unlinked_file_keeps_working_through_its_descriptor(pair):
    def go(r):
        fd = os.open(r / "u", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"hello")
            os.unlink(r / "u")
            out = [os.fstat(fd).st_nlink, os.pread(fd, 10, 0)]
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, 2)
            os.utime(fd, ns=(10**18, 10**18))
            os.setxattr(fd, "user.k", b"v")
            os.fchown(fd, T1, T2)
            st = os.fstat(fd)
            out += [stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid,
                    os.listxattr(fd), os.pread(fd, 10, 0), os.write(fd, b"more")]
            os.fsync(fd)
            return out
        finally:
            os.close(fd)
    pair.run(go, ["u", "."])


def test_created_with_mode_000_still_opens_for_its_creator(pair):
    pair.run(lambda r: os.close(os.open(r / "z", os.O_CREAT | os.O_RDWR, 0)), ["z"], user=(T1, T1))
    pair.run(lambda r: os.close(os.open(r / "z", os.O_RDWR)), ["z"], user=(T1, T1))  # EACCES now
    pair.run(lambda r: os.mkdir(r / "d", 0o7777), ["d"], umask=0)
    pair.run(lambda r: os.mkdir(r / "e", 0o7777), ["e"], user=(T1, T1), umask=0)


def test_fifo_and_unix_socket_in_the_mount_work_locally(pair):
    import socket

    def fifo(r):
        os.mkfifo(r / "p")
        fd_r = os.open(r / "p", os.O_RDONLY | os.O_NONBLOCK)
        fd_w = os.open(r / "p", os.O_WRONLY)
        os.write(fd_w, b"through the fifo")
        data = os.read(fd_r, 100)
        os.close(fd_w)
        os.close(fd_r)
        return data

    def sock(r):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s, \
                socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as c:
            s.bind(str(r / "s"))
            c.sendto(b"dgram", str(r / "s"))
            return s.recv(100), stat.S_ISSOCK(os.lstat(r / "s").st_mode)
    pair.run(fifo, ["p"])
    pair.run(sock, ["s"])


# ----- what pjdfstest checks beyond the above ------------------------------------------------


def test_chown_to_minus_one_and_to_a_supplementary_group(pair):
    pair.setup(lambda r: (_quiet(r / "f", 0o4755), os.chown(r / "f", T1, T1), _quiet(r / "g")))
    pair.run(lambda r: os.chown(r / "g", -1, -1), ["g"])
    pair.run(lambda r: os.chown(r / "g", 0, 0), ["g"])
    pair.run(lambda r: os.chown(r / "f", -1, -1), ["f"], user=(T1, T1))

    def chgrp_supplementary(r):
        return as_user(T1, T1, lambda: os.chown(r / "f", -1, T2), groups=[T2])
    pair.run(chgrp_supplementary, ["f"])
    pair.run(lambda r: os.chmod(r / "f", 0o1755), ["f"], user=(T1, T1))


def test_posix_fallocate(pair):
    def falloc(r):
        fd = os.open(r / "f", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.posix_fallocate(fd, 0, 100000)
            return os.fstat(fd).st_size, os.pread(fd, 10, 50000)
        finally:
            os.close(fd)
    pair.run(falloc, ["f"])


def test_running_executable_is_text_busy(pair):
    pair.setup(lambda r: (shutil.copy("/bin/sleep", r / "sleep"), os.chmod(r / "sleep", 0o755)))

    def busy(r):
        proc = subprocess.Popen([str(r / "sleep"), "30"])
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # until the exec has replaced the forked child
                try:
                    if os.readlink(f"/proc/{proc.pid}/exe").endswith("/sleep"):
                        break
                except OSError:
                    pass
            return [outcome(lambda: os.close(os.open(r / "sleep", os.O_WRONLY))),
                    outcome(lambda: os.truncate(r / "sleep", 0))]
        finally:
            proc.kill()
            proc.wait()
    pair.run(busy, ["sleep"])


def test_only_user_xattrs_pass_through(live):
    """A deliberate difference: trusted.* and security.* stay out of the mount (root could set them natively)."""
    m, _ = live
    p = m.path / "xattr-namespaces"
    p.write_bytes(b"")
    for name in ("trusted.k", "security.k"):
        assert outcome(lambda n=name: os.setxattr(p, n, b"v")) == ("err", "ENOTSUP"), name
        assert outcome(lambda n=name: os.removexattr(p, n)) == ("err", "ENOTSUP"), name
    assert outcome(lambda: os.getxattr(p, "trusted.k")) == ("err", "ENOTSUP")
    assert outcome(lambda: os.getxattr(p, "security.k")) == ("err", "ENODATA")
    assert outcome(lambda: os.getxattr(p, "security.capability")) == ("err", "ENODATA")
    assert outcome(lambda: os.setxattr(p, "system.k", b"v")) == ("err", "ENOTSUP")


def test_o_direct_file_can_be_mapped(pair):
    def mapped(r):
        _write(r / "f", b"m" * 8192)
        fd = os.open(r / "f", os.O_RDWR | os.O_DIRECT)
        try:
            with mmap.mmap(fd, 8192) as mm:
                mm[:4] = b"MMAP"
                mm.flush()
                first = mm[:8]
            buf = mmap.mmap(-1, 4096)
            n = os.preadv(fd, [buf], 0)
            return first, n, buf[:8], outcome(lambda: os.pread(fd, 10, 1))
        finally:
            os.close(fd)
    pair.run(mapped, ["f"])


def test_removed_directory_still_held_open(pair):
    def go(r):
        os.mkdir(r / "d")
        fd = os.open(r / "d", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.rmdir(r / "d")
            return [outcome(lambda: os.fstat(fd).st_nlink), outcome(lambda: os.listdir(fd)),
                    outcome(lambda: os.fchmod(fd, 0o700))]
        finally:
            os.close(fd)
    pair.run(go)


def test_concurrent_appends_from_two_processes_interleave_whole_records(pair):
    def appends(r):
        pids = []
        for who in (b"A", b"B"):
            pid = os.fork()
            if pid == 0:
                try:
                    fd = os.open(r / "log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                    for i in range(500):
                        os.write(fd, who * 99 + b"\n")
                    os.close(fd)
                finally:
                    os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        lines = _read(r / "log").split(b"\n")
        return len(lines), sorted(set(lines)), sum(1 for x in lines if x == b"A" * 99)
    pair.run(appends, ["log"])


def test_shared_mmap_writes_reach_the_file(pair, live):
    def mapped(r):
        _write(r / "m", bytes(16384))
        fd = os.open(r / "m", os.O_RDWR)
        try:
            with mmap.mmap(fd, 16384) as mm:
                mm[4096:4100] = b"MMAP"
                mm.flush()
            return os.pread(fd, 4, 4096), os.fstat(fd).st_size
        finally:
            os.close(fd)
    pair.run(mapped, ["m"])
    m, _ = live
    backing = m.ws.data_path / pair.mounted.name / "m"
    assert backing.read_bytes()[4096:4100] == b"MMAP"
