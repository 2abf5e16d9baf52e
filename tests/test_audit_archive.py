"""Retention: old records move to compressed segments; the chain still verifies across them."""

from __future__ import annotations

import gzip
import json

from agentfs.core import audit_archive
from agentfs.core.audit import head, iter_records, verify
from test_audit_support import ev, raw, running


async def _write(ws, n: int, start: int = 0) -> None:
    async with running(ws) as log:
        for i in range(start, start + n):
            await log.record(ev(path=f"/r/{i}", agent="alice" if i % 2 else "bob"))


async def test_archive_keeps_the_newest_records_live_and_the_chain_verifies(ws):
    await _write(ws, 35)
    h = head(ws)
    assert audit_archive.archive(ws, keep_records=10) == 25
    assert raw(ws).execute("SELECT MIN(seq), COUNT(*) FROM audit_log").fetchone() == (26, 10)
    segs = audit_archive.segments(ws)
    assert [(a, b) for a, b, _ in segs] == [(1, 25)]
    with gzip.open(segs[0][2], "rt") as f:
        first = json.loads(f.readline())
    assert first["seq"] == 1 and first["path"] == "/r/0"
    res = verify(ws)
    assert res.ok and res.count == 35 and head(ws) == h
    # Queries and the change feed see archived records too.
    assert [r["seq"] for r in iter_records(ws)] == list(range(1, 36))
    assert [r["seq"] for r in iter_records(ws, 20, limit=3)] == [21, 22, 23]
    assert [r["path"] for r in iter_records(ws, agent="bob", limit=2)] == ["/r/0", "/r/2"]
    assert [r["seq"] for r in iter_records(ws, limit=12, newest=True)] == list(range(24, 36))


async def test_appending_after_archiving_everything_continues_the_chain(ws):
    await _write(ws, 5)
    assert audit_archive.archive(ws, upto_seq=5) == 5
    assert raw(ws).execute("SELECT COUNT(*) FROM audit_log").fetchone() == (0,)
    await _write(ws, 3, start=5)
    assert [r["seq"] for r in iter_records(ws)] == list(range(1, 9))
    assert verify(ws).ok and verify(ws).count == 8


async def test_the_writer_applies_retention_from_the_settings(ws):
    await _write(ws, 20)
    async with running(ws, {"audit": {"retention_records": 5}}):
        pass
    assert raw(ws).execute("SELECT COUNT(*) FROM audit_log").fetchone() == (5,)
    assert verify(ws).ok and verify(ws).count == 20


async def test_a_tampered_or_missing_segment_is_detected(ws):
    await _write(ws, 12)
    audit_archive.archive(ws, upto_seq=4)
    audit_archive.archive(ws, upto_seq=8)
    segs = audit_archive.segments(ws)
    assert [(a, b) for a, b, _ in segs] == [(1, 4), (5, 8)]
    path = segs[1][2]
    lines = gzip.open(path, "rt").read().splitlines()
    rec = json.loads(lines[1])
    rec["path"] = "/nothing-to-see"
    lines[1] = json.dumps(rec)
    original = path.read_bytes()
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    res = verify(ws)
    assert not res.ok and res.first_bad_seq == 6
    path.write_bytes(original)
    assert verify(ws).ok
    path.unlink()
    res = verify(ws)
    assert not res.ok and res.first_bad_seq == 5 and "missing" in res.reason


async def test_archiving_many_records_makes_bounded_segments(ws, monkeypatch):
    monkeypatch.setattr(audit_archive, "SEGMENT_RECORDS", 4)
    await _write(ws, 11)
    assert audit_archive.archive(ws, keep_records=1) == 10
    assert [(a, b) for a, b, _ in audit_archive.segments(ws)] == [(1, 4), (5, 8), (9, 10)]
    assert verify(ws).ok and verify(ws).count == 11
