"""Fixtures: workspaces, real mounts served by a daemon in its own process, real Unix users.

A mount is always unmounted, even when a test fails: `fusermount3 -u`, then a
lazy unmount if that fails, then the daemon is waited for (and killed if it
hangs), so one broken test never leaves a dead mount behind for the next.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from agentfs.workspace import Workspace, init_workspace

AGENTFS = str(Path(sys.executable).with_name("agentfs"))

OPEN_POLICY = """\
[workspace]
default_agent = "anyone"

[agents.anyone]
rules = [{ path = "/**", allow = "rwcdl" }]
"""


def run(cmd: list[str], *, check: bool = True, user: str | int | None = None, timeout: float = 60,
        **kw) -> subprocess.CompletedProcess:
    """Run a command, optionally as another Unix user (the client side of a test)."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    if user is not None:
        kw["user"] = user
        kw["group"] = pwd.getpwnam(user).pw_gid if isinstance(user, str) else pwd.getpwuid(user).pw_gid
        kw["extra_groups"] = []
    r = subprocess.run(cmd, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} failed ({r.returncode}): {r.stdout}{r.stderr}")
    return r


def wait_for(cond: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll `cond` until it is truthy or the deadline passes (never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A temporary directory other Unix users can traverse (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="agentfs-t-", dir="/tmp"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        for mnt in list(_live_mounts()):
            if str(mnt).startswith(str(d)):
                _force_unmount(mnt)
        shutil.rmtree(d, ignore_errors=True)


def _live_mounts() -> list[Path]:
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        f = line.split(" ")
        if f[0].startswith("agentfs:"):
            out.append(Path(f[1].replace("\\040", " ")))
    return out


def _force_unmount(mnt: Path) -> None:
    if subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


def make_workspace(base: Path, policy: str = OPEN_POLICY, name: str = "ws") -> Workspace:
    return init_workspace(base / name, policy)


class Mount:
    """A live mount of a workspace by a daemon in its own process."""

    def __init__(self, ws: Workspace, path: Path, pid: int) -> None:
        self.ws, self.path, self.pid = ws, path, pid

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def answers(self) -> bool:
        """The mount still serves requests (not dead, not stale)."""
        try:
            os.listdir(self.path)
            os.stat(self.path)
        except OSError:
            return False
        return True


@contextlib.contextmanager
def mounted(ws: Workspace, mnt: Path, *extra: str, prefix: tuple[str, ...] = ()) -> Iterator[Mount]:
    """`prefix` runs `agentfs mount` under another command (e.g. prlimit)."""
    with contextlib.suppress(OSError):  # a stale mount here is `agentfs mount`'s to recover
        mnt.mkdir(parents=True, exist_ok=True)
        os.chmod(mnt, 0o755)
    r = run([*prefix, AGENTFS, "mount", str(ws.root), str(mnt), *extra], check=False)
    assert r.returncode == 0, f"mount failed: {r.stderr}"
    pid = int(r.stdout.strip().rsplit(" ", 1)[-1].rstrip(")"))
    m = Mount(ws, mnt, pid)
    try:
        yield m
    finally:
        if subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        deadline = time.monotonic() + 15
        while m.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if m.alive():
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def ws(workdir: Path) -> Workspace:
    return make_workspace(workdir)


@pytest.fixture
def mount(ws: Workspace, workdir: Path) -> Iterator[Mount]:
    with mounted(ws, workdir / "mnt") as m:
        yield m


@pytest.fixture
def native(workdir: Path) -> Path:
    """A native directory on the same filesystem, to compare the mount against."""
    d = workdir / "native"
    d.mkdir()
    os.chmod(d, 0o777)
    return d


TEST_USERS = {"agentfs-t1": 2901, "agentfs-t2": 2902, "agentfs-t3": 2903}


@pytest.fixture(scope="session")
def users() -> Iterator[dict[str, int]]:
    """Real Unix users for identity tests, created for the session and removed after."""
    made = []
    for name, uid in TEST_USERS.items():
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--uid", str(uid), "--user-group", "--no-create-home",
                            "--shell", "/bin/sh", name], check=True, capture_output=True)
            made.append(name)
    try:
        yield dict(TEST_USERS)
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True)
