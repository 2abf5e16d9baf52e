"""Stress: several agents, several processes each, increment one counter file under agentfs locks.

Agents are three real Unix users, two `agentfs run` sessions and one agent
served by a second daemon (a mount dedicated to it), two processes each.
Each increment takes an exclusive lock through the `user.agentfs.lock`
xattr (with a lease, retrying on EBUSY), reads the counter, writes it + 1,
and unlocks. A lock belongs to an agent, not to a process, so an agent's own
processes take turns with a kernel flock on a local file; agentfs locks are
what keep the agents apart. The final value must be exact, and the audit
must show one granted lock and one unlock per increment.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import pytest
from conftest import AGENTFS, make_workspace, mounted, run

PROCS_PER_AGENT = 2
INCREMENTS = 25  # per process

POLICY = """\
[workspace]
default_agent = "nobody"

[agents.nobody]
rules = []

[agents.supervisor]
uids = [0]
rules = [{ path = "/**", allow = "rwcdl" }]

[agents.alice]
uids = [2901]
rules = [{ path = "/**", allow = "rwcdl" }]

[agents.bob]
uids = [2902]
rules = [{ path = "/**", allow = "rwcdl" }]

[agents.carol]
uids = [2903]
rules = [{ path = "/**", allow = "rwcdl" }]

[agents.writer]
rules = [{ path = "/**", allow = "rwcdl" }]

[agents.reviewer]
rules = [{ path = "/**", allow = "rwcdl" }]

[agents.dana]
rules = [{ path = "/**", allow = "rwcdl" }]

[locks]
wait_seconds = 2
"""

INCREMENTER = r"""
import errno, fcntl, os, random, sys, time
path, turn_file, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
busy = 0
with open(turn_file, "a") as turn:
    for _ in range(n):
        fcntl.flock(turn, fcntl.LOCK_EX)  # this agent's processes take turns
        try:
            deadline = time.monotonic() + 40
            while True:
                try:
                    os.setxattr(path, "user.agentfs.lock", b"exclusive;ttl=20")
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    busy += 1
                    time.sleep(random.uniform(0.001, 0.01))
            with open(path, "r+") as f:
                value = int(f.read())
                f.seek(0)
                f.write(str(value + 1))
            os.removexattr(path, "user.agentfs.lock")
        finally:
            fcntl.flock(turn, fcntl.LOCK_UN)
print(busy)
"""


@pytest.fixture
def arena(users, workdir):
    ws = make_workspace(workdir, POLICY)
    (ws.data_path / "counter").write_text("0")
    os.chmod(ws.data_path / "counter", 0o666)
    turns = workdir / "turns"
    turns.mkdir()
    os.chmod(turns, 0o777)
    with mounted(ws, workdir / "mnt") as m, mounted(ws, workdir / "mnt-dana", "--agent", "dana") as m2:
        yield ws, m.path, m2.path, turns


def test_agents_increment_a_counter_under_exclusive_locks(arena):
    ws, mnt, mnt_dana, turns = arena
    session = [AGENTFS, "run", "-w", str(ws.root), "--agent"]
    # agent -> (command prefix, mount it uses, uid the process runs as)
    agents = {
        "alice": ([], mnt, 2901),
        "bob": ([], mnt, 2902),
        "carol": ([], mnt, 2903),
        "writer": ([*session, "writer", "--user", "agentfs-t3", "--"], mnt, 0),
        "reviewer": ([*session, "reviewer", "--"], mnt, 0),
        "dana": ([], mnt_dana, 0),
    }
    procs = []
    for agent, (prefix, where, uid) in agents.items():
        turn = turns / agent
        turn.touch()
        os.chmod(turn, 0o666)
        for _ in range(PROCS_PER_AGENT):
            kw = {"user": uid, "group": uid, "extra_groups": []} if uid else {}
            procs.append((agent, subprocess.Popen(
                [*prefix, sys.executable, "-c", INCREMENTER, str(where / "counter"), str(turn), str(INCREMENTS)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)))
    busy = 0
    try:
        for agent, p in procs:
            out, err = p.communicate(timeout=90)
            assert p.returncode == 0, f"{agent}: {err}"
            busy += int(out.strip().splitlines()[-1])
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    total = len(agents) * PROCS_PER_AGENT * INCREMENTS
    assert (ws.data_path / "counter").read_text() == str(total)
    assert busy > 0, "no agent ever found the counter locked: the test exercised no contention"

    records = [json.loads(line) for line in run(
        [AGENTFS, "audit", "-w", str(ws.root), "--json", "--path", "/counter", "--op", "lock,unlock"]
    ).stdout.splitlines() if line.strip()]
    granted = [r for r in records if r["op"] == "lock" and r["result"] == "ok"]
    released = [r for r in records if r["op"] == "unlock" and r["result"] == "ok"]
    assert len(granted) == len(released) == total
    assert all(r["result"] == "EBUSY" for r in records if r["result"] != "ok")
    per_agent = collections.Counter(r["agent"] for r in granted)
    assert per_agent == {a: PROCS_PER_AGENT * INCREMENTS for a in agents}
    # every grant is a new lease with its own fencing token; an agent's own grants come in token
    # order and alternate with its unlocks (records of two agents, or two daemons, may interleave
    # in the log in another order than the grants)
    assert len({r["details"]["token"] for r in granted}) == total
    for agent in agents:
        mine = [r for r in records if r["agent"] == agent and r["result"] == "ok"]
        assert [r["op"] for r in mine] == ["lock", "unlock"] * (PROCS_PER_AGENT * INCREMENTS), agent
        tokens = [r["details"]["token"] for r in mine if r["op"] == "lock"]
        assert tokens == sorted(tokens), agent
        assert all(u["details"]["token"] == g["details"]["token"] for g, u in zip(mine[::2], mine[1::2]))
    assert "/counter" not in run([AGENTFS, "locks", "-w", str(ws.root)]).stdout
