"""`agentfs status` and `agentfs whoami`."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from agentfs.cli._common import (echo_json, explicit_workspace, mount_of_workspace, path_on_mount,
                                 resolve_workspace, same_workspace, workspace_option)
from agentfs.errors import AgentfsError
from agentfs.workspace import mount_containing


@click.command("status")
@workspace_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def status_cmd(workspace_opt: str | None, as_json: bool) -> None:
    """Mounts and daemons, agents seen, locks, audit head, index freshness.

    Exits 1 if a daemon is dead or a mount is stale, and says how to recover.
    """
    from agentfs.status import gather

    ws = resolve_workspace(workspace_opt)
    st = gather(ws)
    if as_json:
        echo_json(st)
        sys.exit(0 if st["healthy"] else 1)
    click.echo(f"workspace  {st['workspace']}")
    if not st["mounts"]:
        click.echo("mounts     none (mount with `agentfs mount WS MNT`)")
    for m in st["mounts"]:
        who = f" agent={m['agent']}" if m.get("agent") else ""
        state = "ok" if not m.get("problem") else "PROBLEM"
        click.echo(f"mount      {m['mountpoint']}  daemon pid {m.get('pid')}{who}  {state}")
        if m.get("problem"):
            click.echo(f"           {m['problem']}")
    agents = ", ".join(f"{a['agent']} ({a['records']})" for a in st["agents_recent"]) or "none"
    click.echo(f"agents     seen in the last hour: {agents}")
    click.echo(f"locks      {len(st['locks'])} held" + "".join(
        f"\n           {lk['mode']} {lk['path']} by {lk['agent']} (ttl {lk['ttl']} s, token {lk['token']})"
        for lk in st["locks"]))
    a = st["audit"]
    click.echo(f"audit      {a['live_records']} records, head {a['head_seq']}:{a['head_hash'][:16]}…, "
               f"state db {a['db_bytes'] / 1e6:.1f} MB")
    ix = st["index"]
    if ix.get("running"):
        click.echo(f"index      sidecar running ({ix.get('mode')}): {ix.get('files')} files, {ix.get('chunks')} chunks, "
                   f"{ix.get('pending', 0)} pending, {ix.get('skipped_binary', 0)} binary skipped, "
                   f"last indexed {_when(ix.get('last_indexed'))}")
    else:
        click.echo(f"index      sidecar not running ({ix.get('files', 0)} files indexed, "
                   f"last {_when(ix.get('last_indexed'))}): "
                   f"start it with `agentfs index -w {st['workspace']}`")
    sys.exit(0 if st["healthy"] else 1)


def _when(t: float | None) -> str:
    """A local time for a person (the JSON keeps the epoch seconds)."""
    if not t:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


@click.command("whoami")
@click.argument("path", required=False, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@workspace_option
def whoami_cmd(path: str | None, as_json: bool, workspace_opt: str | None) -> None:
    """Which agent the mount sees this process as (reads MOUNT/.agentfs/whoami).

    PATH is any path on the mount (default: the current directory, else,
    with -w WS, the mount of WS).
    """
    if path is not None:
        path = path_on_mount(path, workspace_opt)
    here = Path(os.path.abspath(path or "."))
    found = mount_containing(here)
    ws = explicit_workspace(workspace_opt)
    if path is None and found is None and not ws:
        ws = os.environ.get("AGENTFS_WORKSPACE")
    if path is None and ws and (found is None or not same_workspace(found[1], ws)):
        found = (mount_of_workspace(ws), Path(ws))
    if found is None:
        raise AgentfsError(f"{here} is not on an agentfs mount: cd into one, give a path on it, or pass -w WS")
    mnt = found[0]
    try:
        text = (mnt / ".agentfs" / "whoami").read_text()
    except OSError as e:
        raise AgentfsError(f"cannot read {mnt}/.agentfs/whoami: {e.strerror}") from None
    if as_json:
        fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
        for k in ("uid", "gid", "pid", "session"):
            if k in fields:
                fields[k] = int(fields[k])
        fields["mountpoint"] = str(mnt)
        echo_json(fields)
    else:
        click.echo(text, nl=False)


COMMANDS = [status_cmd, whoami_cmd]
