"""What `agentfs status` reports: the health of a workspace's mounts and sidecar.

Gathered from the kernel's mount table, the daemons' pid files, and the
state database; a dead daemon or a stale mount makes the report unhealthy
and says how to recover.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

from agentfs.fuse.mounting import is_stale
from agentfs.workspace import Workspace, mounts_of_agentfs

RECENT_SECONDS = 3600


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mounts(ws: Workspace) -> list[dict[str, Any]]:
    """Every mount of `ws`: from the kernel's table and from the daemons' pid files."""
    seen: dict[str, dict[str, Any]] = {}
    for mnt, root in mounts_of_agentfs():
        if root == ws.root:
            seen[str(mnt)] = {"mountpoint": str(mnt), "mounted": True, "pid": None, "agent": None}
    for pidfile in sorted(ws.run_path.glob("mount-*.json")):
        try:
            info = json.loads(pidfile.read_text())
        except (OSError, ValueError):
            continue
        entry = seen.setdefault(info["mountpoint"], {"mountpoint": info["mountpoint"], "mounted": False})
        entry.update(pid=info.get("pid"), agent=info.get("agent"), started=info.get("started"),
                     bare=bool(info.get("bare")))
    for entry in seen.values():
        pid = entry.get("pid")
        entry["daemon_alive"] = bool(pid) and _alive(pid)
        entry["stale"] = entry["mounted"] and is_stale(Path(entry["mountpoint"]))
        if entry["stale"] or (entry["mounted"] and not entry["daemon_alive"]):
            entry["problem"] = (f"stale mount (daemon gone): run `{_remount(ws, entry)}` "
                                f"to recover it, or `agentfs umount --lazy {shlex.quote(entry['mountpoint'])}`")
        elif not entry["mounted"] and entry["daemon_alive"]:
            entry["problem"] = "daemon alive but not mounted: stop it, then mount again"
    return list(seen.values())


def _remount(ws: Workspace, entry: dict[str, Any]) -> str:
    """The command that mounts it again as it was: a dedicated mount keeps its agent."""
    cmd = ["agentfs", "mount", str(ws.root), entry["mountpoint"]]
    if entry.get("agent"):
        cmd += ["--agent", entry["agent"]]
    if entry.get("bare"):
        cmd.append("--bare")
    return shlex.join(cmd)


def gather(ws: Workspace) -> dict[str, Any]:
    from agentfs.core.audit_chain import head
    from agentfs.core.locks import list_locks
    from agentfs.store import audit_log, db

    out: dict[str, Any] = {"workspace": str(ws.root), "mounts": mounts(ws)}
    conn = db.connect(ws)
    try:
        since = time.time_ns() - RECENT_SECONDS * 1_000_000_000
        rows = audit_log.recent_agents(conn, since)
        out["agents_recent"] = [{"agent": a, "records": n, "last": _iso(ts)} for a, n, ts in rows]
        first, last, count = audit_log.live_bounds(conn)
    finally:
        conn.close()
    seq, digest = head(ws)
    out["audit"] = {"head_seq": seq, "head_hash": digest, "live_records": count,
                    "db_bytes": ws.state_db.stat().st_size if ws.state_db.exists() else 0}
    out["locks"] = [lk.to_json() for lk in list_locks(ws)]
    try:
        from agentfs.search.client import index_status

        out["index"] = index_status(ws)
    except Exception as e:  # status must report, not crash, when search is broken
        out["index"] = {"running": False, "error": str(e)}
    out["healthy"] = not any(m.get("problem") for m in out["mounts"])
    return out


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))
