"""Who is calling, seen through a real mount: uids, `agentfs run` tags, stickiness, pid reuse.

The daemon resolves a request's (uid, pid) to an agent; these tests read
`.agentfs/whoami` and use rights on the mount to see which agent it chose,
for real Unix users, for process trees started with `agentfs run`, and for
a new process that gets a pid a tagged process had.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from agent_worker import LIST, READ, Worker
from conftest import AGENTFS, make_workspace, mounted, run, wait_for
from test_permissions_mount import build

POLICY = """\
[workspace]
default_agent = "nobody"

[agents.supervisor]
uids = [0]
rules = [{ path = "/**", allow = "rwcdl" }]

[agents.alice]
uids = [2901]
rules = [
  { path = "/alice/**", allow = "rwcdl" },
  { path = "/shared/**", allow = "rwcdl" },
]

[agents.writer]
rules = [
  { path = "/drafts/**", allow = "rwcdl" },
  { path = "/shared/**", allow = "r" },
]

[agents.reviewer]
rules = [{ path = "/drafts/**", allow = "r" }]
"""

TREE = {"alice/secret.txt": "alice only\n", "shared/readme.md": "shared\n", "drafts/": None}


@pytest.fixture(scope="module")
def idenv(users) -> Iterator[tuple]:
    base = Path(tempfile.mkdtemp(prefix="agentfs-id-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        ws = make_workspace(base, POLICY)
        build(ws.data_path, TREE, 2901)
        with mounted(ws, base / "mnt") as m:
            yield ws, m.path
    finally:
        shutil.rmtree(base, ignore_errors=True)


def whoami(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def tagged(ws, agent: str, user: str | None = None) -> Worker:
    prefix = [AGENTFS, "run", "--agent", agent, "-w", str(ws.root)] + (["--user", user] if user else []) + ["--"]
    return Worker(prefix=prefix)


def test_uid_agents_and_the_default(idenv):
    ws, mnt = idenv
    for user, agent, how in (("agentfs-t1", "alice", "uid"), ("agentfs-t3", "nobody", "default")):
        r = run([AGENTFS, "whoami", "--json", str(mnt)], user=user)
        doc = json.loads(r.stdout)
        assert (doc["agent"], doc["via"], doc["uid"]) == (agent, how, pwd.getpwnam(user).pw_uid)
    assert whoami((mnt / ".agentfs/whoami").read_text())["agent"] == "supervisor"


def test_run_tags_the_command_and_it_gets_that_agents_rights(idenv):
    ws, mnt = idenv
    with tagged(ws, "writer", "agentfs-t3") as w:
        me = whoami(w.ok(READ, p=f"{mnt}/.agentfs/whoami"))
        assert (me["agent"], me["via"], me["uid"], int(me["pid"])) == ("writer", "session", "2903", w.pid)
        w.ok("open(p, 'w').write('draft')", p=f"{mnt}/drafts/by-writer.md")
        assert (ws.data_path / "drafts/by-writer.md").stat().st_uid == 2903
        assert w.ok(READ, p=f"{mnt}/shared/readme.md") == "shared\n"
        assert w.err("open(p, 'a').write('x')", p=f"{mnt}/shared/readme.md") == "EACCES"
        assert w.err(READ, p=f"{mnt}/alice/secret.txt") == "ENOENT"
        assert "alice" not in w.ok(LIST, p=str(mnt))
    # the same uid untagged is the default agent again
    assert json.loads(run([AGENTFS, "whoami", "--json", str(mnt)], user="agentfs-t3").stdout)["agent"] == "nobody"


def test_a_tag_beats_the_uid(idenv):
    ws, mnt = idenv
    with tagged(ws, "reviewer", "agentfs-t1") as w:  # alice's uid, tagged as reviewer
        assert whoami(w.ok(READ, p=f"{mnt}/.agentfs/whoami"))["agent"] == "reviewer"
        assert w.err(READ, p=f"{mnt}/alice/secret.txt") == "ENOENT"
        assert w.err("open(p, 'w').write('x')", p=f"{mnt}/drafts/x.md") == "EACCES"


DOUBLE_FORK = """
r, wr = os.pipe()
if os.fork() == 0:
    middle = os.getpid()
    if os.fork() == 0:
        import time
        os.close(r)
        deadline = time.monotonic() + 10
        while os.getppid() == middle and time.monotonic() < deadline:  # until orphaned
            time.sleep(0.001)
        text = open(p).read()
        os.write(wr, (text + 'ppid: %d\\n' % os.getppid()).encode())
        os._exit(0)
    os._exit(0)
os.close(wr)
os.wait()
chunks = []
while True:
    b = os.read(r, 4096)
    if not b:
        break
    chunks.append(b)
os.close(r)
result = b''.join(chunks).decode()
"""


def test_children_of_a_tagged_process_are_the_same_agent(idenv):
    ws, mnt = idenv
    who = f"{mnt}/.agentfs/whoami"
    with tagged(ws, "writer", "agentfs-t3") as w:
        root = w.pid
        outs = {
            "sh -c": w.ok("subprocess.run(['sh', '-c', 'cat ' + p], capture_output=True, text=True).stdout", p=who),
            "nested sh": w.ok("subprocess.run(['sh', '-c', 'sh -c \"cat ' + p + '\"'], capture_output=True, "
                              "text=True).stdout", p=who),
            "python child": w.ok("subprocess.run([sys.executable, '-c', 'print(open(%r).read())' % p], "
                                 "capture_output=True, text=True).stdout", p=who),
            "background job": w.ok("subprocess.run(['sh', '-c', '(cat ' + p + ' &) ; wait'], capture_output=True, "
                                   "text=True).stdout", p=who),
            "double fork": w.ok(DOUBLE_FORK, block=True, p=who),
        }
        # a thread: FUSE reports its thread id, which must resolve to the tagged process
        text, tid = w.ok("import threading\nbox = []\nt = threading.Thread(target=lambda: box.append("
                         "(open(p).read(), threading.get_native_id())))\nt.start()\nt.join()\nresult = box[0]",
                         block=True, p=who)
        assert whoami(text)["agent"] == "writer" and int(whoami(text)["pid"]) == tid != root
        for how, text in outs.items():
            me = whoami(text)
            assert me.get("agent") == "writer" and me.get("via") == "session", (how, text)
            assert int(me["pid"]) != root, how
        # new user and pid namespaces (root inside) change nothing: the daemon sees the real pid and uid
        ns = w.ok("vars(subprocess.run(['unshare', '-Urpf', 'sh', '-c', 'id -u; cat ' + p], capture_output=True, "
                  "text=True))", p=who)
        if ns["returncode"] == 0:  # unprivileged user namespaces allowed here
            uid_inside, _, text = ns["stdout"].partition("\n")
            me = whoami(text)
            assert uid_inside == "0" and (me["agent"], me["uid"], me["via"]) == ("writer", "2903", "session"), ns
        # the orphan of the double fork was re-parented to the session root (a child subreaper)
        assert int(whoami(outs["double fork"])["ppid"]) == root


def test_a_tagged_process_cannot_retag(idenv):
    ws, mnt = idenv
    with tagged(ws, "reviewer") as w:  # root, tagged: root may tag, but not from inside a tag
        for agent in ("supervisor", "reviewer"):
            r = w.ok("vars(subprocess.run(cmd, capture_output=True, text=True))",
                     cmd=[AGENTFS, "run", "--agent", agent, "-w", str(ws.root), "--", "cat", f"{mnt}/.agentfs/whoami"])
            assert r["returncode"] != 0 and r["stdout"] == "", r
            assert len(r["stderr"].strip().splitlines()) == 1 and "Traceback" not in r["stderr"], r["stderr"]
            assert "reviewer" in r["stderr"]
        assert whoami(w.ok(READ, p=f"{mnt}/.agentfs/whoami"))["agent"] == "reviewer"


def test_a_non_root_user_cannot_tag(idenv):
    ws, mnt = idenv
    for extra in ([], ["--user", "agentfs-t1"]):
        r = run([AGENTFS, "run", "--agent", "supervisor", "-w", str(ws.root), *extra, "--",
                 "cat", f"{mnt}/.agentfs/whoami"], user="agentfs-t3", check=False)
        assert r.returncode != 0 and r.stdout == "", r
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


def _live_session_pids(ws) -> set[int]:
    from agentfs.store import db
    from agentfs.store import sessions as store

    conn = db.connect(ws)
    try:
        return {row.pid for row in store.live_sessions(conn)}
    finally:
        conn.close()


def test_a_session_ends_with_its_root_and_its_locks_die_with_it(idenv):
    ws, mnt = idenv
    target = f"{mnt}/drafts/locked.md"
    with tagged(ws, "writer", "agentfs-t3") as w:
        root = w.pid
        w.ok("open(p, 'w').write('x')", p=target)
        w.ok("os.setxattr(p, 'user.agentfs.lock', b'exclusive')", p=target)
        assert "/drafts/locked.md" in run([AGENTFS, "locks", "-w", str(ws.root)]).stdout
        assert root in _live_session_pids(ws)
    wait_for(lambda: root not in _live_session_pids(ws), what="the session to end with its root")
    wait_for(lambda: "/drafts/locked.md" not in run([AGENTFS, "locks", "-w", str(ws.root)]).stdout,
             what="the session's lock to die with it")
    # nobody else is blocked by the dead session's lock: root (supervisor) writes at once
    with open(mnt / "drafts/locked.md", "a") as f:
        f.write("y")


def _spawn_with_pid(pid: int, cmd: list[str], user: str, tries: int = 200) -> subprocess.Popen | None:
    """Start `cmd` so that it gets `pid`, by setting the kernel's last pid just below it (root only)."""
    for _ in range(tries):
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(pid - 1))
        except OSError:
            return None
        p = subprocess.Popen(cmd, user=user, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if p.pid == pid:
            return p
        p.communicate()
    return None


def test_a_reused_pid_never_inherits_a_tag(idenv):
    """A tagged session root exits; a new untagged process of the same user gets its very pid."""
    ws, mnt = idenv
    who = f"{mnt}/.agentfs/whoami"
    first = subprocess.run([AGENTFS, "run", "--agent", "writer", "-w", str(ws.root), "--user", "agentfs-t3",
                            "--", "cat", who], capture_output=True, text=True, check=True)
    me = whoami(first.stdout)
    assert me["agent"] == "writer"
    pid = int(me["pid"])
    second = _spawn_with_pid(pid, ["cat", who], "agentfs-t3")
    if second is None:
        pytest.skip("cannot steer pid allocation here (/proc/sys/kernel/ns_last_pid)")
    out, err = second.communicate(timeout=10)
    again = whoami(out)
    assert int(again["pid"]) == pid, (out, err)
    assert again["agent"] == "nobody" and again["via"] == "default", out
