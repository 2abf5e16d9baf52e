"""Nothing done through the mount reads, writes or stats anything outside the data tree.

The daemon runs as root, so the danger is the daemon following something in
the backing tree on a caller's behalf. Symlinks are resolved by the *client's*
kernel, as the caller, relative to the mount: they may land in the real
filesystem, but only with the caller's own rights. The tests use a secret that
only root can reach (a 0644 file inside a 0700 directory): a non-root client
that ever reads it has been served by the daemon following a link.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from conftest import OPEN_POLICY, make_workspace, mounted
from posix_pair import RENAME_EXCHANGE, as_user, outcome, renameat2

T1 = 2901
SECRET = b"SECRET: only root may read this\n"


@pytest.fixture
def secret(workdir: Path) -> Path:
    """A file root can read and nobody else can reach (its directory is 0700)."""
    d = workdir / "vault"
    d.mkdir()
    os.chmod(d, 0o700)
    f = d / "secret.txt"
    f.write_bytes(SECRET)
    os.chmod(f, 0o644)
    return f


def t1(fn) -> tuple[str, object]:
    return as_user(T1, T1, fn)


def _read(p: Path | str) -> bytes:
    with open(p, "rb") as f:
        return f.read()


def test_secret_is_unreachable_natively(users, secret):
    assert t1(lambda: _read(secret)) == ("err", "EACCES")


def test_symlinks_made_through_the_mount_resolve_as_the_caller(users, mount, secret):
    mnt = mount.path
    sub = mnt / "sub"
    sub.mkdir()
    os.chmod(sub, 0o777)
    links = {
        "abs": str(secret),
        "shadow": "/etc/shadow",
        "state": "../../ws/state/state.db",            # from MNT/sub: WORKDIR/ws/state/state.db
        "rel-vault": "../../vault/secret.txt",
        "data-relative": "../state/state.db",          # would hit WS/state if resolved in the backing tree
    }
    for name, target in links.items():
        os.symlink(target, sub / name)
        assert os.readlink(sub / name) == target
        assert os.lstat(sub / name).st_mode & 0o170000 == 0o120000
    for name in ("abs", "shadow", "state", "rel-vault"):
        assert t1(lambda n=name: _read(sub / n)) == ("err", "EACCES"), name
    for name in ("abs", "state", "rel-vault"):
        assert t1(lambda n=name: os.stat(sub / n)) == ("err", "EACCES"), name
    # Resolved by the client relative to the mount, this lands at MNT/state/state.db: nothing there.
    assert outcome(lambda: _read(sub / "data-relative")) == ("err", "ENOENT")
    assert (mount.ws.state_db).exists()


def test_parent_of_the_mount_root_is_the_real_parent(users, mount, workdir):
    up = mount.path / ".."
    assert os.stat(up).st_ino == os.stat(workdir).st_ino
    assert sorted(os.listdir(up)) == sorted(os.listdir(workdir))
    assert t1(lambda: os.listdir(mount.path / ".." / "ws" / "state")) == ("err", "EACCES")
    assert t1(lambda: _read(mount.path / ".." / "ws" / "state" / "state.db")) == ("err", "EACCES")


def test_hard_links_across_the_mount_boundary_are_exdev(users, mount, workdir, secret):
    (mount.path / "f").write_bytes(b"inside")
    assert outcome(lambda: os.link(mount.path / "f", workdir / "outside")) == ("err", "EXDEV")
    assert outcome(lambda: os.link(secret, mount.path / "stolen")) == ("err", "EXDEV")
    assert outcome(lambda: os.link("/etc/passwd", mount.path / "pw")) == ("err", "EXDEV")
    assert outcome(lambda: os.rename(secret, mount.path / "moved")) == ("err", "EXDEV")
    assert not (mount.path / "stolen").exists() and secret.exists()


def test_planted_backing_symlink_is_shown_as_a_link_and_never_followed_by_the_daemon(users, mount, secret):
    data = mount.ws.data_path
    os.symlink(str(secret), data / "planted")
    os.symlink("/etc/shadow", data / "shadow")
    os.symlink("../state", data / "up")                       # WS/data/up -> WS/state in the backing tree
    os.symlink(str(secret.parent), data / "vaultdir")
    mnt = mount.path
    assert os.readlink(mnt / "planted") == str(secret)
    assert os.lstat(mnt / "planted").st_mode & 0o170000 == 0o120000
    for name in ("planted", "shadow", "vaultdir/secret.txt"):
        assert t1(lambda n=name: _read(mnt / n)) == ("err", "EACCES"), name
    # A directory link as a path component is followed by the client, relative to the mount:
    # MNT/up/state.db is MNT/../state/state.db, which does not exist. The backing WS/state is never reached.
    assert (data / "up" / "state.db").exists()
    assert outcome(lambda: os.stat(mnt / "up" / "state.db")) == ("err", "ENOENT")
    assert outcome(lambda: os.listdir(mnt / "up")) == ("err", "ENOENT")
    # Operations that must act on the link itself, never on what it names.
    before = os.stat(secret)
    os.lchown(mnt / "planted", T1, T1)
    os.utime(mnt / "planted", ns=(1, 1), follow_symlinks=False)
    assert t1(lambda: os.chmod(mnt / "planted", 0o666)) == ("err", "EACCES")
    assert outcome(lambda: os.setxattr(mnt / "planted", "user.x", b"v", follow_symlinks=False))[0] == "err"
    assert outcome(lambda: os.getxattr(mnt / "planted", "user.x", follow_symlinks=False)) == ("err", "ENODATA")
    after = os.stat(secret)
    assert (after.st_uid, after.st_mode, after.st_mtime_ns) == (before.st_uid, before.st_mode, before.st_mtime_ns)
    assert os.lstat(data / "planted").st_uid == T1
    assert _read(secret) == SECRET


def test_links_and_renames_of_a_planted_link_move_the_link(users, mount, secret):
    data = mount.ws.data_path
    os.symlink(str(secret), data / "planted")
    os.link(mount.path / "planted", mount.path / "hard", follow_symlinks=False)
    assert os.readlink(data / "hard") == str(secret)
    os.rename(mount.path / "hard", mount.path / "moved")
    assert os.path.islink(data / "moved")
    os.unlink(mount.path / "moved")
    assert secret.exists()


@pytest.fixture
def uncached_mount(workdir: Path):
    """A mount whose kernel caches expire at once, so every open asks the daemon.

    With the default 60 s entry cache, the first lookup of `race` could catch
    either state of the swap and pin it for the whole test, and the daemon
    would never see the race at all.
    """
    ws = make_workspace(workdir, OPEN_POLICY + "\n[mount]\ncache_seconds = 0\n", name="ws-uncached")
    with mounted(ws, workdir / "mnt-uncached") as m:
        yield m


def test_directory_swapped_for_a_symlink_while_a_user_opens_in_a_loop(users, uncached_mount, secret):
    """A backing-tree attacker swaps a directory and a symlink to the vault; the daemon never follows it.

    The vault holds files of the same names as the directory, so a daemon that
    resolved a name through the swapped-in link would serve the secret. Every
    name is fresh, so each open makes the daemon look the name up during the race.
    """
    mount = uncached_mount
    data = mount.ws.data_path
    n = 3000
    (data / "race").mkdir()
    os.chmod(data / "race", 0o755)
    for i in range(n):
        (data / "race" / f"f{i}").write_bytes(b"harmless\n")
        (secret.parent / f"f{i}").write_bytes(SECRET)
    os.symlink(str(secret.parent), data / "race.link")
    stop = threading.Event()
    swaps = [0]

    def swapper() -> None:
        while not stop.is_set():
            renameat2(data / "race", data / "race.link", RENAME_EXCHANGE)
            swaps[0] += 1

    def reader() -> dict[str, int]:
        seen: dict[str, int] = {}
        for i in range(n):
            for p in (mount.path / "race" / f"f{i}", mount.path / "race.link" / f"f{i}"):
                try:
                    fd = os.open(p, os.O_RDONLY)
                    try:
                        k = os.read(fd, 100).decode(errors="replace")
                    finally:
                        os.close(fd)
                except OSError as e:
                    k = errno.errorcode.get(e.errno, str(e.errno))
                seen[k] = seen.get(k, 0) + 1
        return seen

    th = threading.Thread(target=swapper)
    th.start()
    try:
        res = t1(reader)
    finally:
        stop.set()
        th.join()
    assert res[0] == "ok"
    seen = res[1]
    assert swaps[0] > 100, swaps
    assert not any("SECRET" in k for k in seen), seen
    assert seen.get("harmless\n", 0) > 0, seen
    assert mount.answers()


def test_names_with_dot_dot_and_slashes_never_leave_the_tree(users, mount, workdir):
    (workdir / "outside.txt").write_bytes(b"outside")
    mnt = mount.path
    assert outcome(lambda: os.stat(os.path.join(mnt, "..", "outside.txt")))[0] == "ok"  # the client's own path
    assert outcome(lambda: os.mkdir(mnt / ".."))[1] in ("EEXIST",)
    for bad in (b"a/b", b"..", b"."):
        r = outcome(lambda b=bad: os.open(os.path.join(os.fsencode(mnt), b"nonexistent", b), os.O_CREAT | os.O_WRONLY))
        assert r == ("err", "ENOENT"), (bad, r)
    assert not (mount.ws.data_path / ".." / "outside.txt").exists()
    assert not (workdir / "ws" / "outside.txt").exists()
