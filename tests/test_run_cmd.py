"""`agentfs init`, `agentfs run` and `agentfs policy check/explain` through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import AGENTFS, make_workspace, run

from agentfs.core.identity import IdentityResolver, parent_pid, process_start_time
from agentfs.core.policy import PolicyHolder
from agentfs.store import db
from agentfs.store import sessions as store
from agentfs.workspace import Workspace

POLICY = """\
[workspace]
default_agent = "nobody"

[agents.writer]
rules = [
  { path = "/research/**", allow = "r" },
  { path = "/drafts/**",   allow = "rwcdl" },
  { path = "/drafts/secret/**", deny = "rwcdl" },
]

[agents.supervisor]
uids = [1000]
rules = [{ path = "/**", allow = "rwcdl" }]
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="agentfs run tests need root")


@pytest.fixture
def ws(workdir: Path) -> Workspace:
    return make_workspace(workdir, POLICY)


def sessions(ws: Workspace) -> list[store.SessionRow]:
    conn = db.connect(ws)
    try:
        return store.recent_sessions(conn)
    finally:
        conn.close()


# -- init and policy commands -------------------------------------------------------

def test_init_creates_a_valid_workspace(workdir: Path) -> None:
    r = run([AGENTFS, "init", str(workdir / "new")])
    assert "created workspace" in r.stdout and f"next: agentfs mount {workdir / 'new'} MNT" in r.stdout
    assert (workdir / "new" / "agentfs.toml").is_file() and (workdir / "new" / "data").is_dir()
    c = run([AGENTFS, "policy", "check", str(workdir / "new")])
    assert c.stdout.strip() == "ok: 1 agents, 0 rules"
    again = run([AGENTFS, "init", str(workdir / "new")], check=False)
    assert again.returncode == 1 and "already a workspace" in again.stderr
    assert "Traceback" not in again.stderr


def test_policy_check_ok_and_error(ws: Workspace) -> None:
    assert run([AGENTFS, "policy", "check", "-w", str(ws.root)]).stdout.strip() == "ok: 2 agents, 4 rules"
    assert run([AGENTFS, "-w", str(ws.root), "policy", "check"]).stdout.strip() == "ok: 2 agents, 4 rules"
    ws.policy_path.write_text(POLICY.replace('allow = "r" }', 'allow = "rx" }'))
    r = run([AGENTFS, "policy", "check", str(ws.root)], check=False)
    assert r.returncode == 1
    assert r.stderr.strip() == (f"agentfs: {ws.policy_path}:6: agents.writer.rules[0].allow: "
                                "unknown right 'x' (use letters r w c d l)")


def test_policy_explain(ws: Workspace) -> None:
    r = run([AGENTFS, "policy", "explain", str(ws.root), "--agent", "writer", "/drafts/secret/plan.md"])
    assert "line 7" in r.stdout and "line 8" in r.stdout
    assert r.stdout.strip().endswith("writer on /drafts/secret/plan.md: rights -, invisible (ENOENT)")
    j = json.loads(run([AGENTFS, "policy", "explain", "-w", str(ws.root), "--agent", "writer",
                        "/drafts/a.md/", "--json"]).stdout)
    assert j["path"] == "/drafts/a.md" and j["rights"] == "rwcdl" and j["visible"] is True
    assert [(e["kind"], e["line"]) for e in j["rules"]] == [("allow", 7)]
    bad = run([AGENTFS, "policy", "explain", str(ws.root), "--agent", "writer", "drafts"], check=False)
    assert bad.returncode == 1 and "starting with '/'" in bad.stderr


# -- agentfs run --------------------------------------------------------------------------

def test_run_tags_the_command_and_passes_its_status(ws: Workspace) -> None:
    script = ('echo "$$ $AGENTFS_AGENT $AGENTFS_SESSION $AGENTFS_WORKSPACE"; '
              'sleep 60 & echo $!; read x; kill $!; exit 7')
    p = subprocess.Popen([AGENTFS, "run", "-w", str(ws.root), "--agent", "writer", "--", "sh", "-c", script],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pid_s, agent, sid_s, wsroot = p.stdout.readline().split()
        sleeper = int(p.stdout.readline())
        assert int(pid_s) == p.pid                  # exec'd: the session root is the command itself
        assert (agent, wsroot) == ("writer", str(ws.root))
        row = sessions(ws)[0]
        assert (row.id, row.agent, row.pid, row.uid) == (int(sid_s), "writer", p.pid, 0)
        assert row.start_time == process_start_time(p.pid)
        assert parent_pid(sleeper) == p.pid
        resolver = IdentityResolver(PolicyHolder(ws.policy_path), ws)
        ident = resolver.resolve(1000, 0, sleeper)  # uid 1000 is the supervisor: the tag wins
        assert (ident.agent, ident.how, ident.session_id) == ("writer", "session", row.id)
        resolver.close()
        p.stdin.close()
        assert p.wait(timeout=20) == 7
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_tagged_process_cannot_retag(ws: Workspace) -> None:
    r = run([AGENTFS, "run", "-w", str(ws.root), "--agent", "writer", "--",
             "sh", "-c", f"{AGENTFS} run -w {ws.root} --agent supervisor -- echo escaped"], check=False)
    assert r.returncode == 1
    assert "escaped" not in r.stdout
    assert "a tagged process cannot re-tag itself" in r.stderr and "'writer'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert [s.agent for s in sessions(ws)] == ["writer"]


def test_run_refuses_unknown_agent_and_missing_command(ws: Workspace) -> None:
    r = run([AGENTFS, "run", "-w", str(ws.root), "--agent", "ghost", "--", "true"], check=False)
    assert r.returncode == 1 and r.stderr.strip().startswith("agentfs: no agent 'ghost'")
    r = run([AGENTFS, "run", "-w", str(ws.root), "--agent", "writer", "--", "no-such-command-xyz"], check=False)
    assert r.returncode == 1 and "command not found: no-such-command-xyz" in r.stderr
    assert sessions(ws) == []


def test_run_as_another_user(ws: Workspace, users: dict[str, int]) -> None:
    name, uid = next(iter(users.items()))
    r = run([AGENTFS, "run", "-w", str(ws.root), "--agent", "writer", "--user", name, "--",
             "sh", "-c", 'echo "$(id -u) $(id -g) $(id -G) $HOME $USER"'])
    out = r.stdout.split()
    assert out[0] == str(uid) and out[1] == str(uid) and out[2] == str(uid)
    assert out[-1] == name
    row = sessions(ws)[0]
    assert (row.agent, row.uid) == ("writer", uid)


def test_only_root_or_the_owner_may_tag(ws: Workspace, users: dict[str, int]) -> None:
    name = list(users)[1]
    r = run([AGENTFS, "run", "-w", str(ws.root), "--agent", "writer", "--", "echo", "tagged"],
            user=name, check=False)
    assert r.returncode == 1 and "tagged" not in r.stdout and "Traceback" not in r.stderr
    assert "only root or the workspace owner" in r.stderr
    assert sessions(ws) == []
    # Even with a readable workspace, a user who neither is root nor owns it cannot tag.
    os.chmod(ws.root, 0o755)
    os.chmod(ws.policy_path, 0o644)
    r = run([AGENTFS, "run", "-w", str(ws.root), "--agent", "writer", "--", "echo", "tagged"],
            user=name, check=False)
    assert r.returncode == 1 and "tagged" not in r.stdout
    assert r.stderr.strip() == ("agentfs: only root or the workspace owner (uid 0) may start agents "
                                "with agentfs run")
    assert sessions(ws) == []


def test_the_owner_may_tag_after_a_root_daemon_created_the_session_stamp(ws: Workspace,
                                                                         users: dict[str, int]) -> None:
    """A daemon (root) maps the stamp first; a workspace owned by a user must still let it announce."""
    name = list(users)[1]
    subprocess.run(["chown", "-R", f"{name}:", str(ws.root)], check=True)
    resolver = IdentityResolver(PolicyHolder(ws.policy_path), ws)  # what a starting daemon does
    try:
        before = resolver._stamp.value()
        r = run([AGENTFS, "run", "-w", str(ws.root), "--agent", "writer", "--", "echo", "tagged"],
                user=name, check=False)
        assert (r.returncode, r.stdout.strip()) == (0, "tagged"), r.stderr
        assert resolver._stamp.value() != before
    finally:
        resolver.close()


def test_run_restores_default_sigpipe(ws: Workspace) -> None:
    r = run([AGENTFS, "run", "-w", str(ws.root), "--agent", "writer", "--",
             "sh", "-c", "grep SigIgn /proc/self/status"])
    ignored = int(r.stdout.split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))
