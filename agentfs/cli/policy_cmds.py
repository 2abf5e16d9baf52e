"""`agentfs policy check` and `agentfs policy explain`: validate and question the policy."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import click

from agentfs.cli._common import echo_json, resolve_workspace, workspace_option
from agentfs.core.policy import Policy
from agentfs.errors import AgentfsError
from agentfs.workspace import mount_containing, path_in_mount


def normalize_policy_path(path: str) -> str:
    """A policy path ("/a/b") from what a user typed: a path on a mount, or a policy path.

    A relative path is taken from the current directory, as a shell would,
    and must then lie on a mount.
    """
    absolute = os.path.abspath(path)
    if mount_containing(Path(absolute)) is not None:
        return path_in_mount(absolute)[1]
    if not path.startswith("/"):
        raise AgentfsError(f"{path!r} is not on a mount: give a policy path starting with '/' "
                           "(the data root), or a path on a mount")
    norm = "/" + posixpath.normpath(path).lstrip("/")
    return "/" if norm == "/." else norm


@click.group("policy")
def policy_group() -> None:
    """Validate the policy file and ask what it grants."""


@policy_group.command("check")
@workspace_option
@click.argument("ws_arg", metavar="[WS]", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object: ok, agents, rules (errors still exit 1).")
def check_cmd(workspace_opt: str | None, ws_arg: str | None, as_json: bool) -> None:
    """Validate WS/agentfs.toml: "ok: N agents, M rules", or the error with its line."""
    ws = resolve_workspace(ws_arg or workspace_opt)
    policy = Policy.load(ws.policy_path)
    agents = [a for a in policy.agents.values() if not a.implicit]
    if as_json:
        echo_json({"ok": True, "policy": str(ws.policy_path), "agents": sorted(a.name for a in agents),
                   "rules": policy.rule_count})
        return
    click.echo(f"ok: {len(agents)} agents, {policy.rule_count} rules")


@policy_group.command("explain")
@workspace_option
@click.option("--agent", "agent", required=True, metavar="NAME", help="The agent to ask about.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: rules and result.")
@click.argument("args", metavar="[WS] PATH", nargs=-1, required=True)
def explain_cmd(workspace_opt: str | None, agent: str, as_json: bool, args: tuple[str, ...]) -> None:
    """Say which rules give AGENT which rights on PATH, and whether PATH is visible."""
    if len(args) > 2:
        raise AgentfsError("give at most a workspace and one path: agentfs policy explain [WS] --agent NAME PATH")
    ws = resolve_workspace(args[0] if len(args) == 2 else workspace_opt)
    policy = Policy.load(ws.policy_path)
    path = normalize_policy_path(args[-1])
    entries = policy.explain(agent, path)
    result = entries[-1]
    if as_json:
        echo_json({"agent": agent, "path": path, "rights": result["rights"],
                   "visible": result["visible"], "known_agent": result["known_agent"],
                   "rules": entries[:-1]})
        return
    if not result["known_agent"]:
        click.echo(f"agent {agent!r} is not in {ws.policy_path}: no rights anywhere")
    for e in entries[:-1]:
        what = {"allow": "allows", "deny": "denies", "ancestor": "makes visible (folder above), allows"}[e["kind"]]
        click.echo(f"  line {e['line']}: rules[{e['index']}] {e['glob']!r} {what} {e['letters']}")
    if len(entries) == 1 and result["known_agent"]:
        click.echo("  no rule matches (default deny)")
    seen = "visible" if result["visible"] else "invisible (ENOENT)"
    click.echo(f"{agent} on {path}: rights {result['rights']}, {seen}")


COMMANDS = [policy_group]
