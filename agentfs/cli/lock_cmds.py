"""`agentfs lock`, `agentfs unlock`, `agentfs locks`.

lock and unlock go through the mount's `user.agentfs.lock` extended
attribute rather than the state database: the daemon then identifies the
caller exactly as it does for file I/O (user, `agentfs run` session or
dedicated mount), checks the `l` right, and the commands work for agents
that are not root. `locks` reads the database when it can (root) and the
mount's read-only `.agentfs/locks` listing otherwise.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from pathlib import Path

import click

from agentfs.cli._common import echo_json, path_on_mount, resolve_workspace, workspace_option
from agentfs.core.lock_format import format_locks_listing, parse_lock_xattr_lines, parse_locks_listing
from agentfs.core.locks import list_locks
from agentfs.errors import AgentfsError
from agentfs.workspace import mount_containing, mounts_of_agentfs

XATTR = "user.agentfs.lock"
LISTING = Path(".agentfs") / "locks"
RETRY_SECONDS = 0.1
# What --force writes before removing: take the lock by force, briefly.
FORCE_VALUE = b"exclusive;force;ttl=5"


class LockBusy(AgentfsError):
    """Another agent holds the lock; EX_TEMPFAIL tells scripts to retry later."""

    exit_code = 75


def mountpoint_of(path: str) -> Path:
    """The agentfs mount `path` lies on; an error if it is not on one."""
    found = mount_containing(Path(os.path.abspath(path)))
    if found is None:
        raise AgentfsError(f"{path} is not on an agentfs mount: give a path inside a mount")
    return found[0]


def _holder(path: str) -> str:
    """What getfattr would show about who holds `path`, or '' if it cannot be read."""
    try:
        return os.getxattr(path, XATTR).decode(errors="replace").replace("\n", "; ")
    except OSError:
        return ""


def _described(path: str, mnt: Path, **state: bool) -> dict:
    """The JSON of lock and unlock: where PATH is (on mount `mnt` and in the workspace) and who holds it."""
    p = Path(os.path.abspath(path))
    rel = p.relative_to(mnt).as_posix()
    return {"path": str(p), "workspace_path": "/" if rel == "." else "/" + rel, **state, "holders": holders(path)}


def holders(path: str) -> list[dict]:
    """The getfattr lines of `path` as objects (the shape `agentfs locks --json` uses for the same fields)."""
    try:
        return parse_lock_xattr_lines(os.getxattr(path, XATTR).decode(errors="replace"))
    except OSError:
        return []


def is_busy(e: OSError, path: str) -> bool:
    """Whether a failed setxattr means "another agent holds it".

    Linux hands EAGAIN from a FUSE setxattr to the caller as EOPNOTSUPP, so
    the daemon answers EBUSY; EOPNOTSUPP while getfattr shows a holder is
    read as busy too, for daemons that still answer EAGAIN.
    """
    if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY):
        return True
    return e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP) and bool(_holder(path))


def _explain(e: OSError, path: str, doing: str, waited: float = 0.0) -> AgentfsError:
    """One line for each way the daemon can refuse a lock request."""
    code = e.errno
    if is_busy(e, path):
        held = _holder(path)
        if waited > 0:
            return LockBusy(f"{path} is still locked by another agent after {waited:g} s"
                            f"{': ' + held if held else ''}; retry later, or wait longer with --wait")
        return LockBusy(f"{path} is locked by another agent{': ' + held if held else ''}; "
                        f"retry later or pass --wait SECONDS")
    if code in (errno.EACCES, errno.EPERM):
        if doing == "unlock":
            return AgentfsError(f"you may not unlock {path}: another agent holds it "
                                f"(`agentfs unlock --force` breaks it if you have the l right)")
        return AgentfsError(f"you may not lock {path}: locking needs the l right in the policy")
    if code == errno.ENOENT:
        return AgentfsError(f"no such file or directory on the mount: {path}")
    if code == errno.ENODATA:
        return AgentfsError(f"{path} is not locked by you (`agentfs locks` lists who holds what)")
    if code == errno.EINVAL:
        return AgentfsError(f"the daemon refused the lock request for {path}: check --ttl")
    if code in (errno.ENOTSUP, errno.EOPNOTSUPP):
        return AgentfsError(f"{path} does not take agentfs locks: is the mount an agentfs mount?")
    return AgentfsError(f"cannot {doing} {path}: {e.strerror or e}")


def lock_value(shared: bool, ttl: float | None, force: bool = False) -> bytes:
    """The value written to `user.agentfs.lock` (see parse_lock_xattr)."""
    if ttl is not None and not ttl > 0:
        raise click.BadParameter("must be a positive number of seconds", param_hint="--ttl")
    value = "shared" if shared else "exclusive"
    if ttl is not None:
        value += f";ttl={ttl:g}"
    if force:
        value += ";force"
    return value.encode()


def set_lock(path: str, value: bytes, wait: float) -> None:
    """setxattr, retried while busy until `wait` seconds have passed.

    The daemon answers each try at once (waiting there would keep the file's
    inode locked in the kernel and stall the holder's unlock); a refused try
    keeps its place in the lock queue for about a second, so retrying every
    RETRY_SECONDS keeps it.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            os.setxattr(path, XATTR, value)
            return
        except OSError as e:
            busy = is_busy(e, path)
            left = deadline - time.monotonic()
            if not busy or left <= 0:
                raise _explain(e, path, "lock", wait) from None
            time.sleep(min(RETRY_SECONDS, left))


@click.command("lock")
@click.argument("path")
@click.option("--shared", is_flag=True, help="Others may still read; nobody else may change.")
@click.option("--ttl", type=float, default=None, metavar="S",
              help="Lease in seconds (default: [locks].default_ttl); lock again to renew.")
@click.option("--wait", type=float, default=0.0, metavar="S",
              help="Keep trying this many seconds while another agent holds it.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the path and who holds it now.")
@workspace_option
def lock_cmd(path: str, shared: bool, ttl: float | None, wait: float, as_json: bool,
             workspace_opt: str | None) -> None:
    """Lock PATH (a file or directory on a mount) for the calling agent.

    With -w WS, PATH may also be a path in the workspace (/reports/q3.md):
    it is locked through WS's mount.
    """
    value = lock_value(shared, ttl)
    path = path_on_mount(path, workspace_opt)
    mnt = mountpoint_of(path)
    set_lock(path, value, max(0.0, wait))
    if as_json:
        echo_json(_described(path, mnt, locked=True))
        return
    held = _holder(path)
    click.echo(f"locked {path}" + (f": {held}" if held else ""))


@click.command("unlock")
@click.argument("path")
@click.option("--force", is_flag=True,
              help="Break another agent's lock (needs the l right on PATH).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the path and who still holds it.")
@workspace_option
def unlock_cmd(path: str, force: bool, as_json: bool, workspace_opt: str | None) -> None:
    """Release the calling agent's lock on PATH (with -w WS, also a path in the workspace)."""
    path = path_on_mount(path, workspace_opt)
    mnt = mountpoint_of(path)
    if force:
        set_lock(path, FORCE_VALUE, 0.0)
    try:
        os.removexattr(path, XATTR)
    except OSError as e:
        raise _explain(e, path, "unlock") from None
    if as_json:
        echo_json(_described(path, mnt, unlocked=True))
        return
    click.echo(f"unlocked {path}")


def _listing_from_mount(explicit_ws: str | None) -> str | None:
    """The text of `.agentfs/locks` on the mount of the workspace asked for, if one is found."""
    mounts = mounts_of_agentfs()
    here = Path.cwd()
    if explicit_ws:
        want = Path(os.path.abspath(explicit_ws))
        chosen = [m for m, ws in mounts if ws == want]
    else:
        chosen = [m for m, _ in mounts if here == m or m in here.parents]
        if not chosen and len(mounts) == 1:
            chosen = [mounts[0][0]]
    for mnt in sorted(chosen, key=lambda m: len(m.parts), reverse=True):
        try:
            return (mnt / LISTING).read_text()
        except OSError:
            continue
    return None


@click.command("locks")
@click.option("--json", "as_json", is_flag=True, help="One JSON list of lock objects.")
@workspace_option
def locks_cmd(as_json: bool, workspace_opt: str | None) -> None:
    """List the locks of the workspace."""
    try:
        locks = list_locks(resolve_workspace(workspace_opt))
    except (AgentfsError, sqlite3.Error, OSError) as e:
        explicit = workspace_opt or (click.get_current_context().find_root().obj or {}).get("workspace")
        text = _listing_from_mount(explicit)
        if text is None:
            raise AgentfsError(f"cannot read the locks ({e}); run inside a mount or pass -w WS") from None
        rows = parse_locks_listing(text)
        if as_json:
            echo_json(rows)
        else:
            click.echo(text if rows else "no locks", nl=not rows)
        return
    if as_json:
        now = time.time_ns()
        echo_json([lk.to_json(now) for lk in locks])
    elif locks:
        click.echo(format_locks_listing(locks), nl=False)
    else:
        click.echo("no locks")


COMMANDS = [lock_cmd, unlock_cmd, locks_cmd]
