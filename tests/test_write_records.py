"""What a write handle leaves behind through the governed mount: one record, a hash, no side effects."""

from __future__ import annotations

import os
import time

from agentfs.core.audit import iter_records
from agentfs.core.audit_content import ContentHasher
from conftest import wait_for


def _writes(ws, path):
    return [r for r in iter_records(ws, path_glob=path) if r["op"] == "write"]


def test_one_aggregated_record_with_the_hash_of_the_result(mount):
    p = mount.path / "agg.bin"
    with open(p, "wb") as f:
        for i in range(10):
            f.write(bytes([i]) * 1000)
        f.seek(50_000)
        f.write(b"tail")
    [rec] = wait_for(lambda: _writes(mount.ws, "/agg.bin"), what="the write record")
    d = rec["details"]
    assert d["writes"] >= 2 and d["bytes"] == 10_004 and d["size"] == 50_004
    assert d["ranges"] == [[0, 10_000], [50_000, 50_004]]
    assert d["hash"] == ContentHasher().hash_path(mount.ws.data_path / "agg.bin")


def test_a_huge_sparse_write_is_recorded_without_hashing_its_holes(mount):
    p = mount.path / "sparse.bin"
    with open(p, "wb") as f:
        f.seek(8 << 30)
        f.write(b"x")
    start = time.monotonic()
    [rec] = wait_for(lambda: _writes(mount.ws, "/sparse.bin"), timeout=30, what="the write record")
    assert time.monotonic() - start < 5, "hashing 8 GiB of holes would take far longer"
    assert rec["details"]["size"] == (8 << 30) + 1
    assert rec["details"]["hash"] is None and rec["details"]["hash_skipped"] == "sparse"
    assert mount.answers()


def test_auditing_a_write_does_not_move_the_files_atime(mount):
    p = mount.path / "atime.txt"
    p.write_text("first")
    old = 1_000_000_000 * 1_000_000_000
    os.utime(p, ns=(old, old))
    with open(p, "a") as f:
        f.write("more")
    wait_for(lambda: len(_writes(mount.ws, "/atime.txt")) == 2, what="both write records")
    assert os.stat(mount.ws.data_path / "atime.txt").st_atime_ns == old


def test_chmod_and_chown_to_the_same_values_leave_no_record_but_real_changes_do(mount):
    p = mount.path / "meta.txt"
    p.write_text("x")
    os.chmod(p, 0o644)
    os.chown(p, 0, 0)
    os.chmod(p, 0o600)
    os.utime(p, ns=(1_000_000_000, 2_000_000_000))
    def setattrs():
        return [r["details"] for r in iter_records(mount.ws, path_glob="/meta.txt") if r["op"] == "setattr"]
    got = wait_for(lambda: len(setattrs()) >= 2 and setattrs(), what="the setattr records")
    assert got == [{"mode": "0o600"}, {"atime_ns": 1_000_000_000, "mtime_ns": 2_000_000_000}]


def _hash_of(data: bytes) -> str:
    return ContentHasher().hash_bytes(data)


def test_a_small_file_written_whole_is_hashed_from_what_was_written(mount):
    p = mount.path / "whole.txt"
    with open(p, "wb", buffering=0) as f:
        f.write(b"first part, ")
        f.write(b"second part")
    [rec] = wait_for(lambda: _writes(mount.ws, "/whole.txt"), what="the write record")
    assert rec["details"]["hash"] == _hash_of(b"first part, second part")
    assert rec["details"]["writes"] == 2


def test_another_handles_later_write_makes_the_hash_that_of_the_file(mount):
    # Handle a's kept bytes stop being the file once b writes over them.
    p = mount.path / "two.txt"
    a = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(a, b"a" * 10)
        b = os.open(p, os.O_WRONLY)
        os.write(b, b"bbbb")
        os.close(b)
    finally:
        os.close(a)
    final = b"bbbb" + b"a" * 6
    assert (mount.ws.data_path / "two.txt").read_bytes() == final
    recs = wait_for(lambda: len(_writes(mount.ws, "/two.txt")) == 2 and _writes(mount.ws, "/two.txt"),
                    what="both write records")
    assert [r["details"]["hash"] for r in recs] == [_hash_of(final)] * 2


def test_a_truncation_after_the_writes_makes_the_hash_that_of_the_file(mount):
    p = mount.path / "cut.txt"
    a = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(a, b"0123456789")
        os.truncate(p, 4)
    finally:
        os.close(a)
    [rec] = wait_for(lambda: _writes(mount.ws, "/cut.txt"), what="the write record")
    assert rec["details"]["size"] == 4 and rec["details"]["hash"] == _hash_of(b"0123")


def test_an_open_with_o_trunc_by_another_handle_makes_the_hash_that_of_the_file(mount):
    p = mount.path / "trunc.txt"
    a = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(a, b"0123456789")
        os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
    finally:
        os.close(a)
    recs = wait_for(lambda: [r for r in _writes(mount.ws, "/trunc.txt") if r["details"]["writes"]],
                    what="the write record")
    assert recs[0]["details"]["size"] == 0 and recs[0]["details"]["hash"] == _hash_of(b"")
