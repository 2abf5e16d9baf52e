"""Options and helpers shared by the command families."""

from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path
from typing import Any, Callable

import click

from agentfs.errors import AgentfsError
from agentfs.workspace import Workspace, find_workspace, mount_containing, mounts_of_agentfs


def workspace_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """`-w/--workspace` accepted after the command name too, as DESIGN.md promises."""
    return click.option("-w", "--workspace", "workspace_opt", metavar="WS", default=None,
                        help="Workspace directory.")(f)


def explicit_workspace(workspace_opt: str | None) -> str | None:
    """The -w given after the command name, else the one given before it."""
    ctx = click.get_current_context()
    return workspace_opt or (ctx.find_root().obj or {}).get("workspace")


def resolve_workspace(workspace_opt: str | None) -> Workspace:
    """The workspace from the command's own -w, the group's -w, the environment, or cwd."""
    return find_workspace(explicit_workspace(workspace_opt))


def same_workspace(a: Path | str, b: Path | str) -> bool:
    """Whether two spellings name one workspace directory."""
    # realpath, not Workspace.open: an agent may not read the workspace (root's, 0700).
    return os.path.realpath(a) == os.path.realpath(b)


def mount_of_workspace(ws: str) -> Path:
    """The mount of `ws` to act through: the one the current directory is in, else its only one.

    Which mount matters: its daemon decides who the caller is (a mount made
    with --agent speaks for one agent), so with several it is never guessed.
    """
    mounts = [m for m, root in mounts_of_agentfs() if same_workspace(root, ws)]
    if not mounts:
        raise AgentfsError(f"{ws} is not mounted: mount it with `agentfs mount {ws} MNT`, "
                           "or give a path on a mount")
    here = Path(os.path.abspath("."))
    inside = [m for m in mounts if here == m or m in here.parents]
    if inside:
        return max(inside, key=lambda m: len(m.parts))
    if len(mounts) == 1:
        return mounts[0]
    listed = ", ".join(str(m) for m in mounts)
    raise AgentfsError(f"{ws} has {len(mounts)} mounts ({listed}): cd into the one to act through, "
                       "or give a path on it")


def path_on_mount(path: str, workspace_opt: str | None) -> str:
    """PATH as a path on a mount, for the commands that act through one (lock, unlock).

    A path on a mount is used as given. Otherwise, with a workspace from -w
    (or $AGENTFS_WORKSPACE), an absolute PATH is the workspace path
    ("/reports/q3.md") on that workspace's mount, so that a script can name
    a file the same way wherever it runs. -w naming another workspace than
    the mount PATH lies on is an error, never a silent choice.
    """
    explicit = explicit_workspace(workspace_opt)
    found = mount_containing(Path(os.path.abspath(path)))
    if found is not None:
        if explicit and not same_workspace(found[1], explicit):
            raise AgentfsError(f"{path} is on a mount of {found[1]}, not of {explicit}: "
                               "drop -w, or give a path in that workspace")
        return path
    ws = explicit or os.environ.get("AGENTFS_WORKSPACE")
    if not ws:
        return path  # the command says it is not on a mount
    if not path.startswith("/"):
        raise AgentfsError(f"{path!r} is not on a mount: give the workspace path from its root "
                           f"(e.g. /{path}) or a path on a mount")
    rel = posixpath.normpath(path).lstrip("/")
    mnt = mount_of_workspace(ws)
    return str(mnt / rel) if rel and rel != "." else str(mnt)


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, sort_keys=False, default=str))
