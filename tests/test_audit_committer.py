"""Group commits in the helper process (audit_committer), as the daemons make them."""

from __future__ import annotations

import os
import signal

import trio

from agentfs.core.audit import iter_records, verify
from test_audit_support import ev, raw, running


def _helper_pid(log) -> int:
    proc = log._committer._proc
    assert proc is not None, "no helper process is running"
    return proc.pid


async def test_every_kind_of_record_is_committed_by_the_helper_in_order(ws):
    async with running(ws, helper=True) as log:
        assert await log.record(ev("mkdir", "/d")) == 1
        await log.open_write(7, ev(path="/d/f"))
        await log.record_durable(ev("unlink", "/old"))
        log.record_nowait(ev("unlink", "/secret", result="EACCES"))
        await log.flush()
        assert [r[0] for r in raw(ws).execute("SELECT handle_id FROM audit_inflight")] == [7]
        log.close_write(7, ev(path="/d/f"), 1, 3, [(0, 3)], 3, "blake3:x")
        await log.flush()
        assert raw(ws).execute("SELECT COUNT(*) FROM audit_inflight").fetchone() == (0,)
        pid = _helper_pid(log)
        assert pid != os.getpid()
    rows = list(iter_records(ws))
    assert [(r["seq"], r["op"], r["path"]) for r in rows] == [
        (1, "mkdir", "/d"), (2, "open-w", "/d/f"), (3, "unlink", "/old"), (4, "unlink", "/secret"),
        (5, "write", "/d/f")]
    assert rows[3]["result"] == "EACCES" and rows[4]["details"]["bytes"] == 3
    assert verify(ws).ok
    assert not os.path.exists(f"/proc/{pid}")  # the helper exited with the log, and was reaped


async def test_acknowledged_records_survive_the_helper_being_killed(ws):
    async with running(ws, helper=True) as log:
        await log.record_durable(ev("unlink", "/a"))
        await log.flush()
        old = _helper_pid(log)
        os.kill(old, signal.SIGKILL)
        await log.record_durable(ev("unlink", "/b"))  # journaled: acknowledged whatever the helper does
        with trio.fail_after(30):
            while not any(r["path"] == "/b" for r in iter_records(ws)):
                await log.flush()
        assert _helper_pid(log) != old  # a new helper took over
    assert [r["path"] for r in iter_records(ws)] == ["/a", "/b"]
    assert verify(ws).ok


async def test_power_durability_waits_for_the_helpers_fsynced_commit(ws):
    async with running(ws, {"audit": {"durability": "power"}}, helper=True) as log:
        await log.record_durable(ev("unlink", "/x"))
        assert raw(ws).execute("SELECT COUNT(*) FROM audit_log").fetchone() == (1,)
        assert log._journal.size == 0
