"""`agentfs audit` from the command line: table, JSON lines, --follow, verify and head."""

from __future__ import annotations

import json
import select
import subprocess
import time

import pytest

from agentfs.cli.audit_cmds import parse_time
from agentfs.errors import AgentfsError
from conftest import AGENTFS, run
from test_audit_support import ev, raw, running


async def _fill(ws) -> None:
    async with running(ws) as log:
        await log.record(ev("create", "/notes/a.md", agent="alice"))
        await log.record(ev("rename", "/notes/a.md", agent="bob", new_path="/notes/b.md"))
        log.close_write(3, ev("write", "/notes/b.md", agent="bob"), 2, 10, [(0, 10)], 10, "blake3:00")


async def test_json_lines_carry_the_documented_fields(ws):
    await _fill(ws)
    out = run([AGENTFS, "audit", "-w", str(ws.root), "--json"]).stdout.splitlines()
    recs = [json.loads(line) for line in out]
    assert [r["op"] for r in recs] == ["create", "rename", "write"]
    for key in ("seq", "ts", "agent", "uid", "pid", "op", "path", "new_path", "result", "details"):
        assert key in recs[0]
    assert recs[0]["ts"].endswith("Z") and recs[1]["new_path"] == "/notes/b.md"
    assert recs[2]["details"]["bytes"] == 10
    bob = run([AGENTFS, "-w", str(ws.root), "audit", "--agent", "bob", "--op", "write", "--json"]).stdout
    assert [json.loads(x)["seq"] for x in bob.splitlines()] == [3]


async def test_table_is_readable(ws):
    await _fill(ws)
    out = run([AGENTFS, "audit", "-w", str(ws.root), "--path", "/notes/b.md"]).stdout.splitlines()
    assert out[0].split()[:3] == ["SEQ", "TIME", "AGENT"]
    assert len(out) == 3 and "/notes/a.md -> /notes/b.md" in out[1] and "2 writes, 10 B" in out[2]
    assert len(run([AGENTFS, "audit", "-w", str(ws.root), "--limit", "1"]).stdout.splitlines()) == 2


async def test_verify_exits_1_naming_the_first_bad_record_and_head_pins(ws):
    await _fill(ws)
    ok = run([AGENTFS, "audit", "verify", "-w", str(ws.root)])
    assert "3 records" in ok.stdout
    pin = run([AGENTFS, "-w", str(ws.root), "audit", "head"]).stdout.strip()
    head_json = json.loads(run([AGENTFS, "audit", "head", "--json", "-w", str(ws.root)]).stdout)
    assert pin == f"{head_json['seq']}:{head_json['hash']}" and head_json["seq"] == 3
    run([AGENTFS, "audit", "verify", "-w", str(ws.root), "--pin", pin])
    short = run([AGENTFS, "audit", "verify", "-w", str(ws.root), "--pin", pin[:20]], check=False)
    assert short.returncode == 1 and "64-digit" in short.stderr and "rewritten" not in short.stderr
    raw(ws).execute("UPDATE audit_log SET result = 'EACCES' WHERE seq = 2")
    bad = run([AGENTFS, "audit", "verify", "-w", str(ws.root)], check=False)
    assert bad.returncode == 1 and "seq 2" in bad.stderr
    raw(ws).execute("DELETE FROM audit_log")
    gone = run([AGENTFS, "audit", "verify", "-w", str(ws.root), "--pin", pin], check=False)
    assert gone.returncode == 1 and "truncated" in gone.stderr


async def test_follow_streams_a_record_written_after_it_started(ws):
    await _fill(ws)
    async with running(ws) as log:
        await log.record(ev("unlink", "/early.txt", agent="alice"))
    p = subprocess.Popen([AGENTFS, "audit", "-w", str(ws.root), "--follow", "--json", "--op", "unlink"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def next_line() -> str:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r, _, _ = select.select([p.stdout], [], [], 0.1)
            if r:
                return p.stdout.readline()
            assert p.poll() is None, p.stderr.read()
        raise AssertionError("no record arrived")

    try:
        # Once the existing record is printed, the follower is polling for new ones.
        assert json.loads(next_line())["path"] == "/early.txt"
        async with running(ws, daemon_id="late") as log:
            await log.record(ev("create", "/filtered-out.txt", agent="carol"))
            seq = await log.record(ev("unlink", "/late.txt", agent="carol"))
        rec = json.loads(next_line())
        assert (rec["seq"], rec["agent"], rec["path"]) == (seq, "carol", "/late.txt")
    finally:
        p.kill()
        p.wait()


def test_parse_time():
    now = 1_000_000 * 10**9
    assert parse_time("10m", now) == now - 600 * 10**9
    assert parse_time("2h", now) == now - 7200 * 10**9
    assert parse_time("1.5d", now) == now - int(1.5 * 86400) * 10**9
    assert parse_time("2026-01-02T03:04:05Z") == 1767323045 * 10**9
    with pytest.raises(AgentfsError):
        parse_time("yesterday-ish")
    # beyond what a record's time can hold: the ends of the range, not an overflow
    assert parse_time("99999999999d", now) == -(1 << 63)
    assert parse_time("0001-01-01") == -(1 << 63)
    assert parse_time("9999-12-31") == (1 << 63) - 1


def test_audit_answers_out_of_range_times_and_limits_without_a_traceback(ws):
    for args in (["--since", "99999999999d"], ["--until", "0001-01-01"], ["--limit", "9" * 30]):
        r = run([AGENTFS, "audit", "-w", str(ws.root), *args], check=False)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (args, r.stderr)


async def test_archive_command_moves_old_records_and_verify_still_passes(ws):
    async with running(ws) as log:
        for i in range(12):
            await log.record(ev("create", f"/a/{i}"))
    refused = run([AGENTFS, "audit", "archive", "-w", str(ws.root)], check=False)
    assert refused.returncode == 1 and "--keep" in refused.stderr
    out = run([AGENTFS, "audit", "archive", "--keep", "5", "-w", str(ws.root)]).stdout
    assert out.startswith("archived 7 records")
    assert raw(ws).execute("SELECT COUNT(*) FROM audit_log").fetchone() == (5,)
    assert "12 records" in run([AGENTFS, "audit", "verify", "-w", str(ws.root)]).stdout
    recs = run([AGENTFS, "audit", "-w", str(ws.root), "--json", "--path", "/a/0"]).stdout.splitlines()
    assert [json.loads(x)["seq"] for x in recs] == [1]
