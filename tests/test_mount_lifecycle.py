"""Mounting and unmounting through the CLI: the happy path and every refusal in one clear line."""

from __future__ import annotations

import json
import os
from pathlib import Path

from agentfs.fuse.mounting import is_stale
from conftest import AGENTFS, mounted, run, wait_for


def test_mount_serves_the_data_tree_and_umount_stops_the_daemon(ws, workdir):
    (ws.data_path / "hello.txt").write_text("from the backing tree\n")
    mnt = workdir / "mnt"
    with mounted(ws, mnt) as m:
        assert (mnt / "hello.txt").read_text() == "from the backing tree\n"
        (mnt / "new.txt").write_text("through the mount\n")
        assert (ws.data_path / "new.txt").read_text() == "through the mount\n"
        fsname = [line.split()[0] for line in Path("/proc/self/mounts").read_text().splitlines()
                  if line.split()[1] == str(mnt)]
        assert fsname == [f"agentfs:{ws.root}"]
        run([AGENTFS, "umount", str(mnt)])
        assert not os.path.ismount(mnt)
        wait_for(lambda: not m.alive(), what="daemon exit after umount")


def test_the_daemon_runs_from_slash_and_never_imports_from_the_callers_cwd(ws, workdir):
    """Root may run `agentfs mount` anywhere, even in a folder an agent wrote: nothing there runs."""
    trap = workdir / "cwd"
    (trap / "agentfs" / "fuse").mkdir(parents=True)
    marker = workdir / "imported-from-cwd"
    (trap / "agentfs" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (trap / "agentfs" / "fuse" / "__init__.py").write_text("")
    mnt = workdir / "mnt"
    mnt.mkdir()
    r = run([AGENTFS, "mount", str(ws.root), str(mnt)], cwd=trap, check=False)
    try:
        assert r.returncode == 0, r.stderr
        pid = int(r.stdout.strip().rsplit(" ", 1)[-1].rstrip(")"))
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        assert not marker.exists()
    finally:
        run(["fusermount3", "-u", str(mnt)], check=False)


def test_second_mount_on_same_mountpoint_is_one_clear_line(mount):
    r = run([AGENTFS, "mount", str(mount.ws.root), str(mount.path)], check=False)
    assert r.returncode != 0
    assert "already mounted" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert mount.answers()


def test_missing_workspace_is_one_clear_line(workdir):
    (workdir / "mnt").mkdir()
    r = run([AGENTFS, "mount", str(workdir / "nope"), str(workdir / "mnt")], check=False)
    assert r.returncode != 0 and "agentfs init" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_mountpoint_not_empty_or_not_a_directory_or_missing(ws, workdir):
    full = workdir / "full"
    full.mkdir()
    (full / "x").write_text("x")
    afile = workdir / "afile"
    afile.write_text("x")
    for target, words in ((full, "not empty"), (afile, "not a directory"), (workdir / "missing", "does not exist")):
        r = run([AGENTFS, "mount", str(ws.root), str(target)], check=False)
        assert r.returncode != 0, target
        assert words in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_umount_of_something_else_is_refused(workdir):
    r = run([AGENTFS, "umount", str(workdir)], check=False)
    assert r.returncode != 0 and "not an agentfs mount" in r.stderr


def test_stale_mount_is_recovered_by_mounting_again(ws, workdir):
    mnt = workdir / "mnt"
    with mounted(ws, mnt) as m:
        os.kill(m.pid, 9)
        wait_for(lambda: not m.alive(), what="daemon death")
        assert is_stale(mnt), "a killed daemon should leave ENOTCONN behind"
        with mounted(ws, mnt) as m2:
            assert m2.answers()


def test_init_policy_check_mount_and_umount_speak_json(workdir):
    """--json everywhere: a script can drive a workspace's life without parsing prose."""
    made = json.loads(run([AGENTFS, "init", "--json", str(workdir / "jws")]).stdout)
    ws = made["workspace"]
    assert made == {"workspace": ws, "policy": f"{ws}/agentfs.toml", "data": f"{ws}/data",
                    "state_db": f"{ws}/state/state.db"}
    assert Path(made["policy"]).is_file() and Path(made["data"]).is_dir()
    checked = json.loads(run([AGENTFS, "policy", "check", "--json", "-w", ws]).stdout)
    assert checked == {"ok": True, "policy": made["policy"], "agents": ["nobody"], "rules": 0}
    mnt = workdir / "jmnt"
    mnt.mkdir()
    up = json.loads(run([AGENTFS, "mount", "--json", ws, str(mnt)]).stdout)
    try:
        assert (up["workspace"], up["mountpoint"], up["agent"]) == (ws, str(mnt), None)
        os.kill(up["pid"], 0)  # the daemon it names is alive
        assert Path(f"/proc/{up['pid']}/cmdline").read_bytes().count(b"agentfs") >= 1
    finally:
        down = json.loads(run([AGENTFS, "umount", "--json", str(mnt)]).stdout)
    assert down == {"mountpoint": str(mnt), "unmounted": True, "lazy": False}
    assert not os.path.ismount(mnt)
