"""Where the benchmark runs: a native directory and agentfs mounts beside it.

Every target lives under one base directory, so the native directory and the
workspaces' data trees are on the same filesystem and the ratios measure
agentfs, not a difference of disks. Mounts are made and removed with the
real `agentfs mount` / `agentfs umount`, as an operator would.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

OPEN_POLICY = """\
[workspace]
default_agent = "anyone"

[agents.anyone]
rules = [{ path = "/**", allow = "rwcdl" }]
"""

AGENTFS = str(Path(sys.executable).with_name("agentfs"))


@dataclass
class Target:
    """One place the workloads run in; `root` is where they write."""

    name: str
    kind: str  # "native" | "mount"
    root: Path
    policy_text: str | None = None
    mount_args: list[str] = field(default_factory=list)
    workspace: Path | None = None
    pid: int | None = None
    code: Path | None = None  # a source tree the daemon imports agentfs from (A/B of a change)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "mount_args": self.mount_args,
                "policy_lines": None if self.policy_text is None else len(self.policy_text.splitlines()),
                "code": None if self.code is None else str(self.code)}


def native(base: Path) -> Target:
    return Target("native", "native", base / "native")


def mount_target(base: Path, name: str, policy_text: str = OPEN_POLICY, mount_args: list[str] | None = None
                 ) -> Target:
    return Target(name, "mount", base / f"mnt-{name}", policy_text, list(mount_args or []), base / f"ws-{name}")


def start(t: Target) -> None:
    """Make the directory, or the workspace and its mount; returns once it answers."""
    if t.kind == "native":
        t.root.mkdir(parents=True, exist_ok=True)
        os.chmod(t.root, 0o777)
        return
    from agentfs.workspace import init_workspace

    assert t.workspace is not None and t.policy_text is not None
    init_workspace(t.workspace, t.policy_text)
    t.root.mkdir(parents=True, exist_ok=True)
    env = None
    if t.code is not None:
        # The daemon (and its commit helper) inherit it, so they run that tree's code.
        env = {**os.environ, "PYTHONPATH": str(t.code)}
    r = subprocess.run([AGENTFS, "mount", *t.mount_args, str(t.workspace), str(t.root)],
                       capture_output=True, text=True, timeout=60, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"mount of {t.name} failed: {(r.stderr or r.stdout).strip()}")
    pids = re.findall(r"\d+", r.stdout)
    t.pid = int(pids[-1]) if pids else None
    os.stat(t.root)


def stop(t: Target) -> None:
    """Unmount (lazily if busy) and wait for the daemon to exit; never raises."""
    if t.kind != "mount" or t.pid is None:
        return
    r = subprocess.run([AGENTFS, "umount", str(t.root)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        subprocess.run(["fusermount3", "-u", "-z", str(t.root)], capture_output=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(t.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(t.pid, signal.SIGKILL)
    t.pid = None


def _stat_fields(stat_path: str) -> list[str] | None:
    """The fields of a /proc .../stat file after the command name (utime is [11], stime [12])."""
    try:
        return Path(stat_path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _cpu_ticks(pid: int) -> int | None:
    f = _stat_fields(f"/proc/{pid}/stat")
    return None if f is None else int(f[11]) + int(f[12])  # utime + stime, all threads


def _family_ticks(pid: int) -> tuple[int | None, ...]:
    """CPU ticks of a daemon and of its children (the audit's commit helper works there)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids += [int(k) for k in task.read_text().split()]
        except OSError:
            pass
    return tuple(_cpu_ticks(p) for p in [pid, *sorted(kids)])


def quiesce(tgts: list[Target], idle_s: float = 0.3, timeout: float = 60.0) -> float:
    """Wait until no daemon uses CPU (e.g. still hashing a file written earlier); returns the wait.

    Work a daemon does after the caller is answered (content hashes at close,
    audit commits) must neither land in the next target's timing nor be lost
    from this one's: it is waited for, untimed, and the wait is reported.
    """
    pids = [t.pid for t in tgts if t.pid]
    t0 = time.monotonic()
    last = [_family_ticks(p) for p in pids]
    while time.monotonic() - t0 < timeout:
        time.sleep(idle_s)
        now = [_family_ticks(p) for p in pids]
        if now == last:
            break
        last = now
    return time.monotonic() - t0 - idle_s


def family_cpu_s(t: Target) -> float | None:
    """CPU seconds a mount's daemon and its children have used so far (None for native)."""
    if t.pid is None:
        return None
    return sum(x or 0 for x in _family_ticks(t.pid)) / os.sysconf("SC_CLK_TCK")


def loop_user_s(t: Target) -> float | None:
    """User CPU seconds of a daemon's main thread so far: its FUSE loop, where every request's Python runs."""
    f = None if t.pid is None else _stat_fields(f"/proc/{t.pid}/task/{t.pid}/stat")
    return None if f is None else int(f[11]) / os.sysconf("SC_CLK_TCK")


def remove_base(base: Path) -> None:
    """Delete the benchmark's files, refusing while any mount under it is still live."""
    live = [line.split(" ")[1] for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split(" ")[1].startswith(str(base))]
    if live:
        raise RuntimeError(f"not removing {base}: still mounted: {', '.join(live)}")
    shutil.rmtree(base, ignore_errors=True)
