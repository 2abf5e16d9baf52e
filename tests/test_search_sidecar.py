"""The sidecar as a process: the socket protocol, freshness, status, and who sees what."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import trio

from agentfs.search.client import SearchUnavailable, index_status, query, query_async, query_full
from agentfs.search.sidecar import socket_address
from agentfs.workspace import Workspace
from conftest import AGENTFS, make_workspace, run, wait_for

POLICY = """\
[workspace]
default_agent = "nobody"

[agents.nobody]
rules = []

[agents.researcher]
uids = [2901]
rules = [{ path = "/research/**", allow = "r" }]

[agents.writer]
uids = [2902]
rules = [{ path = "/drafts/**", allow = "rwcdl" }]

[search]
embedder = "none"
"""

WORD = "heliotrope"


def _fill(ws: Workspace) -> None:
    for d in ("research", "private", "drafts"):
        (ws.data_path / d).mkdir()
    (ws.data_path / "research" / "open.md").write_text(f"# Open\n\nThe {WORD} report for everyone.\n")
    (ws.data_path / "private" / "secret.md").write_text(f"# Secret\n\n{WORD} {WORD} private plans.\n")
    (ws.data_path / "drafts" / "d.md").write_text("# Draft\n\nnothing to see\n")
    (ws.data_path / "logo.png").write_bytes(b"\x89PNG\0\0binary")


def _start(ws: Workspace, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([AGENTFS, "index", "-w", str(ws.root), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"sidecar exited: {proc.stderr.read()}")
        try:
            return not query_full(ws.root, "x", k=1)["fresh"]["catching_up"]
        except SearchUnavailable:
            return False

    wait_for(ready, timeout=60, interval=0.05, what="the sidecar to catch up")
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def sidecar(workdir: Path) -> Iterator[Workspace]:
    ws = make_workspace(workdir, POLICY)
    _fill(ws)
    proc = _start(ws)
    try:
        yield ws
    finally:
        _stop(proc)


def _paths(hits) -> set[str]:
    return {h.path if hasattr(h, "path") else h["path"] for h in hits}


def test_root_queries_unfiltered_and_as_an_agent(sidecar: Workspace):
    ws = sidecar
    resp = query_full(ws.root, WORD)
    assert resp["mode"] == "bm25"
    assert _paths(resp["hits"]) == {"/research/open.md", "/private/secret.md"}
    assert resp["hits"][0]["start_line"] >= 1 and WORD in resp["hits"][0]["snippet"]
    assert _paths(query(ws.root, WORD, agent="researcher")) == {"/research/open.md"}
    assert _paths(query(ws.root, WORD, agent="writer")) == set()
    assert _paths(query(ws.root, WORD, agent="no-such-agent")) == set()


def test_a_new_file_is_searchable_within_seconds_and_edits_and_deletes_follow(sidecar: Workspace):
    ws = sidecar
    p = ws.data_path / "research" / "new.md"
    with open(p, "w") as f:
        f.write("# New\n\nmarmalade recipe\n")
    t0 = time.monotonic()
    wait_for(lambda: "/research/new.md" in _paths(query(ws.root, "marmalade")), timeout=10,
             what="the new file to be searchable")
    assert time.monotonic() - t0 < 5
    p.write_text("# New\n\nquince jelly\n")
    wait_for(lambda: "/research/new.md" in _paths(query(ws.root, "quince")), timeout=10, what="the edit")
    assert "/research/new.md" not in _paths(query(ws.root, "marmalade"))
    os.rename(p, ws.data_path / "research" / "moved.md")
    wait_for(lambda: _paths(query(ws.root, "quince")) == {"/research/moved.md"}, timeout=10, what="the rename")
    os.unlink(ws.data_path / "research" / "moved.md")
    wait_for(lambda: not _paths(query(ws.root, "quince")), timeout=10, what="the delete")


def test_status_counts_files_skips_and_mode(sidecar: Workspace):
    st = index_status(sidecar)
    assert st["running"] is True and st["mode"] == "bm25"
    assert st["files"] == 3 and st["skipped_binary"] == 1 and st["pending"] == 0
    assert "keyword" in st["note"]
    cli = run([AGENTFS, "search", "-w", str(sidecar.root), WORD])
    assert "/research/open.md" in cli.stdout and "keyword search only" in cli.stderr


def test_cli_json_lists_hits_best_first(sidecar: Workspace):
    r = run([AGENTFS, "search", "-w", str(sidecar.root), "--json", "--k", "1", WORD])
    hits = json.loads(r.stdout)
    assert len(hits) == 1
    assert set(hits[0]) >= {"path", "score", "start_line", "end_line", "snippet"}
    assert hits[0]["path"] == "/private/secret.md"  # the word twice ranks higher
    r = run([AGENTFS, "search", "-w", str(sidecar.root), "--json", "--path", "/research", WORD])
    assert [h["path"] for h in json.loads(r.stdout)] == ["/research/open.md"]


def test_a_non_root_peer_sees_only_what_its_agent_may_read(sidecar: Workspace, users):
    ws = sidecar
    r = run([AGENTFS, "search", "-w", str(ws.root), "--json", WORD], user="agentfs-t1")
    assert [h["path"] for h in json.loads(r.stdout)] == ["/research/open.md"]
    r = run([AGENTFS, "search", "-w", str(ws.root), "--json", WORD], user="agentfs-t2")
    assert json.loads(r.stdout) == []
    # A non-root peer cannot claim another agent: the request's "agent" is ignored.
    code = ("import json, socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(chr(0) + sys.argv[1]);"
            "s.sendall(json.dumps({'query': sys.argv[2], 'agent': 'researcher'}).encode() + b'\\n');"
            "print(s.makefile().readline())")
    import sys

    r = run([sys.executable, "-c", code, socket_address(ws.root)[1:], WORD], user="agentfs-t3")
    resp = json.loads(r.stdout)
    assert resp["hits"] == [] and resp["agent"] == "nobody"


def test_root_inside_an_agentfs_run_session_searches_as_its_agent(sidecar: Workspace):
    """Root is unfiltered on the command line, but not inside `agentfs run --agent NAME`."""
    ws = sidecar
    cmd = [AGENTFS, "search", "-w", str(ws.root), "--json", WORD]
    assert _paths(json.loads(run(cmd).stdout)) == {"/research/open.md", "/private/secret.md"}
    r = run([AGENTFS, "run", "-w", str(ws.root), "--agent", "researcher", "--", *cmd])
    assert _paths(json.loads(r.stdout)) == {"/research/open.md"}
    r = run([AGENTFS, "run", "-w", str(ws.root), "--agent", "writer", "--", *cmd])
    assert json.loads(r.stdout) == []


async def test_async_client_for_the_fuse_layer(sidecar: Workspace):
    hits = await query_async(sidecar.root, WORD, agent="researcher")
    assert [h.path for h in hits] == ["/research/open.md"]
    with trio.fail_after(10):
        with pytest.raises(SearchUnavailable):
            await query_async(sidecar.root / "nowhere", WORD)


def test_bad_requests_get_errors_and_the_server_survives(sidecar: Workspace):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(socket_address(sidecar.root))
    f = s.makefile("rwb")
    for bad in (b"not json\n", b"[1,2]\n", b'{"k": 3}\n', b'{"query": "x", "k": "many"}\n'):
        f.write(bad)
        f.flush()
        assert "error" in json.loads(f.readline())
    f.write(json.dumps({"query": WORD}).encode() + b"\n")
    f.flush()
    assert json.loads(f.readline())["hits"]
    s.close()


def test_no_sidecar_root_reads_the_index_and_others_get_one_line(workdir: Path, users):
    ws = make_workspace(workdir, POLICY)
    _fill(ws)
    with pytest.raises(SearchUnavailable):
        query(ws.root, WORD)
    r = run([AGENTFS, "search", "-w", str(ws.root), WORD], check=False)
    assert r.returncode != 0 and "agentfs index" in r.stderr and "Traceback" not in r.stderr
    run([AGENTFS, "index", "-w", str(ws.root), "--once"], timeout=120)
    r = run([AGENTFS, "search", "-w", str(ws.root), "--json", WORD])
    assert _paths(json.loads(r.stdout)) == {"/research/open.md", "/private/secret.md"}
    # Reading the index directly, root in a session still gets its agent's view.
    r = run([AGENTFS, "run", "-w", str(ws.root), "--agent", "researcher", "--",
             AGENTFS, "search", "-w", str(ws.root), "--json", WORD])
    assert _paths(json.loads(r.stdout)) == {"/research/open.md"}
    r = run([AGENTFS, "search", "-w", str(ws.root), WORD], user="agentfs-t1", check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "agentfs index" in r.stderr
    assert not index_status(ws)["running"] and index_status(ws)["files"] == 3


def test_rebuild_starts_over_and_a_second_sidecar_is_refused(sidecar: Workspace):
    r = run([AGENTFS, "index", "-w", str(sidecar.root)], check=False, timeout=60)
    assert r.returncode != 0 and "already running" in r.stderr


def test_once_with_rebuild(workdir: Path):
    ws = make_workspace(workdir, POLICY)
    _fill(ws)
    run([AGENTFS, "index", "-w", str(ws.root), "--once"], timeout=120)
    (ws.data_path / "research" / "open.md").unlink()
    r = run([AGENTFS, "index", "-w", str(ws.root), "--once"], timeout=120)
    assert "0 indexed, 1 removed" in r.stderr
    r = run([AGENTFS, "index", "-w", str(ws.root), "--once", "--rebuild"], timeout=120)
    assert "3 files seen, 3 indexed, 0 removed" in r.stderr


def test_audit_feed_reports_changed_paths(workdir: Path):
    from agentfs.search.feed import AuditFeed
    from agentfs.store import audit_log, db

    ws = make_workspace(workdir, POLICY)
    feed = AuditFeed.open(ws)
    assert feed is not None and feed.head() == 0
    conn = db.connect(ws)
    try:
        recs = [audit_log.NewRecord(1, "writer", 2902, 1, op, path, new, result, None)
                for op, path, new, result in (("write", "/drafts/a.md", None, "ok"),
                                              ("rename", "/drafts/b.md", "/drafts/c.md", "ok"),
                                              ("unlink", "/drafts/d.md", None, "EACCES"))]
        audit_log.append(conn, recs, "genesis", lambda prev, seq, r: f"h{seq}")
    finally:
        conn.close()
    paths, seq = feed.changes(0)
    assert paths == ["/drafts/a.md", "/drafts/b.md", "/drafts/c.md"] and seq == 3
    assert feed.changes(seq) == ([], 3)
    feed.close()


def test_changes_through_a_mount_are_searchable_within_seconds(workdir: Path):
    from conftest import OPEN_POLICY, mounted

    ws = make_workspace(workdir, OPEN_POLICY + '\n[search]\nembedder = "none"\n')
    proc = _start(ws)
    try:
        with mounted(ws, workdir / "mnt") as m:
            # Give the sidecar a moment to notice the mount and trust the feed.
            times = []
            for i in range(3):
                word = f"pomegranate{i}x"
                t0 = time.monotonic()
                with open(m.path / f"f{i}.md", "w") as f:
                    f.write(f"# Fruit\n\n{word}\n")
                wait_for(lambda: f"/f{i}.md" in _paths(query(ws.root, word)), timeout=15,
                         what="a file written through the mount to be searchable")
                times.append(time.monotonic() - t0)
            os.rename(m.path / "f0.md", m.path / "g0.md")
            wait_for(lambda: _paths(query(ws.root, "pomegranate0x")) == {"/g0.md"}, timeout=15,
                     what="a rename through the mount")
            os.unlink(m.path / "g0.md")
            wait_for(lambda: not _paths(query(ws.root, "pomegranate0x")), timeout=15,
                     what="a delete through the mount")
            assert sorted(times)[1] < 5, times
    finally:
        _stop(proc)


def test_hybrid_sidecar_embeds_in_the_background_and_finds_paraphrases(workdir: Path):
    ws = make_workspace(workdir, POLICY.replace('embedder = "none"', 'embedder = "minilm"'))
    (ws.data_path / "garage.md").write_text("# Garage\n\nOur mechanic fixes broken car engines.\n")
    (ws.data_path / "kitchen.md").write_text("# Kitchen\n\nBake the bread for forty minutes.\n")
    proc = _start(ws)
    try:
        st = wait_for(lambda: (s := index_status(ws))["pending"] == 0 and s["chunks"] == 2 and s,
                      timeout=60, what="the chunks to be embedded")
        assert st["mode"] == "hybrid" and "minilm" in st["note"]
        resp = query_full(ws.root, "automobile repair")
        assert resp["mode"] == "hybrid"
        assert [h["path"] for h in resp["hits"]] == ["/garage.md"]
        (ws.data_path / "garden.md").write_text("# Garden\n\nWater the tomato plants.\n")
        wait_for(lambda: [h.path for h in query(ws.root, "irrigating vegetables")][:1] == ["/garden.md"],
                 timeout=30, what="a new file to be embedded and found by meaning")
    finally:
        _stop(proc)
