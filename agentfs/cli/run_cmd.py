"""`agentfs run --agent NAME -- CMD...`: start a command tagged as an agent.

The tag is a session row naming this process (pid and start time); the
command then replaces this process with execvp, so the session root IS the
command and the session ends when it exits. Every descendant is the agent.
Cooperative isolation: it holds as long as processes under one uid do not
tamper with each other (see README.md, Policies).
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import signal
import sys

import click

from agentfs.cli._common import resolve_workspace, workspace_option
from agentfs.core.identity import announce_session, find_session, process_start_time
from agentfs.core.policy import Policy
from agentfs.errors import AgentfsError, WorkspaceError
from agentfs.store import db
from agentfs.store import sessions as store

_PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    """Keep orphaned descendants under the session root (preserved across execve).

    Without it a descendant that daemonises is re-parented to init and drops
    out of the tagged tree while the session still runs.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _target_user(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise AgentfsError(f"no such user {user!r}: give a user name or uid from /etc/passwd") from None


@click.command("run", context_settings={"allow_interspersed_args": False,
                                        "ignore_unknown_options": True})
@click.option("--agent", "agent", required=True, metavar="NAME", help="The agent the command runs as.")
@workspace_option
@click.option("--user", "user", metavar="USER", help="Run the command as this Unix user (root only).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def run_cmd(agent: str, workspace_opt: str | None, user: str | None, command: tuple[str, ...]) -> None:
    """Run COMMAND (after --) as agent NAME; it and all its descendants keep that identity."""
    try:
        ws = resolve_workspace(workspace_opt)
    except (PermissionError, WorkspaceError) as e:
        if os.geteuid() == 0:
            raise
        raise AgentfsError("cannot read the workspace: only root or the workspace owner "
                           "may start agents with agentfs run") from e
    euid = os.geteuid()
    owner = os.stat(ws.root).st_uid
    if euid not in (0, owner):
        raise AgentfsError(f"only root or the workspace owner (uid {owner}) may start agents with agentfs run")
    policy = Policy.load(ws.policy_path)
    if agent not in policy.agents:
        known = ", ".join(sorted(policy.agents))
        raise AgentfsError(f"no agent {agent!r} in {ws.policy_path} (agents: {known})")
    pw = _target_user(user) if user else None
    if pw is not None and euid != 0:
        raise AgentfsError("--user needs root: run agentfs run as root to start a command as another user")
    env = dict(os.environ)
    if pw is not None:
        env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
    if shutil.which(command[0], path=env.get("PATH", os.defpath)) is None:
        raise AgentfsError(f"command not found: {command[0]}")
    pid = os.getpid()
    start = process_start_time(pid)
    if start is None:
        raise AgentfsError("cannot read /proc/self/stat: agentfs run needs /proc")
    conn = db.connect(ws)
    try:
        inside = find_session(conn, pid)
        if inside is not None:
            raise AgentfsError(f"a tagged process cannot re-tag itself: this process is agent "
                               f"{inside.agent!r} (session {inside.id})")
        session_id = store.create_session(conn, agent, pid, start, pw.pw_uid if pw else os.getuid())
    finally:
        conn.close()
    announce_session(ws)
    env.update(AGENTFS_AGENT=agent, AGENTFS_SESSION=str(session_id), AGENTFS_WORKSPACE=str(ws.root))
    _become_subreaper()
    if pw is not None:
        os.initgroups(pw.pw_name, pw.pw_gid)
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    # Python ignores these; an exec'd command must get the default behaviour back.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], list(command), env)
    except OSError as e:
        click.echo(f"agentfs: cannot run {command[0]}: {e.strerror}", err=True)
        sys.exit(126)


COMMANDS = [run_cmd]
