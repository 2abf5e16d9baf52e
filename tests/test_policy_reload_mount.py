"""Policy edits reach a running mount: grants, revocations, broken edits and SIGHUP.

The daemon polls `WS/agentfs.toml` (and reloads at once on SIGHUP); the
tests edit the file as an operator would and poll, with a deadline, until a
real user's requests show the new rights. Nothing here sleeps to wait.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from agent_worker import LIST, READ, Worker
from conftest import AGENTFS, make_workspace, mounted, run, wait_for
from test_permissions_mount import build

BASE = """\
[workspace]
default_agent = "guest"

[agents.supervisor]
uids = [0]
rules = [{{ path = "/**", allow = "rwcdl" }}]

[agents.guest]
rules = [{{ path = "/pub/**", allow = "r" }}]

[agents.bob]
uids = [2902]
rules = [
{bob}
]
"""

GOOD = BASE.format(bob='  { path = "/pub/**", allow = "r" },')
GRANT = BASE.format(bob='  { path = "/pub/**", allow = "r" },\n  { path = "/grant/**", allow = "rw" },')
REVOKE = BASE.format(bob='  { path = "/grant/**", allow = "r" },')
BROKEN = BASE.format(bob='  { path = "/pub/**", allow = "r" },\n  { path = "/grant/[", allow = "rw" },')
BROKEN_LINE = BROKEN.splitlines().index('  { path = "/grant/[", allow = "rw" },') + 1

TREE = {"pub/readme.md": "public\n", "pub/sub/deep.md": "deep\n", "grant/f.txt": "granted later\n"}


@pytest.fixture(scope="module")
def live(users) -> Iterator[tuple]:
    base = Path(tempfile.mkdtemp(prefix="agentfs-reload-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        ws = make_workspace(base, GOOD)
        build(ws.data_path, TREE, 0)
        with mounted(ws, base / "mnt") as m, Worker(user="agentfs-t2") as bob:
            yield ws, m, bob
    finally:
        shutil.rmtree(base, ignore_errors=True)


def edit(ws, text: str) -> None:
    """Replace the policy file as an editor would (a new file renamed over the old one)."""
    tmp = ws.policy_path.with_name(".agentfs.toml.new")
    tmp.write_text(text)
    os.replace(tmp, ws.policy_path)


def daemon_log(ws) -> str:
    return "".join(p.read_text() for p in sorted(ws.run_path.glob("mount-*.log")))


def refusals(ws) -> int:
    return daemon_log(ws).count("policy not reloaded")


def view(m, bob) -> tuple[bool, bool, bool]:
    """What bob may do now: read /pub, read /grant, write /grant (opens are always checked)."""
    return (bob.call(READ, p=f"{m.path}/pub/readme.md")["ok"], bob.call(READ, p=f"{m.path}/grant/f.txt")["ok"],
            bob.call("os.close(os.open(p, os.O_WRONLY))", p=f"{m.path}/grant/f.txt")["ok"])


VIEWS = {GOOD: (True, False, False), GRANT: (True, True, True), REVOKE: (False, True, False)}


def in_force(ws, m, bob, text: str) -> None:
    """Make `text` the policy and wait until bob's rights show it (each version has its own view)."""
    edit(ws, text)
    wait_for(lambda: view(m, bob) == VIEWS[text], timeout=10, what="the edited policy to take effect")


def test_a_grant_takes_effect_without_remounting(live):
    ws, m, bob = live
    in_force(ws, m, bob, GOOD)
    assert "grant" not in bob.ok(LIST, p=str(m.path))
    edit(ws, GRANT)
    got = wait_for(lambda: bob.call(READ, p=f"{m.path}/grant/f.txt").get("value"), timeout=10,
                   what="bob's new right on /grant")
    assert got == "granted later\n"
    bob.ok("open(p, 'a').write('bob was here\\n')", p=f"{m.path}/grant/f.txt")
    assert (ws.data_path / "grant/f.txt").read_text() == "granted later\nbob was here\n"
    assert "grant" in bob.ok(LIST, p=str(m.path))
    assert m.alive()


def test_a_revocation_takes_effect_even_for_entries_the_kernel_cached(live):
    """/pub is seen alike by every agent, so the kernel may cache it long; a reload must not keep that."""
    ws, m, bob = live
    in_force(ws, m, bob, GOOD)
    for _ in range(3):  # fill the caches: lookups, attributes, a listing
        assert bob.ok("os.stat(p).st_size", p=f"{m.path}/pub/sub/deep.md") == len("deep\n")
        assert bob.ok(LIST, p=f"{m.path}/pub") == ["readme.md", "sub"]
    edit(ws, REVOKE)
    wait_for(lambda: bob.call(READ, p=f"{m.path}/pub/readme.md").get("errno") == "ENOENT", timeout=10,
             what="bob's read of /pub to be refused")
    for what, code, p in (("stat", "os.stat(p).st_size", "pub/sub/deep.md"), ("stat dir", "os.stat(p).st_size", "pub"),
                          ("list", LIST, "pub"), ("read", READ, "pub/sub/deep.md")):
        wait_for(lambda: bob.call(code, p=f"{m.path}/{p}").get("errno") == "ENOENT", timeout=5,
                 what=f"{what} of /{p} to answer ENOENT after the revocation")
    assert "pub" not in bob.ok(LIST, p=str(m.path))
    edit(ws, GOOD)
    wait_for(lambda: bob.call(READ, p=f"{m.path}/pub/readme.md").get("value") == "public\n", timeout=10,
             what="the right to come back")


def test_a_broken_edit_is_refused_logged_and_the_last_good_policy_stays(live):
    ws, m, bob = live
    in_force(ws, m, bob, GRANT)
    before = refusals(ws)
    edit(ws, BROKEN)
    wait_for(lambda: refusals(ws) > before, timeout=10, what="the daemon to log the broken policy")
    line = [ln for ln in daemon_log(ws).splitlines() if "policy not reloaded" in ln][-1]
    assert f"agentfs.toml:{BROKEN_LINE}:" in line and "rules[1]" in line, line
    check = run([AGENTFS, "policy", "check", "-w", str(ws.root)], check=False)
    assert check.returncode != 0 and f"agentfs.toml:{BROKEN_LINE}:" in check.stderr
    # the last good policy (GRANT) is still in force, and the mount still answers
    assert bob.ok(READ, p=f"{m.path}/grant/f.txt").startswith("granted later")
    bob.ok("open(p, 'a').write('still\\n')", p=f"{m.path}/grant/f.txt")
    assert m.answers() and m.alive()
    # a fixed file is picked up again
    edit(ws, GOOD)
    wait_for(lambda: bob.call(READ, p=f"{m.path}/grant/f.txt").get("errno") == "ENOENT", timeout=10,
             what="the repaired policy to take effect")


def test_sighup_reloads_at_once(live):
    ws, m, bob = live
    in_force(ws, m, bob, GOOD)
    before = refusals(ws)
    edit(ws, BROKEN)
    wait_for(lambda: refusals(ws) == before + 1, timeout=10, what="the poller to refuse the broken file")
    # polling never retries an unchanged broken file; only SIGHUP makes the daemon read it again
    os.kill(m.pid, signal.SIGHUP)
    wait_for(lambda: refusals(ws) == before + 2, timeout=10, what="SIGHUP to re-read the policy")
    text = GRANT
    edit(ws, text)
    os.kill(m.pid, signal.SIGHUP)
    wait_for(lambda: bob.call(READ, p=f"{m.path}/grant/f.txt").get("ok"), timeout=10, what="the SIGHUP reload")
    assert m.alive()
    logged = re.findall(r"policy reloaded from \S+", daemon_log(ws))
    assert logged and str(ws.policy_path) in logged[-1]
    # reloads (and the kernel cache invalidation after each) left no internal error behind
    assert "Traceback" not in daemon_log(ws) and "internal error" not in daemon_log(ws)
