"""The audit log core: chaining, group commit, tamper detection, several writers, queries."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
import trio

from agentfs.core import audit as audit_mod
from agentfs.core.audit import (GENESIS, AuditError, AuditEvent, ContentHasher, coalesce_ranges,
                                head, iter_records, verify)
from agentfs.store import audit_log as store
from test_audit_support import ev, raw, running


def count_commits(monkeypatch) -> list[int]:
    """Make every commit note how many records it carried; returns the list it fills."""
    commits: list[int] = []
    real = store.append

    def counting(conn, records, *a, **kw):
        commits.append(len(records))
        return real(conn, records, *a, **kw)

    monkeypatch.setattr(store, "append", counting)
    return commits


def fail_first_commit(monkeypatch, message: str) -> None:
    """The first commit raises OSError(message); later ones go through."""
    real = store.append
    calls = {"n": 0}

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(message)
        return real(*a, **kw)

    monkeypatch.setattr(store, "append", flaky)


async def test_records_chain_to_each_other_and_verify(ws):
    async with running(ws) as log:
        seqs = [await log.record(ev(path=f"/f{i}")) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    rows = list(iter_records(ws))
    assert [r["path"] for r in rows] == [f"/f{i}" for i in range(5)]
    assert rows[0]["prev_hash"] == GENESIS
    for a, b in zip(rows, rows[1:]):
        assert b["prev_hash"] == a["hash"]
    res = verify(ws)
    assert res.ok and res.count == 5 and res.first_bad_seq is None
    assert head(ws) == (5, rows[-1]["hash"]) == (res.head_seq, res.head_hash)


async def test_empty_log_verifies_and_has_the_genesis_head(ws):
    assert verify(ws).ok and verify(ws).count == 0
    assert head(ws) == (0, GENESIS)


async def test_concurrent_records_are_group_committed_into_one_contiguous_chain(ws, monkeypatch):
    commits = count_commits(monkeypatch)
    got: list[int] = []
    async with running(ws) as log:
        async def one(i: int) -> None:
            got.append(await log.record(ev(path=f"/c{i}")))

        async with trio.open_nursery() as n:
            for i in range(300):
                n.start_soon(one, i)
    assert sorted(got) == list(range(1, 301))
    assert sum(commits) == 300 and len(commits) < 300, commits
    assert verify(ws).ok and verify(ws).count == 300


async def test_record_returns_only_after_the_record_is_committed(ws):
    async with running(ws) as log:
        seq = await log.record(ev(path="/durable"))
        # Another connection (another process, in effect) sees it at once.
        row = raw(ws).execute("SELECT path FROM audit_log WHERE seq = ?", (seq,)).fetchone()
        assert row == ("/durable",)


async def test_nowait_records_are_committed_with_the_next_group_and_by_aclose(ws):
    async with running(ws) as log:
        log.record_nowait(ev("open-r", "/read", result="ok"))
        log.record_nowait(ev("unlink", "/secret", result="EACCES", details={"missing": "d"}))
    rows = list(iter_records(ws))
    assert [(r["op"], r["result"], r["details"]) for r in rows] == [
        ("open-r", "ok", None), ("unlink", "EACCES", {"missing": "d"})]


async def test_two_writers_on_one_database_make_one_valid_chain(ws):
    async with running(ws, daemon_id="A") as a, running(ws, daemon_id="B") as b:
        async def burst(log, name: str) -> None:
            for i in range(60):
                await log.record(ev(path=f"/{name}/{i}", agent=name))

        async with trio.open_nursery() as n:
            for _ in range(3):
                n.start_soon(burst, a, "a")
                n.start_soon(burst, b, "b")
    rows = list(iter_records(ws))
    assert [r["seq"] for r in rows] == list(range(1, 361))
    assert {r["agent"] for r in rows} == {"a", "b"}
    res = verify(ws)
    assert res.ok and res.count == 360


async def _filled(ws, n: int = 6) -> None:
    async with running(ws) as log:
        for i in range(n):
            await log.record(ev(path=f"/x/{i}"))


async def test_verify_names_the_record_whose_contents_were_changed(ws):
    await _filled(ws)
    raw(ws).execute("UPDATE audit_log SET path = '/innocent' WHERE seq = 4")
    res = verify(ws)
    assert not res.ok and res.first_bad_seq == 4 and res.count == 3
    assert "changed" in res.reason


async def test_verify_detects_a_deleted_record(ws):
    await _filled(ws)
    raw(ws).execute("DELETE FROM audit_log WHERE seq = 3")
    res = verify(ws)
    assert not res.ok and res.first_bad_seq == 4 and "missing" in res.reason


async def test_verify_detects_a_rehashed_record_by_the_next_link(ws):
    await _filled(ws)
    # A careful tamperer recomputes the changed record's own hash...
    conn = raw(ws)
    conn.execute("UPDATE audit_log SET agent = 'mallory' WHERE seq = 2")
    row = dict(zip(store.COLUMNS, conn.execute("SELECT * FROM audit_log WHERE seq = 2").fetchone()))
    from agentfs.core.audit_chain import hash_of_row

    conn.execute("UPDATE audit_log SET hash = ? WHERE seq = 2", (hash_of_row(row),))
    # ...but the next record still links to the old one.
    res = verify(ws)
    assert not res.ok and res.first_bad_seq == 3 and "prev_hash" in res.reason


async def test_a_rewritten_tail_is_caught_against_a_pinned_head(ws):
    from agentfs.core.audit import check_pin

    await _filled(ws)
    seq, h = head(ws)
    assert check_pin(ws, seq, h) is None
    raw(ws).execute("DELETE FROM audit_log WHERE seq = ?", (seq,))
    assert verify(ws).ok  # dropping the tail leaves a consistent chain...
    assert "truncated" in check_pin(ws, seq, h)  # ...which the pin catches


async def test_iter_records_filters(ws):
    t0 = time.time_ns()
    async with running(ws) as log:
        await log.record(ev("create", "/src/a.py", agent="alice"))
        await log.record(ev("create", "/src/sub/b.py", agent="bob"))
        await log.record(ev("rename", "/tmp/x", agent="bob", new_path="/src/x.py"))
        await log.record(ev("unlink", "/docs/readme.md", agent="alice"))
        await log.record(ev("mkdir", "/srcfoo", agent="alice"))
    t1 = time.time_ns()
    paths = lambda **kw: [r["path"] for r in iter_records(ws, **kw)]  # noqa: E731
    assert paths(agent="bob") == ["/src/sub/b.py", "/tmp/x"]
    assert paths(op="unlink,mkdir") == ["/docs/readme.md", "/srcfoo"]
    assert paths(op=["create"]) == ["/src/a.py", "/src/sub/b.py"]
    # A plain path is the path and its subtree (not a sibling sharing the prefix); renames match on either side.
    assert paths(path_glob="/src") == ["/src/a.py", "/src/sub/b.py", "/tmp/x"]
    assert paths(path_glob="/src/*.py") == ["/src/a.py", "/src/sub/b.py", "/tmp/x"]
    assert paths(path_glob="/docs/readme.md") == ["/docs/readme.md"]
    assert paths(path_glob="/") == paths()
    assert paths(since_ns=t1) == [] and len(paths(since_ns=t0, until_ns=t1)) == 5
    assert paths(limit=2) == ["/src/a.py", "/src/sub/b.py"]
    assert paths(limit=2, newest=True) == ["/docs/readme.md", "/srcfoo"]
    assert [r["seq"] for r in iter_records(ws, 3)] == [4, 5]
    assert paths(agent="alice", op="create", path_glob="/src") == ["/src/a.py"]


async def test_paths_that_are_not_utf8_round_trip_and_verify(ws):
    name = os.fsdecode(b"/bad-\xff\xfe.txt")
    async with running(ws) as log:
        await log.record(ev("create", name))
        await log.record(ev("rename", name, new_path=os.fsdecode(b"/\xe9t\xe9")))
    rows = list(iter_records(ws))
    assert rows[0]["path"] == name and rows[1]["new_path"] == os.fsdecode(b"/\xe9t\xe9")
    assert [r["path"] for r in iter_records(ws, path_glob=name)] == [name, name]
    assert verify(ws).ok


async def test_record_hashes_are_sha256_of_the_documented_json_array(ws):
    """The chain's bytes are json.dumps(ensure_ascii, compact) of the fields: what outside tools recompute."""
    import json

    paths = ["/plain.txt", "/\u00e9t\u00e9 \U0001f600.md", os.fsdecode(b"/bad-\xff.txt")]
    async with running(ws) as log:
        for p in paths:
            await log.record(ev("create", p, details={"mode": "0o644", "note": "caf\u00e9"}))
    rows = list(iter_records(ws))
    assert [r["path"] for r in rows] == paths
    for r in rows:
        # details are hashed as stored: compact JSON text with sorted keys.
        details = json.dumps(r["details"], ensure_ascii=True, separators=(",", ":"), sort_keys=True)
        fields = [r["prev_hash"], r["seq"], r["ts_ns"], r["agent"], r["uid"], r["pid"], r["op"], r["path"],
                  r["new_path"], r["result"], details]
        text = json.dumps(fields, ensure_ascii=True, separators=(",", ":"))
        assert r["hash"] == hashlib.sha256(text.encode("ascii")).hexdigest(), (r["seq"], text)


async def test_path_queries_need_no_path_index_and_an_old_one_is_dropped(ws):
    """The path index served no query and slowed every commit: workspaces made before lose it."""
    from agentfs.store import db

    async with running(ws) as log:
        for p in ("/a/x.txt", "/b/y.txt", "/a/sub/z.txt"):
            await log.record(ev("create", p))
    conn = raw(ws)
    conn.execute("CREATE INDEX audit_log_path ON audit_log(path)")
    conn.close()
    db.connect(ws).close()
    conn = raw(ws)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    conn.close()
    assert "audit_log_path" not in names and "audit_log_agent" in names
    assert [r["path"] for r in iter_records(ws, path_glob="/a")] == ["/a/x.txt", "/a/sub/z.txt"]
    assert [r["path"] for r in iter_records(ws, path_glob="/*/y.txt")] == ["/b/y.txt"]


async def test_write_handles_are_in_flight_until_close_write_aggregates_them(ws):
    async with running(ws) as log:
        open_seq = await log.open_write(7, ev("open-w", "/big.bin"))
        conn = raw(ws)
        assert conn.execute("SELECT handle_id, open_seq FROM audit_inflight").fetchall() == [(7, open_seq)]
        log.close_write(7, ev("write", "/big.bin"), writes=4, nbytes=300,
                        ranges=[(0, 100), (100, 200), (500, 600)], size=600, content_hash="blake3:ab")
        await log.flush()
        assert conn.execute("SELECT COUNT(*) FROM audit_inflight").fetchone() == (0,)
    rows = list(iter_records(ws))
    assert [r["op"] for r in rows] == ["open-w", "write"]
    assert rows[1]["details"] == {"writes": 4, "bytes": 300, "ranges": [[0, 200], [500, 600]],
                                  "size": 600, "hash": "blake3:ab"}


async def test_a_failed_commit_fails_its_waiters_and_the_log_carries_on(ws, monkeypatch):
    fail_first_commit(monkeypatch, "disk full")
    async with running(ws) as log:
        with pytest.raises(AuditError, match="disk full"):
            await log.record(ev(path="/lost"))
        assert await log.record(ev(path="/kept")) == 1
    assert verify(ws).ok


async def test_durability_power_makes_commits_synchronous_full(ws):
    async with running(ws, {"audit": {"durability": "power"}}) as log:
        await log.record(ev())
        assert log._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    async with running(ws, {}) as log:
        await log.record(ev())
        assert log._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


async def test_reads_setting(ws):
    async with running(ws, {"audit": {"reads": True}}) as log:
        assert log.reads
    async with running(ws) as log:
        assert not log.reads


def test_coalesce_ranges():
    assert coalesce_ranges([]) == []
    assert coalesce_ranges([(0, 10), (10, 20), (20, 30)]) == [(0, 30)]
    assert coalesce_ranges([(50, 60), (0, 10), (5, 20), (20, 21), (70, 70)]) == [(0, 21), (50, 60)]
    assert coalesce_ranges([[0, 4096], [8192, 9000]]) == [(0, 4096), (8192, 9000)]


async def test_content_hasher_hashes_the_file_from_a_write_only_fd(workdir):
    p = workdir / "f.bin"
    data = os.urandom(3 << 20) + b"tail"
    p.write_bytes(data)
    h = ContentHasher()
    fd = os.open(p, os.O_WRONLY)
    try:
        got = await h.hash_fd_async(fd)
    finally:
        os.close(fd)
    assert got == h.hash_bytes(data) == h.hash_path(p)
    assert got.startswith(h.algorithm + ":")
    s = ContentHasher("sha256")
    assert s.hash_path(p) == "sha256:" + hashlib.sha256(data).hexdigest()
    try:
        dfd = os.open(p, os.O_RDWR | os.O_DIRECT)
    except OSError:
        return  # a filesystem without O_DIRECT (tmpfs)
    try:
        assert h.hash_fd(dfd) == got
    finally:
        os.close(dfd)


async def test_audit_module_exports_the_api_the_fuse_layer_calls():
    for name in ("AuditEvent", "AuditLog", "coalesce_ranges", "ContentHasher", "iter_records",
                 "verify", "head"):
        assert hasattr(audit_mod, name)
    e = AuditEvent("create", "a", 1, 2, "/p")
    assert (e.new_path, e.result, e.details) == (None, "ok", None)


_WRITER = r"""
import sys, trio
from agentfs.core.audit import AuditLog, AuditEvent
from agentfs.workspace import Workspace

async def main():
    ws = Workspace.open(sys.argv[1])
    log = AuditLog(ws, lambda: {}, sys.argv[2])
    async with trio.open_nursery() as n:
        await n.start(log.run)
        async def burst(k):
            for i in range(100):
                await log.record(AuditEvent("create", sys.argv[2], 0, 0, f"/{sys.argv[2]}/{k}/{i}"))
        async with trio.open_nursery() as m:
            for k in range(4):
                m.start_soon(burst, k)
        await log.aclose()

trio.run(main)
"""


def test_daemons_in_separate_processes_append_to_one_chain(ws):
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(ws.root), name],
                              stderr=subprocess.PIPE, text=True) for name in ("p1", "p2", "p3")]
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()
    rows = list(iter_records(ws))
    assert [r["seq"] for r in rows] == list(range(1, 1201))
    assert {r["agent"] for r in rows} == {"p1", "p2", "p3"}
    assert verify(ws).ok and verify(ws).count == 1200


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40)), max_size=40))
def test_coalesce_ranges_covers_exactly_the_written_bytes(writes):
    ranges = [(off, off + n) for off, n in writes]
    out = coalesce_ranges(ranges)
    covered = {b for s, e in ranges for b in range(s, e)}
    assert {b for s, e in out for b in range(s, e)} == covered
    assert all(s < e for s, e in out)
    assert all(a[1] < b[0] for a, b in zip(out, out[1:]))  # sorted, disjoint, not touching


async def test_record_durable_journals_then_commits_and_cleans_up(ws):
    async with running(ws) as log:
        await log.open_write_durable(5, ev("open-w", "/j.bin"))
        await log.record_durable(ev("unlink", "/old"))
        journal = log._journal
        assert journal is not None and journal.path.exists() and journal.size > 0
        await log.flush()
        mark = raw(ws).execute("SELECT value FROM audit_meta WHERE key = ?",
                               ("journal:" + journal.key,)).fetchone()
        assert mark == ("2",)
        assert raw(ws).execute("SELECT handle_id FROM audit_inflight").fetchall() == [(5,)]
    assert not journal.path.exists()  # a clean shutdown leaves no journal
    assert [r["op"] for r in iter_records(ws)] == ["open-w", "unlink"]


async def test_change_journals_the_lines_replay_reads_back(ws):
    """`change` writes its journal line itself: it must be the line `line_of` would write."""
    from agentfs.core import audit_journal

    async with running(ws) as log:
        await log.change("create", "ag\u00e9nt", 1000, 42, "/d/caf\u00e9\udcff.txt", details={"mode": "0o600"},
                         handle_add=7)
        await log.change("rename", "agent", 1000, 42, "/a", "/b", result="EXDEV")
        journal = log._journal
        assert journal is not None
        entries = audit_journal.read_entries(journal.path)
        lines = bytes(journal._map[:journal.size])
        await log.flush()
    expected = b"".join(audit_journal.line_of(e.n, e.rec, e.daemon_id, e.handle_add, e.handle_del)
                        for e in entries)
    assert lines == expected
    assert [(e.n, e.rec.op, e.rec.path, e.rec.new_path, e.rec.result, e.rec.details, e.handle_add)
            for e in entries] == [(1, "create", "/d/caf\u00e9\udcff.txt", None, "ok", '{"mode":"0o600"}', 7),
                                  (2, "rename", "/a", "/b", "EXDEV", None, None)]
    rows = list(iter_records(ws))
    assert [(r["op"], r["agent"], r["uid"], r["pid"]) for r in rows] == [
        ("create", "ag\u00e9nt", 1000, 42), ("rename", "agent", 1000, 42)]
    assert verify(ws).ok


async def test_a_steady_trickle_of_changes_is_committed_in_groups(ws, monkeypatch):
    """One change at a time (tar -x, rm -rf) must not cost one SQLite commit each."""
    commits = count_commits(monkeypatch)
    async with running(ws) as log:
        t0 = time.monotonic()
        for i in range(150):
            await log.record_durable(ev("unlink", f"/t{i}"))
            await trio.sleep(0.001)
        elapsed = time.monotonic() - t0
        await log.flush()
    assert sum(commits) == 150
    # At most one commit per pacing interval (plus the first and the flush).
    assert len(commits) <= elapsed / audit_mod.COMMIT_EVERY_S + 2, (len(commits), elapsed)
    assert verify(ws).ok and [r["path"] for r in iter_records(ws)] == [f"/t{i}" for i in range(150)]


async def test_a_waited_record_is_not_held_back_by_the_pacing(ws, monkeypatch):
    monkeypatch.setattr(audit_mod, "COMMIT_EVERY_S", 3600.0)
    async with running(ws) as log:
        await log.record(ev(path="/first"))
        with trio.fail_after(30):  # a paced commit would wait an hour
            assert await log.record(ev(path="/second")) == 2


def test_a_rewritten_journal_keeps_exactly_the_pending_entries(ws):
    from agentfs.core import audit_journal
    from agentfs.store.audit_log import NewRecord

    def entry(n: int) -> audit_journal.Entry:
        return audit_journal.Entry(n, NewRecord(n, "a", 0, 1, "mkdir", f"/d{n}", None, "ok", None),
                                   "me", None, None)

    j = audit_journal.Journal(ws, 424242, 1)
    for n in range(1, 6):
        j.append(entry(n))
    j.rewrite([entry(4), entry(5)])
    j.append(entry(6))
    assert [e.n for e in audit_journal.read_entries(j.path)] == [4, 5, 6]
    assert [p.name for p in ws.run_path.iterdir() if p.name.startswith("audit-journal")] == [j.path.name]
    j.close(remove=False)
    assert j.size == j.path.stat().st_size  # a kept journal is cut to its lines
    assert [e.n for e in audit_journal.read_entries(j.path)] == [4, 5, 6]


def test_a_journal_grows_past_its_first_mapping_and_reopens_where_it_ended(ws, monkeypatch):
    from agentfs.core import audit_journal
    from agentfs.store.audit_log import NewRecord

    monkeypatch.setattr(audit_journal, "_CAPACITY", 4096)
    j = audit_journal.Journal(ws, 424243, 1)
    for n in range(1, 101):  # ~100 bytes a line: several times the first mapping
        j.append(audit_journal.Entry(n, NewRecord(n, "a", 0, 1, "mkdir", f"/d{n}", None, "ok", None),
                                     "me", None, None))
    assert j.path.stat().st_size > 4096
    j.close(remove=False)
    j = audit_journal.Journal(ws, 424243, 1)  # appends after the last line, not after the tail
    j.append(audit_journal.Entry(101, NewRecord(101, "a", 0, 1, "rmdir", "/d1", None, "ok", None),
                                 "me", None, None))
    assert [e.n for e in audit_journal.read_entries(j.path)] == list(range(1, 102))
    j.close(remove=True)
    assert not j.path.exists()


async def test_record_durable_with_power_durability_waits_for_the_commit(ws):
    async with running(ws, {"audit": {"durability": "power"}}) as log:
        await log.record_durable(ev("unlink", "/x"))
        assert raw(ws).execute("SELECT COUNT(*) FROM audit_log").fetchone() == (1,)
        assert log._journal.size == 0


async def test_acknowledged_records_are_retried_after_a_failed_commit(ws, monkeypatch):
    fail_first_commit(monkeypatch, "database is locked")
    async with running(ws) as log:
        await log.record_durable(ev("unlink", "/acked"))
        log.record_nowait(ev("unlink", "/denied", result="EACCES"))
        await log.flush()
        await log.flush()
    assert [r["path"] for r in iter_records(ws)] == ["/acked", "/denied"]


async def test_flush_waits_for_a_commit_already_under_way(ws):
    async with running(ws) as log:
        log.record_nowait(ev("unlink", "/a"))
        # Let the writer take the batch into its commit thread, then flush.
        while log._committing is None and log._batch.items:
            await trio.sleep(0)
        await log.flush()
        assert raw(ws).execute("SELECT COUNT(*) FROM audit_log").fetchone() == (1,)


async def test_recent_agents_for_status(ws):
    async with running(ws) as log:
        await log.record(ev(agent="old"))
        t = time.time_ns()
        await log.record(ev(agent="alice"))
        await log.record(ev(agent="bob"))
        await log.record(ev(agent="alice"))
    conn = raw(ws)
    rows = store.recent_agents(conn, t)
    assert [(a, n) for a, n, _ts in rows] == [("alice", 2), ("bob", 1)]
    assert rows[0][2] >= rows[1][2] >= t


_FILL_JOURNAL = r"""
import sys
from pathlib import Path
from agentfs.core import audit_journal
from agentfs.store.audit_log import NewRecord

class Ws:  # only run_path is used
    run_path = Path(sys.argv[1])

audit_journal._CAPACITY = 64 << 10
j = audit_journal.Journal(Ws(), 424244, 1)
n = 0
try:
    while True:
        n += 1
        j.append(audit_journal.Entry(n, NewRecord(n, "a", 0, 1, "mkdir", "/d" * 200, None, "ok", None),
                                     "me", None, None))
except OSError as e:
    print(e.errno, n - 1, flush=True)
"""


def test_a_full_disk_fails_a_journal_append_with_enospc_and_never_kills_the_daemon(tmp_path):
    """Mapped pages without blocks behind them would answer a full disk with SIGBUS."""
    import errno
    import subprocess
    import sys

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], check=True)
    try:
        p = subprocess.run([sys.executable, "-c", _FILL_JOURNAL, str(small)], capture_output=True,
                           text=True, timeout=60)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=True)
    assert p.returncode == 0, p.stderr
    code, appended = map(int, p.stdout.split())
    assert code == errno.ENOSPC and appended > 100


def test_a_rewrite_that_finds_the_disk_full_keeps_the_journal_in_use(tmp_path, monkeypatch):
    """The replacement is allocated and mapped before its rename, or appends would go to an unlinked file."""
    import errno
    import subprocess
    from pathlib import Path

    from agentfs.core import audit_journal
    from agentfs.store.audit_log import NewRecord

    class Ws:
        run_path = tmp_path / "small"

    Ws.run_path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(Ws.run_path)], check=True)
    try:
        monkeypatch.setattr(audit_journal, "_CAPACITY", 64 << 10)

        def entry(n: int) -> audit_journal.Entry:
            return audit_journal.Entry(n, NewRecord(n, "a", 0, 1, "mkdir", f"/d{n}", None, "ok", None),
                                       "me", None, None)

        j = audit_journal.Journal(Ws(), 424245, 1)
        j.append(entry(1))
        filler = Path(Ws.run_path / "filler")
        with open(filler, "wb") as f:
            try:
                f.write(bytes(256 << 10))
            except OSError:
                pass
        with pytest.raises(OSError) as e:
            j.rewrite([entry(1)])
        assert e.value.errno == errno.ENOSPC
        j.append(entry(2))  # still the journal on disk, not an unlinked file
        assert [x.n for x in audit_journal.read_entries(j.path)] == [1, 2]
        assert sorted(p.name for p in Ws.run_path.iterdir()) == sorted([j.path.name, "filler"])
        j.close(remove=True)
    finally:
        subprocess.run(["umount", "-l", str(Ws.run_path)], check=True)


def test_a_reopened_journal_appends_after_its_last_whole_line(ws):
    from agentfs.core import audit_journal
    from agentfs.store.audit_log import NewRecord

    def entry(n: int) -> audit_journal.Entry:
        return audit_journal.Entry(n, NewRecord(n, "a", 0, 1, "mkdir", f"/d{n}", None, "ok", None),
                                   "me", None, None)

    j = audit_journal.Journal(ws, 424246, 1)
    j.append(entry(1))
    j._map[j.size:j.size + 5] = b'[2,17'  # torn: the process died mid-copy
    j._map.close()
    os.close(j.fd)
    j = audit_journal.Journal(ws, 424246, 1)
    j.append(entry(3))
    assert [e.n for e in audit_journal.read_entries(j.path)] == [1, 3]
    j.close(remove=True)
