"""`agentfs mount`, `agentfs umount`."""

from __future__ import annotations

from pathlib import Path

import click

from agentfs.cli._common import echo_json
from agentfs.fuse import mounting
from agentfs.workspace import Workspace


@click.command("mount")
@click.argument("workspace", type=click.Path(file_okay=False))
@click.argument("mountpoint", type=click.Path())
@click.option("--agent", metavar="NAME", help="Dedicate the mount to one agent: every request on it is that agent.")
@click.option("--foreground", "-f", is_flag=True, help="Stay attached (logs to stderr) instead of daemonising.")
@click.option("--bare", is_flag=True, hidden=True, help="No policy, locks or audit (benchmark baseline).")
@click.option("--debug", is_flag=True, help="Log every FUSE request.")
@click.option("--disable", "disable", multiple=True, hidden=True,
              type=click.Choice(["audit", "locks", "policy"]),
              help="Switch one part off to measure its cost (benchmarks only).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object once mounted: workspace, mountpoint, pid.")
def mount_cmd(workspace: str, mountpoint: str, agent: str | None, foreground: bool, bare: bool, debug: bool,
              disable: tuple[str, ...], as_json: bool) -> None:
    """Mount WORKSPACE on MOUNTPOINT (an empty directory)."""
    ws = Workspace.open(workspace)
    pid = mounting.mount(ws, Path(mountpoint), agent=agent, foreground=foreground, bare=bare, debug=debug,
                         disable=disable)
    if pid is not None and as_json:
        echo_json({"workspace": str(ws.root), "mountpoint": str(Path(mountpoint).resolve()), "agent": agent,
                   "pid": pid})
    elif pid is not None:
        who = f" for agent {agent}" if agent else ""
        click.echo(f"mounted {ws.root} on {Path(mountpoint).resolve()}{who} (daemon pid {pid})")


@click.command("umount")
@click.argument("mountpoint", type=click.Path())
@click.option("--lazy", "-l", is_flag=True, help="Detach now even if busy; finish when the last user leaves.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object once unmounted.")
def umount_cmd(mountpoint: str, lazy: bool, as_json: bool) -> None:
    """Unmount MOUNTPOINT and wait for its daemon to finish."""
    mounting.umount(Path(mountpoint), lazy=lazy)
    if as_json:
        echo_json({"mountpoint": str(Path(mountpoint).resolve()), "unmounted": True, "lazy": lazy})


COMMANDS = [mount_cmd, umount_cmd]
