"""Options and helpers shared by the command families."""

from __future__ import annotations

import json
from typing import Any, Callable

import click

from agentfs.workspace import Workspace, find_workspace


def workspace_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """`-w/--workspace` accepted after the command name too, as DESIGN.md promises."""
    return click.option("-w", "--workspace", "workspace_opt", metavar="WS", default=None,
                        help="Workspace directory.")(f)


def resolve_workspace(workspace_opt: str | None) -> Workspace:
    """The workspace from the command's own -w, the group's -w, the environment, or cwd."""
    ctx = click.get_current_context()
    explicit = workspace_opt or (ctx.find_root().obj or {}).get("workspace")
    return find_workspace(explicit)


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, sort_keys=False, default=str))
