"""`agentfs lock/unlock/locks` without a mount: the xattr calls are faked, the DB is real."""

from __future__ import annotations

import errno
import json

import pytest
import trio
from click.testing import CliRunner

from agentfs import workspace as workspace_mod
from agentfs.cli import lock_cmds, main
from agentfs.core.locks import LockManager, LockMode, format_locks_listing
from agentfs.errors import WorkspaceError
from agentfs.workspace import init_workspace


@pytest.fixture
def ws(tmp_path):
    return init_workspace(tmp_path / "ws", "")


@pytest.fixture
def mnt(tmp_path, ws, monkeypatch):
    """A directory that the CLI believes is an agentfs mount of `ws`."""
    m = tmp_path / "mnt"
    (m / "research").mkdir(parents=True)
    (m / "research" / "notes.md").write_text("x")
    monkeypatch.setattr(lock_cmds, "mounts_of_agentfs", lambda: [(m, ws.root)])
    monkeypatch.setattr(workspace_mod, "mounts_of_agentfs", lambda: [(m, ws.root)])
    return m


class FakeXattr:
    """Records xattr calls; `errors` lists errnos to raise on the next setxattr calls."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple] = []
        self.set_errors: list[int] = []
        self.remove_error: int | None = None
        monkeypatch.setattr(lock_cmds.os, "setxattr", self.setxattr)
        monkeypatch.setattr(lock_cmds.os, "getxattr", self.getxattr)
        monkeypatch.setattr(lock_cmds.os, "removexattr", self.removexattr)
        monkeypatch.setattr(lock_cmds, "RETRY_SECONDS", 0.01)

    def setxattr(self, path, name, value):
        self.calls.append(("set", str(path), name, value))
        if self.set_errors:
            code = self.set_errors.pop(0)
            raise OSError(code, "fake")

    def getxattr(self, path, name):
        return b"exclusive holder=researcher expires=2026-11-24T02:10:00Z ttl=287 token=42"

    def removexattr(self, path, name):
        self.calls.append(("remove", str(path), name))
        if self.remove_error is not None:
            raise OSError(self.remove_error, "fake")


@pytest.fixture
def xattr(monkeypatch):
    return FakeXattr(monkeypatch)


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def test_lock_writes_the_xattr(mnt, xattr):
    f = mnt / "research" / "notes.md"
    r = run("lock", f)
    assert r.exit_code == 0, r.output
    assert xattr.calls == [("set", str(f), "user.agentfs.lock", b"exclusive")]
    assert "token=42" in r.output
    r = run("lock", "--shared", "--ttl", "30", f)
    assert r.exit_code == 0, r.output
    assert xattr.calls[-1][3] == b"shared;ttl=30"
    run("lock", "--ttl", "2.5", f)
    assert xattr.calls[-1][3] == b"exclusive;ttl=2.5"


def test_lock_and_unlock_json_name_the_paths_and_parse_the_holders(mnt, xattr):
    f = mnt / "research" / "notes.md"
    r = run("lock", "--json", f)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {
        "path": str(f), "workspace_path": "/research/notes.md", "locked": True,
        "holders": [{"mode": "exclusive", "agent": "researcher", "expires": "2026-11-24T02:10:00Z",
                     "ttl": 287, "token": 42}]}
    r = run("unlock", "--json", f)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["unlocked"] is True


def test_holders_keep_a_parent_path_with_spaces_whole(monkeypatch):
    monkeypatch.setattr(lock_cmds.os, "getxattr", lambda p, n: (
        b"exclusive holder=a expires=2026-11-24T02:10:00Z ttl=5 token=1 session=9 on=/my dir\n"
        b"shared holder=b expires=2026-11-24T02:10:00Z ttl=7 token=2"))
    assert lock_cmds.holders("x") == [
        {"mode": "exclusive", "agent": "a", "expires": "2026-11-24T02:10:00Z", "ttl": 5, "token": 1,
         "session_id": 9, "on": "/my dir"},
        {"mode": "shared", "agent": "b", "expires": "2026-11-24T02:10:00Z", "ttl": 7, "token": 2}]


def test_lock_retries_on_eagain_until_wait(mnt, xattr):
    xattr.set_errors = [errno.EAGAIN, errno.EAGAIN]
    r = run("lock", "--wait", "5", mnt / "research")
    assert r.exit_code == 0, r.output
    assert len(xattr.calls) == 3


@pytest.mark.parametrize("code", [errno.EBUSY, errno.EOPNOTSUPP])
def test_lock_busy_errnos(mnt, xattr, code):
    """EBUSY, and EOPNOTSUPP while somebody holds the lock (Linux's rendering of EAGAIN), mean busy."""
    xattr.set_errors = [code, code]
    r = run("lock", "--wait", "5", mnt / "research")
    assert r.exit_code == 0, r.output
    assert len(xattr.calls) == 3


def test_enotsup_without_holder_is_an_error(mnt, xattr, monkeypatch):
    def no_attr(path, name):
        raise OSError(errno.ENODATA, "no data")

    monkeypatch.setattr(lock_cmds.os, "getxattr", no_attr)
    xattr.set_errors = [errno.EOPNOTSUPP]
    r = run("lock", "--wait", "5", mnt / "research")
    assert r.exit_code == 1 and "does not take agentfs locks" in r.output
    assert len(xattr.calls) == 1


def test_lock_busy_without_wait(mnt, xattr):
    xattr.set_errors = [errno.EAGAIN] * 100
    r = run("lock", mnt / "research")
    assert r.exit_code == 75
    assert len(xattr.calls) == 1
    assert "locked by another agent" in r.output and "holder=researcher" in r.output


def test_lock_busy_after_wait_deadline(mnt, xattr):
    xattr.set_errors = [errno.EAGAIN] * 1000
    r = run("lock", "--wait", "0.1", mnt / "research")
    assert r.exit_code == 75
    assert 2 <= len(xattr.calls) < 1000


@pytest.mark.parametrize("code, words", [
    (errno.EACCES, "needs the l right"),
    (errno.ENOENT, "no such file"),
    (errno.EINVAL, "refused"),
])
def test_lock_errors_are_one_line(mnt, xattr, code, words):
    xattr.set_errors = [code]
    r = run("lock", mnt / "research")
    assert r.exit_code == 1
    assert words in r.output and "Traceback" not in r.output


def test_lock_refuses_paths_off_the_mount(tmp_path, mnt, xattr):
    other = tmp_path / "elsewhere"
    other.mkdir()
    r = run("lock", other)
    assert r.exit_code == 1 and "not on an agentfs mount" in r.output
    assert xattr.calls == []


def test_lock_rejects_bad_ttl(mnt, xattr):
    r = run("lock", "--ttl", "0", mnt / "research")
    assert r.exit_code == 2 and xattr.calls == []


def test_unlock(mnt, xattr):
    f = mnt / "research" / "notes.md"
    r = run("unlock", f)
    assert r.exit_code == 0, r.output
    assert xattr.calls == [("remove", str(f), "user.agentfs.lock")]


def test_unlock_force_takes_then_drops(mnt, xattr):
    f = mnt / "research" / "notes.md"
    r = run("unlock", "--force", f)
    assert r.exit_code == 0, r.output
    assert [c[0] for c in xattr.calls] == ["set", "remove"]
    assert xattr.calls[0][3] == lock_cmds.FORCE_VALUE


@pytest.mark.parametrize("code, words", [
    (errno.ENODATA, "not locked by you"),
    (errno.EPERM, "--force"),
])
def test_unlock_errors(mnt, xattr, code, words):
    xattr.remove_error = code
    r = run("unlock", mnt / "research")
    assert r.exit_code == 1 and words in r.output


def test_locks_from_database(ws):
    r = run("locks", "-w", ws.root)
    assert r.exit_code == 0 and r.output.strip() == "no locks"

    async def take():
        m = LockManager(ws, lambda: {"default_ttl": 60, "wait_seconds": 1})
        await m.acquire("researcher", "/research", LockMode.EXCLUSIVE)
        await m.acquire("writer", "/drafts/a.md", LockMode.SHARED, session_id=12)
        m.close()

    trio.run(take)
    r = run("-w", ws.root, "locks")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split()[0] == "MODE" and len(lines) == 3
    assert lines[1].split()[:4] == ["shared", "writer", "12", "2"]
    r = run("locks", "--json", "-w", ws.root)
    rows = json.loads(r.output)
    assert [(x["path"], x["agent"], x["mode"], x["token"]) for x in rows] == [
        ("/drafts/a.md", "writer", "shared", 2), ("/research", "researcher", "exclusive", 1)]
    assert 55 <= rows[0]["ttl"] <= 60


def test_locks_from_mount_listing_when_db_unreadable(ws, mnt, monkeypatch):
    def refuse(_ws):
        raise WorkspaceError("cannot open the workspace state")

    monkeypatch.setattr(lock_cmds, "list_locks", refuse)
    monkeypatch.chdir(mnt / "research")
    (mnt / ".agentfs").mkdir()
    from agentfs.core.lock_types import Lock
    lock = Lock("/research", LockMode.EXCLUSIVE, "researcher", None, 9, 0, 2_000_000_000_000_000_000)
    (mnt / ".agentfs" / "locks").write_text(format_locks_listing([lock]))
    r = run("locks")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[1].split()[:4] == ["exclusive", "researcher", "-", "9"]
    r = run("locks", "--json")
    assert json.loads(r.output)[0]["token"] == 9 and json.loads(r.output)[0]["path"] == "/research"
    monkeypatch.chdir(ws.root.parent)
    monkeypatch.setattr(lock_cmds, "mounts_of_agentfs", lambda: [])
    r = run("locks")
    assert r.exit_code == 1 and "cannot read the locks" in r.output
