"""The mount daemon: wires the operations, the governor and pyfuse3's loop.

`agentfs mount` runs this in a child process (or in the foreground); it
reports readiness through a pipe and, under systemd, with sd_notify, so the
parent returns only once the mount answers. SIGTERM/SIGINT unmount cleanly;
SIGHUP reloads the policy.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from agentfs.errors import AgentfsError, MountError
from agentfs.workspace import FSNAME_PREFIX, Workspace

log = logging.getLogger(__name__)

MAX_WORKERS = 1024
READAHEAD_KIB = 1024


@dataclass
class MountSpec:
    workspace: Workspace
    mountpoint: Path
    agent: str | None = None
    bare: bool = False
    debug: bool = False
    disable: frozenset[str] = frozenset()


def mount_options(spec: MountSpec) -> set[str]:
    ws = str(spec.workspace.root)
    if "," in ws:
        raise MountError(f"workspace path {ws} contains a comma, which FUSE options cannot carry: move it")
    opts = {f"fsname={FSNAME_PREFIX}{ws}", "subtype=agentfs", "allow_other", "default_permissions",
            "nodev", "nosuid"}
    if spec.debug:
        opts.add("debug")
    return opts


def pidfile_for(ws: Workspace, mountpoint: Path) -> Path:
    import hashlib

    h = hashlib.sha256(str(mountpoint).encode()).hexdigest()[:16]
    return ws.run_path / f"mount-{h}.json"


def _raise_fd_limit() -> int:
    """Every inode the kernel knows may pin a descriptor, as in passthrough_hp; returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def inode_fd_budget(limit: int) -> int:
    """Descriptors the inode table may hold: the rest is for open files, SQLite, sockets."""
    return max(256, int(limit * 0.6))


def set_readahead(mountpoint: Path, kib: int = READAHEAD_KIB) -> None:
    """Let the kernel read ahead 1 MiB at a time instead of 128 KiB.

    Sequential reads then reach the daemon in 1 MiB requests, an eighth of
    the round trips. Found through /proc/self/mountinfo: stat-ing the
    mountpoint before the loop runs would deadlock, and the kernel sets its
    own value when it hears our INIT reply, so this runs after that.
    """
    target = str(mountpoint)
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            f = line.split(" ")
            if len(f) > 4 and f[4].replace("\\040", " ") == target:
                Path(f"/sys/class/bdi/{f[2]}/read_ahead_kb").write_text(str(kib))
                return
    except OSError as e:
        log.info("read-ahead left at the kernel's default: %s", e)


def sd_notify(message: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError as e:
        log.warning("sd_notify failed: %s", e)


def build_governor(spec: MountSpec) -> Any:
    """The core behind this mount; the bare pass-through when asked (benchmarks)."""
    from agentfs.core.governor import OpenGovernor

    if spec.bare:
        return OpenGovernor()
    try:
        from agentfs.core.rules import WorkspaceGovernor
    except ImportError:
        return OpenGovernor()
    return WorkspaceGovernor(spec.workspace, mount_agent=spec.agent, disable=spec.disable)


def build_virtual(spec: MountSpec, gov: Any) -> Any:
    if spec.bare:
        return None
    try:
        from agentfs.fuse.virtual import VirtualTree
    except ImportError:
        return None
    return VirtualTree(spec.workspace, gov, mount_agent=spec.agent)


def serve(spec: MountSpec, ready_fd: int | None = None) -> int:
    """Mount and serve until unmounted or signalled; returns an exit status."""
    from agentfs.fuse.inodes import FdCloser, InodeTable
    from agentfs.fuse.operations import Operations

    os.umask(0)
    fd_limit = _raise_fd_limit()
    ws = spec.workspace
    root_fd = os.open(ws.data_path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    gov = build_governor(spec)
    closer = FdCloser()
    inodes = InodeTable(root_fd, max_fds=inode_fd_budget(fd_limit), close=closer)
    ops = Operations(root_fd, gov, build_virtual(spec, gov), inodes=inodes)
    try:
        pyfuse3.init(ops, str(spec.mountpoint), mount_options(spec))
    except RuntimeError as e:
        _report(ready_fd, f"ERROR cannot mount {spec.mountpoint}: {e}")
        return 1
    pidfile = pidfile_for(ws, spec.mountpoint)
    pidfile.write_text(json.dumps({"pid": os.getpid(), "mountpoint": str(spec.mountpoint),
                                   "agent": spec.agent, "bare": spec.bare, "started": time.time()}))
    status = 0
    try:
        trio.run(_main, ops, gov, ready_fd, spec.mountpoint)
    except BaseException:
        log.exception("the FUSE loop failed")
        status = 1
    finally:
        try:
            pyfuse3.close(unmount=True)
        except Exception:
            log.exception("unmounting failed")
        ops.inodes.close_all()
        closer.stop()
        pidfile.unlink(missing_ok=True)
    return status


def _report(ready_fd: int | None, line: str) -> None:
    if ready_fd is None:
        if line.startswith("ERROR"):
            print(line[6:], file=sys.stderr)
        return
    try:
        os.write(ready_fd, (line + "\n").encode())
        os.close(ready_fd)
    except OSError:
        pass


async def _main(ops: Any, gov: Any, ready_fd: int | None, mountpoint: Path) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(gov.run)
        nursery.start_soon(_signals, gov, nursery.cancel_scope)
        nursery.start_soon(_ready, mountpoint, ready_fd)
        # Requests blocked on another agent's lock hold a worker until they
        # time out; a high ceiling keeps the rest of the daemon answering.
        await pyfuse3.main(min_tasks=4, max_tasks=MAX_WORKERS)
        nursery.cancel_scope.cancel()
    await gov.aclose()


async def _ready(mountpoint: Path, ready_fd: int | None) -> None:
    """Say "ready" once the mount answers, and tune what the kernel set at INIT."""
    try:
        # Returns only after our loop has answered the kernel's INIT.
        await trio.to_thread.run_sync(os.statvfs, str(mountpoint))
    except OSError as e:
        log.error("the new mount does not answer: %s", e)
        _report(ready_fd, f"ERROR the new mount of {mountpoint} does not answer: {e.strerror}")
        pyfuse3.terminate()
        return
    set_readahead(mountpoint)
    _report(ready_fd, "READY")
    sd_notify("READY=1")


async def _signals(gov: Any, scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
        async for sig in sigs:
            if sig == signal.SIGHUP:
                reload = getattr(gov, "reload", None)
                if reload is not None:
                    reload()
                continue
            log.info("signal %s: unmounting", signal.Signals(sig).name)
            sd_notify("STOPPING=1")
            pyfuse3.terminate()
            return


def main(argv: list[str] | None = None) -> int:
    """Entry of the daemon child process started by `agentfs mount`."""
    import argparse

    ap = argparse.ArgumentParser(prog="agentfs-daemon")
    ap.add_argument("workspace")
    ap.add_argument("mountpoint")
    ap.add_argument("--agent")
    ap.add_argument("--bare", action="store_true")
    ap.add_argument("--debug", action="store_true")
    ap.add_argument("--disable", default="")
    ap.add_argument("--ready-fd", type=int)
    ap.add_argument("--log-file")
    a = ap.parse_args(argv)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if a.log_file:
        handlers = [logging.FileHandler(a.log_file)]
    logging.basicConfig(level=logging.DEBUG if a.debug else logging.INFO, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        disable = frozenset(x for x in a.disable.split(",") if x)
        spec = MountSpec(Workspace.open(a.workspace), Path(a.mountpoint), a.agent, a.bare, a.debug, disable)
        return serve(spec, a.ready_fd)
    except AgentfsError as e:
        # A problem the user can fix: its one line reaches whoever started us
        # (_report); the log file keeps it too, without a traceback.
        _report(a.ready_fd, f"ERROR {e}")
        if a.log_file:
            log.error("daemon failed to start: %s", e)
        return 1
    except Exception as e:
        _report(a.ready_fd, f"ERROR {e}")
        log.exception("daemon failed to start")
        return 1


if __name__ == "__main__":
    sys.exit(main())
