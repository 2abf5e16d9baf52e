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


# A daemon that journals records and is killed before its writer can commit them.
_JOURNALING_CHILD = r"""
import sys, trio
from agentfs.core import audit as A
from agentfs.workspace import Workspace

async def main():
    ws = Workspace.open(sys.argv[1])
    log = A.AuditLog(ws, lambda: {}, "journaling")
    async with trio.open_nursery() as n:
        await n.start(log.run)
        def stuck(items):  # the commit never happens, as if the daemon died right after the syscall
            import time; time.sleep(3600)
        log._commit_sync = stuck
        await log.open_write_durable(9, A.AuditEvent("open-w", "fast", 1000, 7, "/fast.bin"))
        for i in range(3):
            await log.record_durable(A.AuditEvent("create", "fast", 1000, 7, f"/made-{i}"))
        print("acked", flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


async def test_journaled_records_acknowledged_before_their_commit_survive_sigkill(ws):
    p = subprocess.Popen([sys.executable, "-c", _JOURNALING_CHILD, str(ws.root)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        r, _, _ = select.select([p.stdout], [], [], 20)
        assert r and p.stdout.readline() == "acked\n", p.stderr.read() if p.poll() is not None else ""
    finally:
        _kill(p)
    assert list(iter_records(ws)) == []  # nothing was committed...
    async with running(ws, daemon_id="next"):
        pass
    rows = list(iter_records(ws))  # ...but everything acknowledged is in the log now
    assert [(r["op"], r["path"]) for r in rows] == [
        ("open-w", "/fast.bin"), ("create", "/made-0"), ("create", "/made-1"), ("create", "/made-2"),
        ("write-interrupted", "/fast.bin")]
    assert rows[-1]["details"]["open_seq"] == rows[0]["seq"] and rows[-1]["details"]["handle"] == 9
    assert not list(ws.run_path.glob("audit-journal.*"))
    assert verify(ws).ok
    async with running(ws, daemon_id="again"):
        pass
    assert len(list(iter_records(ws))) == 5  # replayed once only


async def test_a_torn_last_journal_line_is_skipped(ws):
    from agentfs.core import audit_journal
    from agentfs.store.audit_log import NewRecord

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(gone.stdout)  # a process that no longer exists
    j = audit_journal.Journal(ws, pid, 12345)
    j.append(audit_journal.Entry(1, NewRecord(time.time_ns(), "ghost", 0, 1, "mkdir", "/d", None, "ok",
                                              None), "dead", None, None))
    j.close(remove=False)
    with open(j.path, "ab") as f:
        f.write(b'[2, 17, "ghost", 0, 1, "mkd')  # power cut mid-line
    async with running(ws):
        pass
    assert [(r["agent"], r["path"]) for r in iter_records(ws)] == [("ghost", "/d")]
    assert not j.path.exists()


async def test_a_line_cut_short_in_the_mapped_journal_is_skipped(ws):
    """Killed mid-copy: part of the last line is in the mapping, the rest is still zeros."""
    from agentfs.core import audit_journal
    from agentfs.store.audit_log import NewRecord

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    j = audit_journal.Journal(ws, int(gone.stdout), 12346)
    rec = NewRecord(time.time_ns(), "ghost", 0, 1, "mkdir", "/d", None, "ok", None)
    j.append(audit_journal.Entry(1, rec, "dead", None, None))
    whole = audit_journal._line(audit_journal.Entry(2, rec, "dead", None, None))
    torn = whole[:10] + bytes(len(whole) - 11) + whole[-1:]  # copied out of order, the newline first
    j._map[j.size:j.size + len(torn)] = torn
    j._map.close()  # the process dies: no close(), the file keeps its zero tail
    os.close(j.fd)
    assert j.path.stat().st_size > j.size
    async with running(ws):
        pass
    assert [(r["agent"], r["path"]) for r in iter_records(ws)] == [("ghost", "/d")]
    assert not j.path.exists()
