"""Running it as infrastructure: status, stale mounts, systemd units, the demo."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from agentfs.fuse.mounting import is_stale
from conftest import AGENTFS, OPEN_POLICY, make_workspace, mounted, run, wait_for

REPO = Path(__file__).resolve().parents[1]


def status(ws) -> tuple[int, dict]:
    r = run([AGENTFS, "status", "-w", str(ws.root), "--json"], check=False)
    return r.returncode, json.loads(r.stdout)


def test_status_healthy_then_dead_daemon_then_recovered(ws, workdir):
    mnt = workdir / "mnt"
    with mounted(ws, mnt) as m:
        (mnt / "f").write_text("x")
        rc, st = status(ws)
        assert rc == 0 and st["healthy"] is True
        [entry] = st["mounts"]
        assert entry["mountpoint"] == str(mnt) and entry["daemon_alive"] and entry["pid"] == m.pid
        assert st["audit"]["head_seq"] >= 1
        assert any(a["agent"] == "anyone" for a in st["agents_recent"])
        human = run([AGENTFS, "status", "-w", str(ws.root)])
        assert str(mnt) in human.stdout and "ok" in human.stdout

        os.kill(m.pid, signal.SIGKILL)
        wait_for(lambda: not m.alive(), what="daemon death")
        assert is_stale(mnt)
        rc, st = status(ws)
        assert rc == 1 and st["healthy"] is False
        assert "agentfs mount" in st["mounts"][0]["problem"]
        human = run([AGENTFS, "status", "-w", str(ws.root)], check=False)
        assert human.returncode == 1 and "stale" in human.stdout

        with mounted(ws, mnt) as m2:
            assert (mnt / "f").read_text() == "x"
            rc, st = status(ws)
            assert rc == 0 and st["mounts"][0]["pid"] == m2.pid


def test_status_tells_how_to_remount_a_dedicated_mount_with_its_agent(workdir):
    ws = make_workspace(workdir, OPEN_POLICY + '\n[agents.solo]\nrules = [{ path = "/**", allow = "r" }]\n')
    mnt = workdir / "mnt"
    with mounted(ws, mnt, "--agent", "solo") as m:
        os.kill(m.pid, signal.SIGKILL)
        wait_for(lambda: not m.alive(), what="daemon death")
        rc, st = status(ws)
        problem = st["mounts"][0]["problem"]
        cmd = shlex.split(problem.split("`")[1])
        assert cmd[:2] == ["agentfs", "mount"] and cmd[-2:] == ["--agent", "solo"], problem
        r = run([AGENTFS, *cmd[1:]], check=False)
        assert r.returncode == 0, r.stderr
        try:
            who = json.loads(run([AGENTFS, "whoami", "--json", str(mnt)]).stdout)
            assert who["agent"] == "solo"
        finally:
            run(["fusermount3", "-u", str(mnt)], check=False)


def test_install_units_json_names_the_files(tmp_path):
    dest = tmp_path / "units-json"
    got = json.loads(run([AGENTFS, "install-units", "--json", "--dest", str(dest)]).stdout)
    assert got == {"installed": [str(dest / "agentfs@.service"), str(dest / "agentfs-index@.service")],
                   "systemd_reloaded": False}
    assert all(Path(p).read_text() == (REPO / "systemd" / Path(p).name).read_text() for p in got["installed"])


def test_units_pass_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    dest = tmp_path / "units"
    run([AGENTFS, "install-units", "--dest", str(dest)])
    for name in ("agentfs@.service", "agentfs-index@.service"):
        assert (dest / name).read_text() == (REPO / "systemd" / name).read_text()
        shutil.copyfile(dest / name, tmp_path / name.replace("@.", "@demo."))
    r = run(["systemd-analyze", "verify", str(tmp_path / "agentfs@demo.service"),
             str(tmp_path / "agentfs-index@demo.service")], check=False)
    assert r.returncode == 0, r.stderr


def test_units_start_and_stop_under_systemd(workdir):
    if not Path("/run/systemd/system").is_dir():
        pytest.skip("systemd is not PID 1 on this machine: units can be verified but not started")
    name = f"agentfs-test-{os.getpid()}"
    ws_dir = Path("/srv/agentfs") / name
    run([AGENTFS, "init", str(ws_dir)])
    run([AGENTFS, "install-units"])
    try:
        run(["systemctl", "start", f"agentfs@{name}"])
        assert os.path.ismount(f"/mnt/agentfs/{name}")
        run(["systemctl", "stop", f"agentfs@{name}"])
        assert not os.path.ismount(f"/mnt/agentfs/{name}")
    finally:
        subprocess.run(["systemctl", "stop", f"agentfs@{name}"], capture_output=True)
        shutil.rmtree(ws_dir, ignore_errors=True)


def test_demo_shows_refusal_lock_audit_and_search(workdir):
    demo_dir = workdir / "demo"
    env = dict(os.environ, AGENTFS_DEMO_DIR=str(demo_dir), AGENTFS_SKIP_SETUP="1")
    try:
        r = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], env=env, capture_output=True,
                           text=True, timeout=300)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-3000:]
        assert "Permission denied" in out and "refused" in out
        assert "waiting" in out and "for the lock" in out
        assert "EACCES" in out and "unlock" in out
        assert "chain correctly" in out
        assert "01-upload-retries.md -> ../../research/upload-retries.md" in out
    finally:
        mnt = demo_dir / "mnt"
        if os.path.ismount(mnt) or is_stale(mnt):
            subprocess.run([AGENTFS, "umount", "--lazy", str(mnt)], capture_output=True)
        pidfile = demo_dir / "index.pid"
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass


def test_kernel_version_gate_reads_release_strings():
    from agentfs.fuse.ops_files import _kernel_at_least

    assert _kernel_at_least(6, 18, "6.18.44-fc-v657")
    assert _kernel_at_least(6, 18, "7.0.1")
    assert not _kernel_at_least(6, 18, "6.8.0-45-generic")
    assert not _kernel_at_least(6, 18, "6.1.0-28-amd64")
    assert not _kernel_at_least(6, 18, "weird")
