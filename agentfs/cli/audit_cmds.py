"""`agentfs audit`: query, follow, verify and pin the audit log."""

from __future__ import annotations

import datetime as _dt
import os
import re
import sys
import time
from typing import Any

import click

from agentfs.cli._common import echo_json, resolve_workspace, workspace_option
from agentfs.core import audit_archive
from agentfs.core.audit import check_pin, head, iter_records, verify
from agentfs.core.audit_settings import from_policy_file
from agentfs.errors import AgentfsError
from agentfs.store import db

_REL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$")
_UNIT = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
FOLLOW_INTERVAL = 0.2
# Times are stored as signed 64-bit nanoseconds: "99999d ago" means "from the start".
_NS_MIN, _NS_MAX = -(1 << 63), (1 << 63) - 1


def parse_time(text: str, now_ns: int | None = None) -> int:
    """'10m', '2h', '3d' (that long ago) or an ISO date/time (local unless it says) → ns."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    m = _REL.match(text)
    if m:
        ago = float(m.group(1)) * _UNIT[m.group(2)] * 1e9
        return max(_NS_MIN, now_ns - int(min(ago, 2.0 ** 64)))
    try:
        t = _dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise AgentfsError(f"cannot read the time {text!r}: use 10m, 2h, 3d or an ISO time "
                           "like 2026-11-24T09:30") from None
    if t.tzinfo is None:
        try:
            t = t.astimezone()
        except (ValueError, OverflowError, OSError):  # at the ends of the calendar a zone changes nothing
            t = t.replace(tzinfo=_dt.timezone.utc)
    return min(_NS_MAX, max(_NS_MIN, int(t.timestamp() * 1e9)))


def iso(ts_ns: int) -> str:
    return _dt.datetime.fromtimestamp(ts_ns / 1e9, _dt.timezone.utc).isoformat(timespec="microseconds") \
        .replace("+00:00", "Z")


def _shown(p: str | None) -> str:
    """A path printable on any terminal: undecodable bytes as \\xNN."""
    if p is None:
        return ""
    return os.fsencode(p).decode("utf-8", "backslashreplace")


def to_json(r: dict[str, Any]) -> dict[str, Any]:
    return {"seq": r["seq"], "ts": iso(r["ts_ns"]), "ts_ns": r["ts_ns"], "agent": r["agent"],
            "uid": r["uid"], "pid": r["pid"], "op": r["op"], "path": r["path"],
            "new_path": r["new_path"], "result": r["result"], "details": r["details"],
            "hash": r["hash"]}


def _summary(d: dict[str, Any] | None) -> str:
    if not d:
        return ""
    if "bytes" in d and "writes" in d:
        s = f"{d['writes']} writes, {d['bytes']} B, size {d.get('size')}"
        return s + (f", {d['hash'][:20]}…" if d.get("hash") else "")
    return " ".join(f"{k}={v}" for k, v in d.items() if k not in ("ranges",))


def _table_line(r: dict[str, Any]) -> str:
    local = _dt.datetime.fromtimestamp(r["ts_ns"] / 1e9).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    path = _shown(r["path"]) + (f" -> {_shown(r['new_path'])}" if r["new_path"] is not None else "")
    extra = _summary(r["details"])
    return (f"{r['seq']:>7}  {local}  {r['agent'][:14]:<14} {r['uid']:>6} {r['pid']:>7}  "
            f"{r['op']:<17} {r['result']:<8} {path}" + (f"  [{extra}]" if extra else ""))


_HEADER = (f"{'SEQ':>7}  {'TIME':<23}  {'AGENT':<14} {'UID':>6} {'PID':>7}  {'OP':<17} {'RESULT':<8} PATH")


@click.group("audit", invoke_without_command=True)
@click.option("--agent", default=None, help="Only this agent's records.")
@click.option("--path", "path_glob", default=None, metavar="PATH|GLOB",
              help="A path (and everything below it) or a glob like '/src/*.py'; matches either path of a rename.")
@click.option("--op", default=None, help="Only these operations (comma-separated: write,unlink,rename).")
@click.option("--since", default=None, help="From this time: 10m, 2h, 3d ago or an ISO time.")
@click.option("--until", default=None, help="Up to this time (same forms).")
@click.option("--limit", type=click.IntRange(min=1, max=(1 << 63) - 1, clamp=True), default=None,
              help="Only the newest N matches.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new records as any daemon writes them.")
@workspace_option
@click.pass_context
def audit(ctx: click.Context, agent: str | None, path_glob: str | None, op: str | None,
          since: str | None, until: str | None, limit: int | None, as_json: bool, follow: bool,
          workspace_opt: str | None) -> None:
    """Show the audit log: who changed what, when, with what outcome."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = dict(ctx.obj or {}, audit_workspace=workspace_opt)
        return
    ws = _complete(resolve_workspace(workspace_opt))
    filt: dict[str, Any] = dict(agent=agent, path_glob=path_glob, op=op,
                                since_ns=parse_time(since) if since else None,
                                until_ns=parse_time(until) if until else None)
    emit = (lambda r: echo_json(to_json(r))) if as_json else (lambda r: click.echo(_table_line(r)))
    if not as_json:
        click.echo(_HEADER)
    last = 0
    for r in iter_records(ws, 0, limit=limit, newest=limit is not None, **filt):
        emit(r)
        last = r["seq"]
    if not follow:
        return
    if last == 0:
        last = head(ws)[0]
    sys.stdout.flush()
    conn = db.connect(ws)
    try:
        while True:
            time.sleep(FOLLOW_INTERVAL)
            got = False
            for r in iter_records(ws, last, conn=conn, **filt):
                emit(r)
                last, got = r["seq"], True
            if got:
                sys.stdout.flush()
    finally:
        conn.close()


def _ws(ctx: click.Context, workspace_opt: str | None):
    return _complete(resolve_workspace(workspace_opt or (ctx.obj or {}).get("audit_workspace")))


def _complete(ws):
    """Commit what crashed daemons journaled, so the log is whole before it is read."""
    from agentfs.core.audit import replay_dead_journals
    from agentfs.store import db

    conn = db.connect(ws)
    try:
        replay_dead_journals(ws, conn)
    finally:
        conn.close()
    return ws


@audit.command("verify")
@click.option("--pin", default=None, metavar="SEQ:HASH",
              help="Also check that record SEQ still has this hash (from an earlier `audit head`).")
@click.option("--json", "as_json", is_flag=True)
@workspace_option
@click.pass_context
def verify_cmd(ctx: click.Context, pin: str | None, as_json: bool, workspace_opt: str | None) -> None:
    """Check the hash chain (archive and live log); exit 1 naming the first bad record."""
    ws = _ws(ctx, workspace_opt)
    res = verify(ws)
    pin_problem = None
    if pin:
        seq_s, _, h = pin.partition(":")
        if not seq_s.isdigit() or not h:
            raise AgentfsError(f"--pin wants SEQ:HASH as printed by `agentfs audit head`, not {pin!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", h):
            # A shortened hash would read as a rewritten log: say what to give instead.
            raise AgentfsError(f"--pin wants the whole 64-digit hash, as `agentfs audit head` prints it, "
                               f"not {h!r}")
        pin_problem = check_pin(ws, int(seq_s), h)
    ok = res.ok and pin_problem is None
    if as_json:
        echo_json({"ok": ok, "count": res.count, "first_bad_seq": res.first_bad_seq,
                   "reason": res.reason or pin_problem or "", "head_seq": res.head_seq,
                   "head_hash": res.head_hash})
    elif res.ok and pin_problem is None:
        click.echo(f"ok: {res.count} records chain correctly; head {res.head_seq}:{res.head_hash}")
    elif not res.ok:
        click.echo(f"BROKEN at seq {res.first_bad_seq}: {res.reason} "
                   f"({res.count} records before it verify)", err=True)
    else:
        click.echo(f"BROKEN: {pin_problem}", err=True)
    if not ok:
        ctx.exit(1)


@audit.command("head")
@click.option("--json", "as_json", is_flag=True)
@workspace_option
@click.pass_context
def head_cmd(ctx: click.Context, as_json: bool, workspace_opt: str | None) -> None:
    """Print the newest record's seq and hash, to pin the log as it is now."""
    seq, h = head(_ws(ctx, workspace_opt))
    if as_json:
        echo_json({"seq": seq, "hash": h})
    else:
        click.echo(f"{seq}:{h}")


@audit.command("archive")
@click.option("--keep", type=click.IntRange(min=0), default=None,
              help="Keep this many newest records live (default: [audit] retention_records).")
@click.option("--older-than", default=None, help="Archive records older than this (e.g. 30d).")
@workspace_option
@click.pass_context
def archive_cmd(ctx: click.Context, keep: int | None, older_than: str | None,
                workspace_opt: str | None) -> None:
    """Move old records to compressed segments under state/audit-archive/ (they still verify)."""
    ws = _ws(ctx, workspace_opt)
    s = from_policy_file(ws.policy_path)
    keep_n = s.retention_records if keep is None else keep
    days = s.retention_days
    if older_than:
        days = (time.time_ns() - parse_time(older_than)) / 86400e9
    if keep_n <= 0 and days <= 0:
        raise AgentfsError("nothing to archive by: give --keep N or --older-than 30d, or set "
                           "[audit] retention_records / retention_days in agentfs.toml")
    n = audit_archive.archive(ws, keep_n, days)
    click.echo(f"archived {n} records" + (f" to {audit_archive.archive_dir(ws)}" if n else ""))


COMMANDS = [audit]

