"""`agentfs init WS`: make a workspace with a safe, commented starter policy."""

from __future__ import annotations

import click

from agentfs.cli._common import echo_json
from agentfs.core.starter import STARTER_POLICY_TEXT
from agentfs.workspace import init_workspace


@click.command("init")
@click.argument("path", metavar="WS")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the workspace and its parts.")
def init_cmd(path: str, as_json: bool) -> None:
    """Create the workspace WS: a data tree, the state database and agentfs.toml."""
    ws = init_workspace(path, STARTER_POLICY_TEXT)
    if as_json:
        echo_json({"workspace": str(ws.root), "policy": str(ws.policy_path), "data": str(ws.data_path),
                   "state_db": str(ws.state_db)})
        return
    click.echo(f"created workspace {ws.root}")
    click.echo(f"  {ws.policy_path}   the policy: edit it to add agents and rules")
    click.echo(f"  {ws.data_path}/   the files agents see through the mount")
    click.echo(f"  {ws.state_db}   locks, sessions, audit log")
    click.echo(f"next: agentfs mount {path} MNT")


COMMANDS = [init_cmd]
