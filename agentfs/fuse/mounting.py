"""Mounting and unmounting from the outside: checks, daemon start, stale mounts.

Kept apart from the daemon so that the CLI, tests and systemd all start and
stop mounts the same way.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from agentfs.errors import MountError
from agentfs.fuse.daemon import pidfile_for
from agentfs.workspace import Workspace, mounts_of_agentfs

READY_TIMEOUT = 30.0


def mount_entry(mountpoint: Path) -> str | None:
    """The fsname mounted at `mountpoint`, or None."""
    target = str(mountpoint)
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        f = line.split(" ")
        if len(f) > 2 and f[1].replace("\\040", " ") == target:
            found = f[0]
    return found


def is_stale(mountpoint: Path) -> bool:
    """A FUSE mount whose daemon is gone answers ENOTCONN ("Transport endpoint is not connected")."""
    try:
        os.statvfs(mountpoint)  # never answered from the kernel's attribute cache
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def force_unmount(mountpoint: Path) -> None:
    """Detach a dead or stuck mount (lazy unmount)."""
    for cmd in (["fusermount3", "-u", "-z", str(mountpoint)], ["umount", "-l", str(mountpoint)]):
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return


def check_mountpoint(mountpoint: Path) -> None:
    """Refuse, in one line each, what would make a mount fail or hide files."""
    if mount_entry(mountpoint) is not None:
        if is_stale(mountpoint):
            force_unmount(mountpoint)
        else:
            raise MountError(f"{mountpoint} is already mounted: unmount it first (`agentfs umount {mountpoint}`)")
    if not mountpoint.exists():
        raise MountError(f"mountpoint {mountpoint} does not exist: create it with `mkdir -p {mountpoint}`")
    if not mountpoint.is_dir():
        raise MountError(f"mountpoint {mountpoint} is not a directory: choose an empty directory")
    if any(mountpoint.iterdir()):
        raise MountError(f"mountpoint {mountpoint} is not empty: choose an empty directory")


def mount(ws: Workspace, mountpoint: Path, agent: str | None = None, foreground: bool = False,
          bare: bool = False, debug: bool = False, disable: tuple[str, ...] = ()) -> int | None:
    """Mount `ws` on `mountpoint`; returns the daemon pid once the mount answers."""
    mountpoint = Path(os.path.abspath(mountpoint))
    if os.geteuid() != 0:
        raise MountError("agentfs mount must run as root: the daemon is the security boundary and serves other users")
    check_mountpoint(mountpoint)
    args = [str(ws.root), str(mountpoint)]
    if agent:
        args += ["--agent", agent]
    if bare:
        args.append("--bare")
    if debug:
        args.append("--debug")
    if disable:
        args += ["--disable", ",".join(disable)]
    if foreground:
        from agentfs.fuse.daemon import main as daemon_main

        rc = daemon_main(args)
        if rc:
            raise MountError(f"the mount of {mountpoint} ended with an error (status {rc})")
        return None
    r, w = os.pipe()
    log_file = ws.run_path / f"{pidfile_for(ws, mountpoint).stem}.log"
    # `-P` and cwd "/": `python -m` would otherwise import from the caller's
    # folder (a root daemon running code an agent left there), and the daemon
    # would keep that folder's filesystem busy.
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "agentfs.fuse.daemon", *args, "--ready-fd", str(w), "--log-file",
         str(log_file)],
        cwd="/", pass_fds=(w,), start_new_session=True, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
    )
    os.close(w)
    try:
        line = _read_line(r, READY_TIMEOUT)
    finally:
        os.close(r)
    if line == "READY":
        return proc.pid
    if proc.poll() is None:
        proc.kill()
    msg = line[6:] if line.startswith("ERROR") else f"the daemon did not start (see {log_file})"
    raise MountError(msg)


def _read_line(fd: int, timeout: float) -> str:
    import select

    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return ""
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return ""
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").strip()


def daemon_pid(ws: Workspace, mountpoint: Path) -> int | None:
    try:
        return int(json.loads(pidfile_for(ws, mountpoint).read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def umount(mountpoint: Path, lazy: bool = False, timeout: float = 30.0) -> None:
    """Unmount and wait for the daemon to finish writing its state."""
    mountpoint = Path(os.path.abspath(mountpoint))
    ws_root = next((ws for mnt, ws in mounts_of_agentfs() if mnt == mountpoint), None)
    if ws_root is None:
        raise MountError(f"{mountpoint} is not an agentfs mount")
    pid = None
    try:
        pid = daemon_pid(Workspace(ws_root), mountpoint)
    except OSError:
        pass
    if is_stale(mountpoint):
        force_unmount(mountpoint)
        return
    cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [str(mountpoint)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        err = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "fusermount3 failed"
        if "busy" in err.lower():
            raise MountError(f"{mountpoint} is busy (open files or a shell inside it): close them, or use --lazy")
        raise MountError(f"cannot unmount {mountpoint}: {err}")
    if pid:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)
