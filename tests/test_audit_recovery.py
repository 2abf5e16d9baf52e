"""A daemon killed with SIGKILL: what it acknowledged is in the log, its open write handles are marked."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

from agentfs.core.audit import iter_records, verify
from test_audit_support import raw, running

# A stand-in daemon: opens a write handle and records a change, says so, then waits to be killed.
_CHILD = r"""
import sys, trio
from agentfs.core.audit import AuditLog, AuditEvent
from agentfs.workspace import Workspace

async def main():
    ws = Workspace.open(sys.argv[1])
    log = AuditLog(ws, lambda: {}, sys.argv[2])
    async with trio.open_nursery() as n:
        await n.start(log.run)
        a = await log.open_write(7, AuditEvent("open-w", "crashy", 1000, 99, "/half-written.txt"))
        b = await log.record(AuditEvent("unlink", "crashy", 1000, 99, "/gone.txt"))
        print(a, b, flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


def _start_child(ws, daemon_id: str) -> tuple[subprocess.Popen, list[int]]:
    p = subprocess.Popen([sys.executable, "-c", _CHILD, str(ws.root), daemon_id],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r, _, _ = select.select([p.stdout], [], [], 0.1)
        if r:
            line = p.stdout.readline()
            assert line, p.stderr.read()
            return p, [int(x) for x in line.split()]
        assert p.poll() is None, p.stderr.read()
    p.kill()
    raise AssertionError("the child daemon never reported its records")


def _kill(p: subprocess.Popen) -> None:
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=10)


async def test_acknowledged_records_survive_sigkill_and_open_handles_are_marked_interrupted(ws):
    child, (open_seq, unlink_seq) = _start_child(ws, "dead-daemon")
    _kill(child)
    rows = {r["seq"]: r for r in iter_records(ws)}
    assert rows[open_seq]["op"] == "open-w" and rows[unlink_seq]["path"] == "/gone.txt"
    assert raw(ws).execute("SELECT COUNT(*) FROM audit_inflight").fetchone() == (1,)

    async with running(ws, daemon_id="new-daemon"):
        pass
    marked = list(iter_records(ws, op="write-interrupted"))
    assert len(marked) == 1
    m = marked[0]
    assert (m["path"], m["agent"], m["uid"], m["pid"]) == ("/half-written.txt", "crashy", 1000, 99)
    assert m["details"]["open_seq"] == open_seq and m["details"]["daemon_id"] == "dead-daemon"
    assert m["details"]["daemon_pid"] == child.pid
    assert raw(ws).execute("SELECT COUNT(*) FROM audit_inflight").fetchone() == (0,)
    assert verify(ws).ok


async def test_handles_of_a_live_daemon_are_left_alone(ws):
    child, _ = _start_child(ws, "alive")
    try:
        async with running(ws, daemon_id="other"):
            pass
        assert list(iter_records(ws, op="write-interrupted")) == []
        assert raw(ws).execute("SELECT COUNT(*) FROM audit_inflight").fetchone() == (1,)
    finally:
        _kill(child)
    # Once it is dead, the next daemon to start (even one reusing its id) marks it.
    async with running(ws, daemon_id="alive"):
        pass
    assert len(list(iter_records(ws, op="write-interrupted"))) == 1
