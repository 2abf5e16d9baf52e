"""Mandatory locks through real mounts, with agents that are real Unix users and `agentfs run` sessions.

Every conflicting operation is tried by one agent while another holds a lock,
and tried again once the lock is gone, so that each refusal is shown to come
from the lock and not from something else. Most tests share one workspace
whose `[locks].wait_seconds` is short (a refusal costs that long); the tests
of waiting use a second workspace with a long wait, so that a blocked
request is surely still waiting when the holder lets go.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_worker import Worker
from conftest import AGENTFS, make_workspace, mounted, run, wait_for

WAIT = 0.5        # [locks].wait_seconds of the fast workspace
SLOW_WAIT = 15.0  # ... of the slow one, where requests must still be waiting when a lock goes
XATTR = "user.agentfs.lock"

POLICY = """\
[workspace]
default_agent = "nobody"

[agents.nobody]
rules = []

[agents.supervisor]
uids = [0]
rules = [{{ path = "/**", allow = "rwcdl" }}]

[agents.alice]
uids = [2901]
rules = [{{ path = "/**", allow = "rwcdl" }}]

[agents.bob]
uids = [2902]
rules = [{{ path = "/**", allow = "rwcdl" }}]

[agents.carol]
uids = [2903]
rules = [{{ path = "/**", allow = "rwcd" }}]

[agents.writer]
rules = [{{ path = "/**", allow = "rwcdl" }}]

[locks]
wait_seconds = {wait}
"""

UIDS = {"alice": 2901, "bob": 2902, "carol": 2903, "writer": 2903}
_seq = itertools.count()


class Env:
    """A workspace, its mount(s) and one long-lived client process per agent."""

    def __init__(self, ws, mnt: Path, mnt2: Path | None, workers: dict[str, Worker]) -> None:
        self.ws, self.mnt, self.mnt2, self.w = ws, mnt, mnt2, workers

    def case(self, owner: str) -> tuple[str, Path]:
        """A fresh tree for one test, files owned by `owner`'s uid; returns (policy path, mount path).

        base/d/f, base/d/g, base/d/sub/inner, base/d/empty/, base/out/, base/other
        """
        name = f"case{next(_seq)}"
        root = self.ws.data_path / name
        uid = UIDS.get(owner, 0)
        for sub in ("d", "d/sub", "d/empty", "out"):
            (root / sub).mkdir(parents=True)
        for f, text in (("d/f", "hello\n"), ("d/g", "g\n"), ("d/sub/inner", "inner\n"), ("other", "other\n")):
            (root / f).write_text(text)
        os.setxattr(root / "d/f", "user.k", b"v")
        for p in [root, *root.rglob("*")]:
            os.chown(p, uid, uid)
            os.chmod(p, 0o777 if p.is_dir() else 0o666)
        return f"/{name}", self.mnt / name


def _start_workers(ws, agents: tuple[str, ...]) -> dict[str, Worker]:
    users = {"alice": "agentfs-t1", "bob": "agentfs-t2", "carol": "agentfs-t3"}
    out: dict[str, Worker] = {}
    for agent in agents:
        if agent in users:
            out[agent] = Worker(user=users[agent])
        else:  # an `agentfs run` session of a real user
            out[agent] = Worker(prefix=[AGENTFS, "run", "--agent", agent, "-w", str(ws.root),
                                        "--user", "agentfs-t3", "--"])
    return out



@pytest.fixture(scope="module")
def fast(users) -> Iterator[Env]:
    """Short waits; a shared mount and a second daemon serving a mount dedicated to bob."""
    base = Path(tempfile.mkdtemp(prefix="agentfs-lk-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        ws = make_workspace(base, POLICY.format(wait=WAIT))
        with mounted(ws, base / "mnt"), mounted(ws, base / "mnt-bob", "--agent", "bob"):
            workers = _start_workers(ws, ("alice", "bob", "carol", "writer"))
            try:
                yield Env(ws, base / "mnt", base / "mnt-bob", workers)
            finally:
                for w in workers.values():
                    w.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def slow(users) -> Iterator[Env]:
    """Long waits: a blocked request is still waiting when the test releases the lock."""
    base = Path(tempfile.mkdtemp(prefix="agentfs-lks-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        ws = make_workspace(base, POLICY.format(wait=SLOW_WAIT))
        with mounted(ws, base / "mnt"):
            workers = _start_workers(ws, ("alice", "bob"))
            try:
                yield Env(ws, base / "mnt", None, workers)
            finally:
                for w in workers.values():
                    w.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def lock(w: Worker, p: Path, value: str = "exclusive") -> None:
    w.ok("os.setxattr(p, x, v.encode())", p=str(p), x=XATTR, v=value)


def unlock(w: Worker, p: Path) -> None:
    w.ok("os.removexattr(p, x)", p=str(p), x=XATTR)


def lock_info(p: Path) -> str:
    """getfattr's view of the lock (as root, the supervisor), '' when nobody holds it."""
    try:
        return os.getxattr(p, XATTR).decode()
    except OSError as e:
        assert e.errno == errno.ENODATA, e
        return ""


def refused(w: Worker, code: str, **vars: str) -> tuple[str, float]:
    """The errno name of a refused request and how long the daemon made it wait."""
    t0 = time.monotonic()
    name = w.err(code, block=True, **vars)
    return name, time.monotonic() - t0


def blocked_in_fuse(pid: int) -> bool:
    """The process sleeps waiting for an answer from a FUSE daemon."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text() == "request_wait_answer"
    except OSError:
        return False


# Each conflicting operation: what is locked, the request (a Python block run by the other
# agent; names below are relative to the case's base), the errno it gets while the lock is
# held, and the errno it gets after the lock is gone (None: it succeeds).
OPS = {
    "open-read": ("d/f", "open(P('d/f')).read()", "EAGAIN", None),
    "open-write": ("d/f", "os.close(os.open(P('d/f'), os.O_WRONLY))", "EAGAIN", None),
    "open-trunc": ("d/f", "os.close(os.open(P('d/f'), os.O_WRONLY | os.O_TRUNC))", "EAGAIN", None),
    "create-in-locked-dir": ("d", "os.close(os.open(P('d/new'), os.O_CREAT | os.O_WRONLY, 0o644))",
                             "EAGAIN", None),
    "mkdir-in-locked-dir": ("d", "os.mkdir(P('d/newdir'))", "EAGAIN", None),
    "symlink-in-locked-dir": ("d", "os.symlink('f', P('d/sym'))", "EAGAIN", None),
    "mknod-in-locked-dir": ("d", "os.mkfifo(P('d/fifo'))", "EAGAIN", None),
    "truncate": ("d/f", "os.truncate(P('d/f'), 1)", "EAGAIN", None),
    "chmod": ("d/f", "os.chmod(P('d/f'), 0o640)", "EAGAIN", None),
    "utimes": ("d/f", "os.utime(P('d/f'), (1, 1))", "EAGAIN", None),
    # EBUSY: Linux would show a setxattr EAGAIN as EOPNOTSUPP ("not supported")
    "setxattr": ("d/f", "os.setxattr(P('d/f'), 'user.k', b'w')", "EBUSY", None),
    "removexattr": ("d/f", "os.removexattr(P('d/f'), 'user.k')", "EAGAIN", None),
    "unlink": ("d/f", "os.unlink(P('d/f'))", "EAGAIN", None),
    "rename-away": ("d/f", "os.rename(P('d/f'), P('out/f'))", "EAGAIN", None),
    "rename-over": ("d/f", "os.rename(P('other'), P('d/f'))", "EAGAIN", None),
    "link-of-locked-file": ("d/f", "os.link(P('d/f'), P('out/h'))", "EAGAIN", None),
    "link-into-locked-dir": ("d", "os.link(P('other'), P('d/h'))", "EAGAIN", None),
    "rmdir-of-locked-dir": ("d/empty", "os.rmdir(P('d/empty'))", "EAGAIN", None),
    "rmdir-holding-locked-path": ("d/sub/inner", "os.rmdir(P('d/sub'))", "EAGAIN", "ENOTEMPTY"),
    "rename-dir-holding-locked-path": ("d/sub/inner", "os.rename(P('d/sub'), P('out/sub'))", "EAGAIN", None),
    "rename-over-dir-holding-locked-path": ("d/empty", "os.rename(P('out'), P('d/empty'))", "EAGAIN", None),
    "subtree-open-below-locked-dir": ("d", "open(P('d/sub/inner')).read()", "EAGAIN", None),
    "subtree-unlink-below-locked-dir": ("d", "os.unlink(P('d/sub/inner'))", "EAGAIN", None),
    "list-locked-dir": ("d", "os.listdir(P('d'))", "EAGAIN", None),
}
# Only these wait [locks].wait_seconds before failing: during every other request the kernel
# holds an inode lock (the file's, its directory's), and waiting would stall the lock's holder.
WAITING = {"open-read", "open-write", "open-trunc", "subtree-open-below-locked-dir", "list-locked-dir"}
PRELUDE = "P = lambda rel: base + '/' + rel\n"

# Everything above, in an order that works, by the holder of locks on d and d/sub/inner.
HOLDER_DOES = """
open(P('d/f')).read()
os.close(os.open(P('d/f'), os.O_WRONLY | os.O_TRUNC))
os.close(os.open(P('d/new'), os.O_CREAT | os.O_WRONLY, 0o644))
os.mkdir(P('d/newdir'))
os.symlink('f', P('d/sym'))
os.mkfifo(P('d/fifo'))
os.truncate(P('d/g'), 1)
os.chmod(P('d/g'), 0o640)
os.utime(P('d/g'), (1, 1))
os.setxattr(P('d/f'), 'user.k', b'w')
os.removexattr(P('d/f'), 'user.k')
os.listdir(P('d'))
open(P('d/sub/inner')).read()
os.link(P('other'), P('d/h'))
os.rename(P('other'), P('d/f'))
os.link(P('d/f'), P('out/h'))
os.rename(P('d/f'), P('out/f'))
os.rmdir(P('d/empty'))
os.rename(P('d/sub'), P('d/sub2'))
"""


@pytest.mark.parametrize("holder,other", [("alice", "writer"), ("writer", "bob")],
                         ids=["user-holds-session-waits", "session-holds-user-waits"])
@pytest.mark.parametrize("op", list(OPS))
def test_exclusive_lock_refuses_each_conflicting_operation(fast, holder, other, op):
    target, code, held_errno, after_errno = OPS[op]
    _, base = fast.case(owner=other)
    lock(fast.w[holder], base / target)
    assert f"holder={holder}" in lock_info(base / target)
    name, waited = refused(fast.w[other], PRELUDE + code, base=str(base))
    assert name == held_errno
    if op in WAITING:
        assert waited >= WAIT * 0.9, f"refused after {waited:.2f}s, before [locks].wait_seconds"
    unlock(fast.w[holder], base / target)
    r = fast.w[other].call(PRELUDE + code, block=True, base=str(base))
    assert (r["errno"] if not r["ok"] else None) == after_errno, r


@pytest.mark.parametrize("holder", ["alice", "writer"])
def test_the_holder_is_never_blocked(fast, holder):
    _, base = fast.case(owner=holder)
    w = fast.w[holder]
    lock(w, base / "d")
    lock(w, base / "d/sub/inner")  # also below its own directory lock
    t0 = time.monotonic()
    w.ok(PRELUDE + HOLDER_DOES, block=True, base=str(base))
    assert time.monotonic() - t0 < WAIT, "the holder waited on its own lock"
    assert w.ok("sorted(os.listdir(p))", p=str(base / "d")) == ["fifo", "g", "h", "new", "newdir", "sub2", "sym"]
    with pytest.raises(BlockingIOError):  # while anyone else (root here) may not even list it
        os.listdir(base / "d")
    # its lock on the file it renamed went along with it
    assert f"holder={holder}" in lock_info(base / "d/sub2/inner")


def test_a_lock_covers_a_hard_linked_file_under_each_of_its_names(fast):
    """The kernel names no path in open or setattr: every name of the file the daemon knows is checked.

    (Known names: those the kernel looked up since it last forgot the inode, which
    always include the one the caller goes through. The lock here is on the folder:
    another name outside it, never looked up, or forgotten after a drop_caches, is
    not covered, hence no claim about out/h. A lock on the file itself is: see the
    next test.)
    """
    rel, base = fast.case(owner="bob")
    os.link(fast.ws.data_path / rel.lstrip("/") / "d/f", fast.ws.data_path / rel.lstrip("/") / "out/h")
    bob = fast.w["bob"]
    # bob meets the file under its name outside d first: that is the name the daemon learns first
    assert bob.ok("open(p).read()", p=str(base / "out/h")) == "hello\n"
    assert bob.ok("open(p).read()", p=str(base / "d/f")) == "hello\n"
    lock(fast.w["alice"], base / "d")
    for code in ("open(p).read()", "os.truncate(p, 0)", "os.chmod(p, 0o600)", "os.setxattr(p, 'user.k', b'x')"):
        assert bob.err(code, p=str(base / "d/f")) in ("EAGAIN", "EBUSY"), code
    unlock(fast.w["alice"], base / "d")
    assert bob.ok("open(p).read()", p=str(base / "out/h")) == "hello\n"


def test_a_lock_covers_a_hard_linked_name_its_daemon_never_looked_up(fast):
    """bob's mount is another daemon: it learns only out/h, yet alice's lock on d/f (the same file) holds."""
    rel, base = fast.case(owner="bob")
    data = fast.ws.data_path / rel.lstrip("/")
    os.link(data / "d/f", data / "out/h")
    via_bob = fast.mnt2 / rel.lstrip("/") / "out/h"  # root on bob's dedicated mount is bob
    lock(fast.w["alice"], base / "d/f")
    with pytest.raises(BlockingIOError):
        via_bob.read_text()
    for change, code in ((lambda: os.truncate(via_bob, 0), errno.EAGAIN),
                         (lambda: os.chmod(via_bob, 0o600), errno.EAGAIN),
                         (lambda: os.setxattr(via_bob, "user.k", b"x"), errno.EBUSY)):  # setxattr says busy
        with pytest.raises(OSError) as e:
            change()
        assert e.value.errno == code
    # a name nobody locked, of a file with one link, is not held up by the mapping
    assert (fast.mnt2 / rel.lstrip("/") / "other").read_text() == "other\n"
    unlock(fast.w["alice"], base / "d/f")
    assert via_bob.read_text() == "hello\n"
    os.chmod(via_bob, 0o640)
    assert stat.S_IMODE((data / "d/f").stat().st_mode) == 0o640


def test_shared_lock_lets_others_read_but_not_change(fast):
    _, base = fast.case(owner="bob")
    alice, bob = fast.w["alice"], fast.w["bob"]
    lock(alice, base / "d", "shared")
    assert bob.ok("open(p).read()", p=str(base / "d/f")) == "hello\n"
    assert bob.ok("sorted(os.listdir(p))", p=str(base / "d")) == ["empty", "f", "g", "sub"]
    for code in ("os.close(os.open(P('d/f'), os.O_WRONLY))", "os.truncate(P('d/f'), 0)",
                 "os.unlink(P('d/g'))", "os.rename(P('d/g'), P('out/g'))",
                 "os.close(os.open(P('d/new'), os.O_CREAT | os.O_WRONLY, 0o644))"):
        assert refused(bob, PRELUDE + code, base=str(base))[0] == "EAGAIN", code
    # a sole shared holder may still change what it locked...
    alice.ok("open(p, 'a').write('by alice\\n')", p=str(base / "d/f"))
    # ...until a second agent shares the lock: then nobody may
    lock(bob, base / "d", "shared")
    info = lock_info(base / "d")
    assert "shared holder=alice" in info and "shared holder=bob" in info
    assert refused(alice, "open(p, 'a').write('again')", p=str(base / "d/f"))[0] == "EAGAIN"
    # an exclusive lock cannot be taken over a shared one of someone else
    assert refused(alice, "os.setxattr(p, x, b'exclusive')", p=str(base / "d"), x=XATTR)[0] == "EBUSY"
    unlock(bob, base / "d")
    alice.ok("os.setxattr(p, x, b'exclusive')", p=str(base / "d"), x=XATTR)  # upgrade as sole holder
    assert lock_info(base / "d").startswith("exclusive holder=alice")
    assert refused(bob, "open(p).read()", p=str(base / "d/f"))[0] == "EAGAIN"
    unlock(alice, base / "d")
    assert bob.ok("open(p).read()", p=str(base / "d/f")) == "hello\nby alice\n"


def test_getfattr_shows_mode_holder_expiry_token_and_renewal_keeps_the_token(fast):
    _, base = fast.case(owner="alice")
    f = base / "d/f"
    assert run(["getfattr", "-n", XATTR, str(f)], check=False).returncode != 0  # nobody holds it
    lock(fast.w["alice"], f, "exclusive;ttl=60")
    out = run(["getfattr", "--only-values", "-n", XATTR, str(f)], user="agentfs-t2").stdout
    m = re.fullmatch(r"exclusive holder=alice expires=(\S+Z) ttl=(\d+) token=(\d+)", out.strip())
    assert m, out
    assert 55 <= int(m[2]) <= 60
    expires = time.mktime(time.strptime(m[1], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert abs(expires - (time.time() + int(m[2]))) < 3
    token = int(m[3])
    # the file below a locked directory names the directory the lock is on
    lock(fast.w["writer"], base / "out", "shared")
    below = run(["getfattr", "--only-values", "-n", XATTR, str(base / "out")], user="agentfs-t1").stdout
    assert re.fullmatch(r"shared holder=writer expires=\S+ ttl=\d+ token=\d+ session=\d+", below.strip()), below
    (fast.ws.data_path / base.name / "out/x").write_text("x")
    assert lock_info(base / "out/x").endswith(f"on=/{base.name}/out")
    # renewal: the same agent locks again: a new lease, the same token
    lock(fast.w["alice"], f, "exclusive;ttl=600")
    again = lock_info(f)
    assert f"token={token}" in again and int(re.search(r"ttl=(\d+)", again)[1]) > 590
    unlock(fast.w["alice"], f)
    lock(fast.w["alice"], f)
    assert int(re.search(r"token=(\d+)", lock_info(f))[1]) > token  # a new grant, a higher token
    unlock(fast.w["alice"], f)


def test_lease_expiry_frees_the_path_by_itself(fast):
    _, base = fast.case(owner="bob")
    lock(fast.w["alice"], base / "d/f", "exclusive;ttl=1")
    t0 = time.monotonic()
    assert fast.w["bob"].err("open(p).read()", p=str(base / "d/f")) == "EAGAIN"
    wait_for(lambda: fast.w["bob"].call("open(p).read()", p=str(base / "d/f"))["ok"], timeout=10,
             what="the lease to run out")
    assert time.monotonic() - t0 < 5
    assert lock_info(base / "d/f") == ""
    wait_for(lambda: f"/{base.name}/d/f" not in (fast.mnt / ".agentfs/locks").read_text(), timeout=5,
             what="the expired lock to leave the listing")


def test_only_the_holder_unlocks_force_breaks_and_locking_needs_l(fast):
    _, base = fast.case(owner="alice")
    f = base / "d/f"
    lock(fast.w["alice"], f)
    # another agent cannot remove it: a clean EPERM, and the lock stays
    assert fast.w["bob"].err("os.removexattr(p, x)", p=str(f), x=XATTR) == "EPERM"
    r = run(["setfattr", "-x", XATTR, str(f)], user="agentfs-t2", check=False)
    assert r.returncode != 0 and os.strerror(errno.EPERM) in r.stderr, r.stderr
    assert "holder=alice" in lock_info(f)
    # carol has rwcd but not l: she may neither lock nor force
    for value in ("exclusive", "shared", "exclusive;force"):
        assert fast.w["carol"].err("os.setxattr(p, x, v.encode())", p=str(base / "d/g" if value == "shared" else f),
                                   x=XATTR, v=value) == "EACCES"
    assert "holder=alice" in lock_info(f)
    # a value that is not a lock request
    assert fast.w["bob"].err("os.setxattr(p, x, b'forever')", p=str(base / "d/g"), x=XATTR) == "EINVAL"
    # bob has l: he breaks alice's lock with ;force, then removes his own
    lock(fast.w["bob"], f, "exclusive;force")
    assert lock_info(f).startswith("exclusive holder=bob")
    unlock(fast.w["bob"], f)
    assert lock_info(f) == ""
    # alice's lock is gone, so her unlock finds nothing
    assert fast.w["alice"].err("os.removexattr(p, x)", p=str(f), x=XATTR) == "ENODATA"


def test_a_run_sessions_lock_dies_with_its_process(fast):
    rel, base = fast.case(owner="bob")
    f = base / "d/f"
    on_bobs_mount = fast.mnt2 / rel.lstrip("/") / "d/f"  # served by the other daemon
    with Worker(prefix=[AGENTFS, "run", "--agent", "writer", "-w", str(fast.ws.root), "--"]) as w:
        lock(w, f)
        info = lock_info(f)
        assert re.search(r"holder=writer .* session=\d+", info), info
        assert fast.w["bob"].err("open(p).read()", p=str(f)) == "EAGAIN"
        with pytest.raises(BlockingIOError):
            on_bobs_mount.read_text()
        # another session of the same agent is the same agent: not blocked
        assert fast.w["writer"].ok("open(p).read()", p=str(f)) == "hello\n"
    # the session's process has exited: the lock is gone at once for everyone, on both daemons
    assert fast.w["bob"].ok("open(p).read()", p=str(f)) == "hello\n"
    assert on_bobs_mount.read_text() == "hello\n"
    assert lock_info(f) == ""
    wait_for(lambda: f"/{base.name}/d/f" not in run([AGENTFS, "locks", "-w", str(fast.ws.root)]).stdout,
             timeout=10, what="the dead session's lock to be purged")


def test_two_daemons_see_each_others_locks(fast):
    rel, base = fast.case(owner="alice")
    other = fast.mnt2 / rel.lstrip("/")  # the same tree through bob's dedicated mount (another daemon)
    # alice locks through the shared mount: bob's daemon refuses bob
    lock(fast.w["alice"], base / "d/f")
    t0 = time.monotonic()
    with pytest.raises(BlockingIOError):
        (other / "d/f").read_text()
    assert time.monotonic() - t0 >= WAIT * 0.9
    assert os.getxattr(other / "d/f", XATTR).decode().startswith("exclusive holder=alice")
    # bob locks through his mount: the shared daemon shows it and refuses alice
    os.setxattr(other / "d/g", XATTR, b"shared")
    assert lock_info(base / "d/g").startswith("shared holder=bob")
    assert "holder=bob" not in lock_info(base / "d/f")
    assert fast.w["alice"].ok("open(p).read()", p=str(base / "d/g")) == "g\n"
    assert fast.w["alice"].err("os.unlink(p)", p=str(base / "d/g")) == "EAGAIN"
    listing = (fast.mnt / ".agentfs/locks").read_text()
    assert re.search(rf"shared\s+bob\s.*{rel}/d/g", listing), listing
    assert re.search(rf"exclusive\s+alice\s.*{rel}/d/f", (fast.mnt2 / ".agentfs/locks").read_text())
    # a release on one daemon frees the path on the other
    unlock(fast.w["alice"], base / "d/f")
    assert (other / "d/f").read_text() == "hello\n"
    os.removexattr(other / "d/g", XATTR)
    fast.w["alice"].ok("os.unlink(p)", p=str(base / "d/g"))


def test_two_shared_daemons_on_two_mountpoints(fast, workdir):
    rel, base = fast.case(owner="bob")
    with mounted(fast.ws, workdir / "mnt3") as m3:
        third = m3.path / rel.lstrip("/")
        lock(fast.w["alice"], base / "d")
        with Worker(user="agentfs-t2") as bob3:
            assert bob3.err("open(p).read()", p=str(third / "d/f")) == "EAGAIN"
            unlock(fast.w["alice"], base / "d")
            assert bob3.ok("open(p).read()", p=str(third / "d/f")) == "hello\n"


# ----- waiting ---------------------------------------------------------------

def test_a_blocked_cat_returns_the_content_once_the_holder_unlocks(slow):
    _, base = slow.case(owner="bob")
    f = base / "d/sub/inner"
    lock(slow.w["alice"], base / "d")  # a subtree lock
    t0 = time.monotonic()
    cat = subprocess.Popen(["cat", str(f)], user=2902, group=2902, extra_groups=[],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: blocked_in_fuse(cat.pid), timeout=5, what="cat to wait in the daemon")
        assert cat.poll() is None
        unlock(slow.w["alice"], base / "d")
        out, err = cat.communicate(timeout=10)
    finally:
        if cat.poll() is None:
            cat.kill()
            cat.wait()
    assert (cat.returncode, out, err) == (0, "inner\n", "")
    assert time.monotonic() - t0 < SLOW_WAIT


def test_a_blocked_write_goes_through_when_the_run_session_holding_the_lock_exits(slow):
    _, base = slow.case(owner="bob")
    f = base / "d/f"
    session = Worker(prefix=[AGENTFS, "run", "--agent", "writer", "-w", str(slow.ws.root), "--"])
    try:
        lock(session, f)
        writer = subprocess.Popen(["sh", "-c", f"echo changed > '{f}'"], user=2902, group=2902,
                                  extra_groups=[], stderr=subprocess.PIPE, text=True)
        wait_for(lambda: blocked_in_fuse(writer.pid), timeout=5, what="the write to wait in the daemon")
        session.close()  # the session's process exits; its lock dies with it
        assert writer.wait(timeout=10) == 0, writer.stderr.read()
    finally:
        session.close()
    assert (slow.ws.data_path / base.name / "d/f").read_text() == "changed\n"


def test_a_blocked_open_gets_eagain_after_wait_seconds(fast):
    """In C terms: open(2) fails with errno EAGAIN; cat says so."""
    _, base = fast.case(owner="bob")
    lock(fast.w["alice"], base / "d/f")
    t0 = time.monotonic()
    r = run(["cat", str(base / "d/f")], user="agentfs-t2", check=False)
    waited = time.monotonic() - t0
    assert r.returncode == 1 and os.strerror(errno.EAGAIN) in r.stderr, r.stderr
    assert waited >= WAIT * 0.9
    unlock(fast.w["alice"], base / "d/f")


# ----- the CLI through the mount ----------------------------------------------

def test_cli_lock_unlock_locks_as_real_users(fast):
    rel, base = fast.case(owner="alice")
    f = str(base / "d/f")
    r = run([AGENTFS, "lock", f, "--ttl", "120"], user="agentfs-t1")
    assert "holder=alice" in r.stdout and "token=" in r.stdout
    # busy: exit status 75 (EX_TEMPFAIL), naming the holder
    r = run([AGENTFS, "lock", "--shared", f], user="agentfs-t2", check=False)
    assert r.returncode == 75 and "holder=alice" in r.stderr + r.stdout, r
    # a non-root user lists the locks from the mount's .agentfs/locks
    r = run([AGENTFS, "locks", "--json"], user="agentfs-t2", cwd=str(fast.mnt))
    mine = [x for x in json.loads(r.stdout) if x["path"] == f"{rel}/d/f"]
    assert len(mine) == 1 and (mine[0]["agent"], mine[0]["mode"]) == ("alice", "exclusive"), r.stdout
    assert 100 < int(mine[0]["ttl"]) <= 120
    # root reads the state database directly and sees the same lock
    rows = json.loads(run([AGENTFS, "locks", "--json", "-w", str(fast.ws.root)]).stdout)
    assert [(x["agent"], x["token"]) for x in rows if x["path"] == f"{rel}/d/f"] == \
        [("alice", mine[0]["token"])]
    # bob may not unlock alice's lock...
    r = run([AGENTFS, "unlock", f], user="agentfs-t2", check=False)
    assert r.returncode == 1 and "may not unlock" in r.stderr + r.stdout, r
    # ...carol (no l) may not lock at all
    r = run([AGENTFS, "lock", str(base / "d/g")], user="agentfs-t3", check=False)
    assert r.returncode == 1 and "l right" in r.stderr + r.stdout, r
    run([AGENTFS, "unlock", f], user="agentfs-t1")
    assert lock_info(base / "d/f") == ""
    # --force breaks another agent's lock (--wait: bob's refused request above may
    # still hold its place in the queue for a second, and is served first)
    run([AGENTFS, "lock", f, "--wait", "10"], user="agentfs-t1")
    run([AGENTFS, "unlock", "--force", f], user="agentfs-t2")
    assert lock_info(base / "d/f") == ""
    r = run([AGENTFS, "unlock", f], user="agentfs-t1", check=False)
    assert r.returncode == 1 and "not locked by you" in r.stderr + r.stdout


def test_cli_takes_workspace_paths_with_w_through_the_mount_it_runs_in(fast):
    """-w WS after the command (or before it): PATH may be a workspace path; the mount is never guessed."""
    rel, base = fast.case(owner="alice")
    ws = str(fast.ws.root)
    # Two mounts of WS (shared, and bob's): from outside both, the CLI will not pick one.
    r = run([AGENTFS, "lock", "-w", ws, f"{rel}/d/f"], user="agentfs-t1", cwd="/", check=False)
    assert r.returncode == 1 and "2 mounts" in r.stderr and "Traceback" not in r.stderr, r
    assert lock_info(base / "d/f") == ""
    r = run([AGENTFS, "-w", ws, "whoami"], user="agentfs-t1", cwd="/", check=False)
    assert r.returncode == 1 and "2 mounts" in r.stderr, r
    # From inside a mount, its daemon speaks: the shared mount knows alice by her uid...
    r = run([AGENTFS, "lock", f"{rel}/d/f", "-w", ws, "--ttl", "60"], user="agentfs-t1", cwd=str(fast.mnt))
    assert "holder=alice" in r.stdout, r
    assert lock_info(base / "d/f").startswith("exclusive holder=alice")
    assert json.loads(run([AGENTFS, "whoami", "--json", "-w", ws], user="agentfs-t1",
                          cwd=str(fast.mnt)).stdout)["agent"] == "alice"
    run([AGENTFS, "-w", ws, "unlock", f"{rel}/d/f"], user="agentfs-t1", cwd=str(fast.mnt))
    assert lock_info(base / "d/f") == ""
    # ...and bob's mount makes the same user bob.
    r = run([AGENTFS, "-w", ws, "lock", "--shared", f"{rel}/d/g"], user="agentfs-t1", cwd=str(fast.mnt2))
    assert "shared holder=bob" in r.stdout, r
    me = json.loads(run([AGENTFS, "-w", ws, "whoami", "--json"], user="agentfs-t1", cwd=str(fast.mnt2)).stdout)
    assert (me["agent"], me["mountpoint"]) == ("bob", str(fast.mnt2))
    run([AGENTFS, "unlock", "-w", ws, f"{rel}/d/g"], user="agentfs-t1", cwd=str(fast.mnt2))
    assert lock_info(base / "d/g") == ""
    # -w naming another workspace than the mount PATH lies on is an error, not a choice.
    r = run([AGENTFS, "lock", "-w", "/tmp", str(base / "d/f")], user="agentfs-t1", check=False)
    assert r.returncode == 1 and "not of /tmp" in r.stderr, r
    # A relative path with -w outside any mount says what to give instead.
    r = run([AGENTFS, "lock", "-w", ws, "d/f"], user="agentfs-t1", cwd="/", check=False)
    assert r.returncode == 1 and "workspace path from its root" in r.stderr, r
    # policy explain takes a relative path on the mount, as a shell user types it.
    r = run([AGENTFS, "policy", "explain", "--agent", "carol", "--json", "d/f", "-w", ws], cwd=str(base))
    assert json.loads(r.stdout)["path"] == f"{rel}/d/f"


def test_cli_with_w_uses_the_only_mount_from_anywhere(slow):
    rel, base = slow.case(owner="alice")
    ws = str(slow.ws.root)
    r = run([AGENTFS, "lock", "-w", ws, f"{rel}/d/f"], user="agentfs-t1", cwd="/")
    assert f"locked {slow.mnt}{rel}/d/f" in r.stdout and "holder=alice" in r.stdout, r
    assert lock_info(base / "d/f").startswith("exclusive holder=alice")
    assert json.loads(run([AGENTFS, "whoami", "-w", ws, "--json"], user="agentfs-t1",
                          cwd="/").stdout)["agent"] == "alice"
    assert json.loads(run([AGENTFS, "whoami", "--json"], user="agentfs-t1", cwd="/",
                          env={**os.environ, "AGENTFS_WORKSPACE": ws}).stdout)["agent"] == "alice"
    run([AGENTFS, "unlock", "-w", ws, f"{rel}/d/f"], user="agentfs-t1", cwd="/")
    assert lock_info(base / "d/f") == ""
    # --json: where the path is, on the mount and in the workspace, and who holds it
    got = json.loads(run([AGENTFS, "lock", "--json", "--shared", "--ttl", "60", "-w", ws, f"{rel}/d/g"],
                         user="agentfs-t1", cwd="/").stdout)
    assert (got["path"], got["workspace_path"], got["locked"]) == (f"{slow.mnt}{rel}/d/g", f"{rel}/d/g", True)
    [held] = got["holders"]
    assert (held["mode"], held["agent"], held["ttl"] <= 60, isinstance(held["token"], int)) == \
        ("shared", "alice", True, True)
    got = json.loads(run([AGENTFS, "unlock", "--json", str(base / "d/g")], user="agentfs-t1").stdout)
    assert (got["unlocked"], got["holders"]) == (True, [])
    assert lock_info(base / "d/g") == ""


def audit(ws, *args: str) -> list[dict]:
    out = run([AGENTFS, "audit", "-w", str(ws.root), "--json", *args]).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_a_lock_refusal_is_recorded_as_the_operation_attempted(fast):
    rel, base = fast.case(owner="bob")
    lock(fast.w["alice"], base / "d")
    assert fast.w["bob"].err("open(p).read()", p=str(base / "d/f")) == "EAGAIN"
    assert fast.w["bob"].err("os.unlink(p)", p=str(base / "d/g")) == "EAGAIN"
    assert fast.w["bob"].err("os.mkdir(p)", p=str(base / "d/new")) == "EAGAIN"
    unlock(fast.w["alice"], base / "d")
    want = {("open", f"{rel}/d/f"), ("unlink", f"{rel}/d/g"), ("mkdir", f"{rel}/d/new")}

    def refusals() -> dict:
        return {(r["op"], r["path"]): r for r in audit(fast.ws, "--agent", "bob", "--path", f"{rel}/d")
                if r["result"] == "EAGAIN"}

    # Denials are committed with the next group (up to COMMIT_EVERY_S later), not before the reply.
    wait_for(lambda: len(refusals()) >= len(want), timeout=10, interval=0.05, what="the refusals' records")
    got = refusals()
    assert set(got) == want, got
    assert got[("open", f"{rel}/d/f")]["details"] == {"lock": "alice", "mode": "exclusive", "on": f"{rel}/d",
                                                      "access": "read"}
    assert got[("unlink", f"{rel}/d/g")]["details"]["access"] == "delete"


def test_cli_lock_wait_succeeds_after_release_and_never_stalls_the_holder(slow):
    """While `agentfs lock --wait` retries, the holder keeps writing and unlocks without delay."""
    rel, base = slow.case(owner="alice")
    f = str(base / "d/f")
    lock(slow.w["alice"], base / "d/f")
    waiter = subprocess.Popen([AGENTFS, "lock", "--shared", "--wait", "30", f], user=2902, group=2902,
                              extra_groups=[], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(r["result"] == "EBUSY" for r in audit(slow.ws, "--agent", "bob", "--op", "lock",
                                                                  "--path", f"{rel}/d/f")),
                 timeout=15, interval=0.1, what="agentfs lock to be refused at least once")
        t0 = time.monotonic()
        slow.w["alice"].ok("for i in range(20):\n    with open(p, 'a') as fh: fh.write('more\\n')",
                           block=True, p=f)
        unlock(slow.w["alice"], base / "d/f")
        assert time.monotonic() - t0 < SLOW_WAIT / 3, "the holder was stalled by the waiting request"
        out, err = waiter.communicate(timeout=20)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert waiter.returncode == 0, err
    assert "shared holder=bob" in out
    assert lock_info(base / "d/f").startswith("shared holder=bob")
    assert (slow.ws.data_path / rel.lstrip("/") / "d/f").read_text() == "hello\n" + "more\n" * 20
    run([AGENTFS, "unlock", f], user="agentfs-t2")


def test_requests_that_hold_kernel_inode_locks_fail_at_once(slow):
    """Only open and opendir wait; the rest answer at once, so the holder is never stalled."""
    _, base = slow.case(owner="bob")
    lock(slow.w["alice"], base / "d")  # every request of OPS touches something below d
    for name, (_, code, held_errno, _) in OPS.items():
        if name in WAITING:
            continue
        t0 = time.monotonic()
        assert slow.w["bob"].err(PRELUDE + code, block=True, base=str(base)) == held_errno, name
        assert time.monotonic() - t0 < SLOW_WAIT / 3, f"{name} waited"
    t0 = time.monotonic()
    assert slow.w["bob"].err("os.setxattr(p, x, b'exclusive')", p=str(base / "d"), x=XATTR) == "EBUSY"
    assert time.monotonic() - t0 < SLOW_WAIT / 3


def test_cli_lock_wait_gives_up_with_status_75(fast):
    _, base = fast.case(owner="alice")
    f = str(base / "d/f")
    lock(fast.w["writer"], base / "d/f")
    t0 = time.monotonic()
    r = run([AGENTFS, "lock", "--wait", "1.5", f], user="agentfs-t2", check=False)
    assert r.returncode == 75 and "holder=writer" in r.stderr + r.stdout, r
    assert "after 1.5 s" in r.stderr and "pass --wait" not in r.stderr, r.stderr
    assert time.monotonic() - t0 >= 1.5
    assert lock_info(base / "d/f").startswith("exclusive holder=writer")
    unlock(fast.w["writer"], base / "d/f")
