"""Identity: /proc parsing, and resolving real processes by mount, session tree, uid and default."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

from conftest import make_workspace, wait_for

from agentfs.core import identity
from agentfs.core.identity import (IdentityResolver, announce_session, find_session, parent_pid,
                                   pid_alive, process_start_time, session_alive, thread_group)
from agentfs.core.policy import PolicyHolder
from agentfs.store.beacon import Beacon
from agentfs.store import db
from agentfs.store import sessions as store
from agentfs.workspace import Workspace

POLICY = """\
[workspace]
default_agent = "guest"

[agents.guest]
rules = [{ path = "/pub/**", allow = "r" }]

[agents.researcher]
uids = [2001]
rules = [{ path = "/research/**", allow = "rwcdl" }]

[agents.writer]
rules = [{ path = "/drafts/**", allow = "rwcdl" }]
"""


@pytest.fixture
def ws(workdir: Path) -> Workspace:
    return make_workspace(workdir, POLICY)


@pytest.fixture(params=[None, 0], ids=["pidfd", "procfs"])
def resolver(ws: Workspace, request: pytest.FixtureRequest) -> Iterator[IdentityResolver]:
    """Both ways of recognising a repeat caller: a pidfd probe, or re-reading its start time."""
    r = IdentityResolver(PolicyHolder(ws.policy_path), ws, max_pidfds=request.param)
    yield r
    r.close()
    assert r._pidfds == 0


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    """Child processes, always killed and reaped."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def children_of(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(x) for x in text.split()]


def tree(procs: list[subprocess.Popen]) -> tuple[subprocess.Popen, int]:
    """A shell (the would-be session root) with a `sleep` grandchild under it."""
    root = subprocess.Popen(["sh", "-c", "sleep 60 & wait"])
    procs.append(root)
    kids = wait_for(lambda: children_of(root.pid), what="sleep child")
    return root, kids[0]


def register(ws: Workspace, agent: str, pid: int, start: int | None = None, uid: int = 0) -> int:
    conn = db.connect(ws)
    try:
        sid = store.create_session(conn, agent, pid, start if start is not None else process_start_time(pid), uid)
    finally:
        conn.close()
    announce_session(ws)
    return sid


# -- /proc parsing -------------------------------------------------------------

def test_start_time_and_parent_of_self() -> None:
    raw = Path(f"/proc/{os.getpid()}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    assert process_start_time(os.getpid()) == int(fields[19])
    assert parent_pid(os.getpid()) == os.getppid()
    assert process_start_time(0) is None and parent_pid(-1) is None
    assert process_start_time(2**22 + 12345) is None      # above pid_max: never a process


def test_comm_with_spaces_and_parens(procs: list[subprocess.Popen]) -> None:
    code = ("import ctypes, sys, time; ctypes.CDLL(None).prctl(15, b'x) (y z) ', 0, 0, 0); "
            "print('ok', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    procs.append(p)
    assert p.stdout.readline().strip() == "ok"
    assert "x) (y z)" in Path(f"/proc/{p.pid}/stat").read_text()
    assert parent_pid(p.pid) == os.getpid()
    start = process_start_time(p.pid)
    assert isinstance(start, int) and start >= process_start_time(os.getpid())


def test_thread_ids_resolve_to_their_process() -> None:
    got: dict[str, int] = {}
    done = threading.Event()

    def body() -> None:
        got["tid"] = threading.get_native_id()
        done.wait(10)

    t = threading.Thread(target=body)
    t.start()
    try:
        tid = wait_for(lambda: got.get("tid"), what="thread id")
        assert tid != os.getpid()
        assert process_start_time(tid) is not None
        assert thread_group(tid) == os.getpid()
    finally:
        done.set()
        t.join()


# -- resolution order ------------------------------------------------------------

def test_uid_default_mount_and_pid_zero(ws: Workspace, resolver: IdentityResolver) -> None:
    me = os.getpid()
    r = resolver.resolve(2001, 2001, me)
    assert (r.agent, r.how, r.session_id, r.uid, r.pid) == ("researcher", "uid", None, 2001, me)
    d = resolver.resolve(4242, 4242, me)
    assert (d.agent, d.how) == ("guest", "default")
    assert resolver.resolve(2001, 0, 0).agent == "researcher"
    assert resolver.resolve(4242, 0, 0).how == "default"
    assert resolver.resolve(4242, 0, 2**22 + 12345).how == "default"     # vanished pid
    dedicated = IdentityResolver(resolver.holder, ws, mount_agent="writer")
    m = dedicated.resolve(2001, 2001, me)
    assert (m.agent, m.how) == ("writer", "mount")


def test_session_tags_the_whole_tree(ws: Workspace, resolver: IdentityResolver,
                                     procs: list[subprocess.Popen]) -> None:
    root, sleeper = tree(procs)
    sid = register(ws, "writer", root.pid)
    for pid in (root.pid, sleeper):
        ident = resolver.resolve(2001, 2001, pid)      # the tag beats the uid
        assert (ident.agent, ident.how, ident.session_id) == ("writer", "session", sid)
    assert resolver.resolve(2001, 2001, os.getpid()).agent == "researcher"   # the parent is not tagged
    conn = db.connect(ws)
    try:
        row = find_session(conn, sleeper)
        assert row is not None and row.id == sid and row.agent == "writer"
        assert find_session(conn, os.getpid()) is None
    finally:
        conn.close()


def test_reused_pid_never_inherits(ws: Workspace, resolver: IdentityResolver,
                                   procs: list[subprocess.Popen]) -> None:
    root, sleeper = tree(procs)
    # A row for the same pid but another start time: a session root that died
    # and whose pid the kernel handed to this unrelated process.
    register(ws, "writer", root.pid, start=process_start_time(root.pid) - 1)
    for pid in (root.pid, sleeper):
        ident = resolver.resolve(4242, 0, pid)
        assert (ident.agent, ident.how, ident.session_id) == ("guest", "default", None)


def test_cache_hit_does_not_touch_the_db(ws: Workspace, resolver: IdentityResolver,
                                         procs: list[subprocess.Popen]) -> None:
    root, sleeper = tree(procs)
    register(ws, "writer", root.pid)
    assert resolver.resolve(0, 0, sleeper).agent == "writer"

    class NoDB:
        def __getattr__(self, name: str):
            raise AssertionError(f"database used on a cache hit ({name})")

    real, resolver._conn = resolver._conn, NoDB()  # type: ignore[assignment]
    try:
        for _ in range(3):
            assert resolver.resolve(0, 0, sleeper).agent == "writer"
    finally:
        resolver._conn = real


def test_new_session_overrides_a_cached_untagged_answer(ws: Workspace, resolver: IdentityResolver,
                                                        procs: list[subprocess.Popen]) -> None:
    """`agentfs run` may touch the mount before it registers; its later tag must win."""
    root, sleeper = tree(procs)
    assert resolver.resolve(4242, 0, sleeper).how == "default"
    register(ws, "writer", root.pid)
    ident = resolver.resolve(4242, 0, sleeper)
    assert (ident.agent, ident.how) == ("writer", "session")


def test_the_session_stamp_is_a_shared_word_and_falls_back_to_its_mtime(ws: Workspace, procs: list[subprocess.Popen],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Daemons read the stamp from a mapping (no syscall per request); unmappable, from its mtime."""
    mapped = IdentityResolver(PolicyHolder(ws.policy_path), ws)
    with monkeypatch.context() as m:
        m.setattr(Beacon, "open", classmethod(lambda cls, path: None))
        unmapped = IdentityResolver(PolicyHolder(ws.policy_path), ws)
    try:
        assert mapped._stamp._beacon is not None and unmapped._stamp._beacon is None
        before = (mapped._stamp.value(), unmapped._stamp.value())
        root, sleeper = tree(procs)
        for r in (mapped, unmapped):
            assert r.resolve(4242, 0, sleeper).how == "default"
        register(ws, "writer", root.pid)
        assert mapped._stamp.value() != before[0] and unmapped._stamp.value() != before[1]
        for r in (mapped, unmapped):
            assert (r.resolve(4242, 0, sleeper).agent, r.resolve(4242, 0, sleeper).how) == ("writer", "session")
    finally:
        mapped.close()
        unmapped.close()


def test_a_repeat_caller_is_answered_from_memory_within_the_window(resolver: IdentityResolver,
                                                                  procs: list[subprocess.Popen],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Within RECENT_TTL_S neither the pidfd nor /proc is consulted; after it, they are again."""
    _root, sleeper = tree(procs)
    first = resolver.resolve(2001, 0, sleeper)
    probes: list[int] = []
    real = resolver._still_same
    monkeypatch.setattr(resolver, "_still_same", lambda pid, seen: probes.append(pid) or real(pid, seen))
    assert resolver.resolve(2001, 0, sleeper) is first and probes == []
    assert resolver.resolve(2002, 0, sleeper).agent == "guest"      # another uid: asked again
    monkeypatch.setattr(identity, "RECENT_TTL_S", 0.0)
    resolver.resolve(2001, 0, sleeper)
    resolver.resolve(2001, 0, sleeper)
    assert probes.count(sleeper) >= 2


def test_session_alive_and_forget_dead(ws: Workspace, resolver: IdentityResolver,
                                       procs: list[subprocess.Popen]) -> None:
    root, sleeper = tree(procs)
    sid = register(ws, "writer", root.pid)
    assert resolver.resolve(0, 0, sleeper).how == "session"
    assert resolver.session_alive(sid)
    conn = db.connect(ws)
    try:
        assert session_alive(conn, sid)
        assert not session_alive(conn, sid + 1000)
        os.kill(sleeper, signal.SIGKILL)
        root.wait(timeout=10)                       # sh's `wait` returns when sleep dies
        assert not resolver.session_alive(sid)
        assert not session_alive(conn, sid)
        assert resolver.forget_dead() >= 1
        row = store.get_session(conn, sid)
        assert row is not None and row.ended_ns is not None
        assert store.live_sessions(conn) == []
        assert all(pid_alive(*k) for k in resolver._cache)
    finally:
        conn.close()


def test_descendants_keep_their_tag_after_the_root_exits(ws: Workspace, resolver: IdentityResolver,
                                                         procs: list[subprocess.Popen]) -> None:
    """Stickiness: an orphan seen tagged stays tagged (it cannot shed the tag by outliving its root)."""
    root = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; read x"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    procs.append(root)
    register(ws, "writer", root.pid)
    sleeper = int(root.stdout.readline())
    try:
        assert resolver.resolve(0, 0, sleeper).how == "session"
        root.stdin.close()                          # the root exits; sleep is orphaned
        root.wait(timeout=10)
        wait_for(lambda: parent_pid(sleeper) != root.pid, what="orphan re-parented")
        ident = resolver.resolve(0, 0, sleeper)
        assert (ident.agent, ident.how) == ("writer", "session")
    finally:
        os.kill(sleeper, signal.SIGKILL)


def test_subreaper_keeps_orphans_in_the_tree(ws: Workspace, resolver: IdentityResolver,
                                             procs: list[subprocess.Popen]) -> None:
    """With the session root a subreaper (as `agentfs run` makes it), a double fork stays inside."""
    code = ("import ctypes, os, subprocess, sys, time\n"
            "ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)\n"
            "p = subprocess.Popen(['sh', '-c', 'sleep 60 & echo $!'], stdout=subprocess.PIPE, text=True)\n"
            "print(p.stdout.readline().strip(), flush=True); p.wait(); time.sleep(60)\n")
    root = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    procs.append(root)
    register(ws, "writer", root.pid)
    orphan = int(root.stdout.readline())
    try:
        wait_for(lambda: parent_pid(orphan) == root.pid, what="orphan re-parented to the subreaper")
        ident = resolver.resolve(0, 0, orphan)       # never seen before it was orphaned
        assert (ident.agent, ident.how) == ("writer", "session")
    finally:
        os.kill(orphan, signal.SIGKILL)


def test_policy_reload_changes_uid_agents(ws: Workspace, resolver: IdentityResolver) -> None:
    assert resolver.resolve(2001, 0, os.getpid()).agent == "researcher"
    ws.policy_path.write_text(POLICY.replace("uids = [2001]", "uids = [2002]"))
    assert resolver.holder.reload()
    assert resolver.resolve(2001, 0, os.getpid()).agent == "guest"
    assert resolver.resolve(2002, 0, os.getpid()).agent == "researcher"


def test_a_dead_process_is_not_recognised_again(ws: Workspace, resolver: IdentityResolver,
                                                procs: list[subprocess.Popen], monkeypatch) -> None:
    # Past the few milliseconds a repeat caller is answered from memory (its
    # pid cannot be reused that fast): then the probe must notice the death.
    monkeypatch.setattr(identity, "RECENT_TTL_S", 0.0)
    root, sleeper = tree(procs)
    register(ws, "writer", root.pid)
    assert resolver.resolve(0, 0, sleeper).how == "session"
    seen = resolver._seen[sleeper]
    assert resolver._still_same(sleeper, seen)
    os.kill(sleeper, signal.SIGKILL)
    root.wait(timeout=10)                           # sleep is reaped by sh, then sh exits
    assert not resolver._still_same(sleeper, seen)
    assert resolver.resolve(0, 0, sleeper).how == "default"
    assert sleeper not in resolver._seen


def test_pidfd_cap_is_respected(ws: Workspace, procs: list[subprocess.Popen]) -> None:
    r = IdentityResolver(PolicyHolder(ws.policy_path), ws, max_pidfds=2)
    try:
        pids = []
        for _ in range(4):
            p = subprocess.Popen(["sleep", "60"])
            procs.append(p)
            pids.append(p.pid)
        for pid in pids:
            assert r.resolve(4242, 0, pid).how == "default"
        assert r._pidfds == 2
        assert sum(1 for s in r._seen.values() if s.pidfd >= 0) == 2
        for p in procs:
            p.kill()
            p.wait()
        r.forget_dead()
        assert r._pidfds == 0 and not r._seen
    finally:
        r.close()


def test_resolver_is_thread_safe(ws: Workspace, procs: list[subprocess.Popen]) -> None:
    """Threads resolving and tidying at once never share a pidfd wrongly nor lose one."""
    r = IdentityResolver(PolicyHolder(ws.policy_path), ws, max_pidfds=8)
    for _ in range(6):
        procs.append(subprocess.Popen(["sleep", "60"]))
    pids = [p.pid for p in procs]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for n in range(300):
                assert r.resolve(2001, 0, pids[(i + n) % len(pids)]).agent == "researcher"
                if n % 50 == 0:
                    r.forget_dead()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors
        assert r._pidfds == sum(1 for s in r._seen.values() if s.pidfd >= 0) <= 8
    finally:
        r.close()
    assert r._pidfds == 0
