"""The hash chain that makes the audit log tamper-evident.

Each record's hash is SHA-256 over a canonical JSON array of the previous
record's hash and every field of the record. Changing, inserting or deleting
a record therefore breaks the link to the next one; rewriting the whole tail
consistently is only caught against a head someone pinned (`head`), which is
why the head is exported.

SHA-256 because records are small (the cost is per record, not per byte),
`hashlib` runs it with the CPU's SHA extensions, and every outside tool can
recompute it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterator

# The hashed bytes: the same output as json.dumps(..., ensure_ascii=True,
# separators=(",", ":")), the format outside tools recompute, from
# audit_journal's C encoder built once (JSONEncoder.encode rebuilds it on
# every call, an eighth of the commit helper's time per record).
from agentfs.core.audit_journal import COMPACT as _COMPACT
from agentfs.store import audit_log as store
from agentfs.store import db
from agentfs.workspace import Workspace

GENESIS = "0" * 64


def canonical(prev_hash: str, seq: int, ts_ns: int, agent: str, uid: int, pid: int, op: str,
              path: str, new_path: str | None, result: str, details: str | None) -> bytes:
    """The bytes a record's hash covers; `details` is the stored JSON text, hashed as is."""
    return _COMPACT([prev_hash, seq, ts_ns, agent, uid, pid, op, path, new_path, result,
                     details]).encode("ascii")


def record_hash(prev_hash: str, seq: int, r: store.NewRecord) -> str:
    return hashlib.sha256(canonical(prev_hash, seq, r.ts_ns, r.agent, r.uid, r.pid, r.op, r.path,
                                    r.new_path, r.result, r.details)).hexdigest()


def hash_of_row(row: dict[str, Any]) -> str:
    """Recompute a stored record's hash from its fields and its prev_hash."""
    return hashlib.sha256(canonical(row["prev_hash"], row["seq"], row["ts_ns"], row["agent"],
                                    row["uid"], row["pid"], row["op"], row["path"], row["new_path"],
                                    row["result"], row["details"])).hexdigest()


@dataclass
class VerifyResult:
    """What `verify` found; `first_bad_seq` names the first record that breaks the chain."""

    ok: bool
    count: int
    first_bad_seq: int | None = None
    reason: str = ""
    head_seq: int = 0
    head_hash: str = GENESIS


class ChainChecker:
    """Feeds records in seq order and stops at the first one that breaks the chain."""

    def __init__(self) -> None:
        self.seq = 0
        self.hash = GENESIS
        self.count = 0
        self.bad: tuple[int, str] | None = None

    def feed(self, row: dict[str, Any]) -> bool:
        seq = row["seq"]
        if seq != self.seq + 1:
            missing = f"{self.seq + 1}..{seq - 1}" if seq > self.seq + 2 else str(self.seq + 1)
            self.bad = (seq, f"records missing before seq {seq} (expected {self.seq + 1}; gap {missing})"
                        if seq > self.seq else f"seq {seq} out of order after {self.seq}")
            return False
        if row["prev_hash"] != self.hash:
            self.bad = (seq, f"seq {seq}: prev_hash does not match the hash of seq {self.seq}"
                             " (a record before it was changed, inserted or deleted)")
            return False
        if hash_of_row(row) != row["hash"]:
            self.bad = (seq, f"seq {seq}: contents do not match its hash (the record was changed)")
            return False
        self.seq, self.hash = seq, row["hash"]
        self.count += 1
        return True

    def result(self) -> VerifyResult:
        if self.bad:
            return VerifyResult(False, self.count, self.bad[0], self.bad[1], self.seq, self.hash)
        return VerifyResult(True, self.count, None, "", self.seq, self.hash)


def verify(ws: Workspace) -> VerifyResult:
    """Check the whole chain: the archive segments, then the live table, as one chain."""
    from agentfs.core.audit_archive import iter_archived

    checker = ChainChecker()
    conn = db.connect(ws)
    try:
        archived = store.archived_meta(conn)
        try:
            for row in iter_archived(ws):
                if not checker.feed(row):
                    return checker.result()
        except ValueError as e:
            return VerifyResult(False, checker.count, checker.seq + 1, str(e), checker.seq, checker.hash)
        if archived and checker.seq < archived[0]:
            return VerifyResult(False, checker.count, checker.seq + 1,
                                f"archive segments end at seq {checker.seq} but the log says records up to "
                                f"{archived[0]} were archived (a segment is missing)",
                                checker.seq, checker.hash)
        for row in _live_after(conn, checker.seq):
            if not checker.feed(row):
                break
        return checker.result()
    finally:
        conn.close()


def _live_after(conn: Any, seq: int) -> Iterator[dict[str, Any]]:
    """Live records after the archived part (a crash mid-archive may leave both copies)."""
    yield from store.iter_all(conn, after_seq=seq)


def head(ws: Workspace) -> tuple[int, str]:
    """(seq, hash) of the newest record, so an outsider can pin the log as it is now."""
    conn = db.connect(ws)
    try:
        return store.read_head(conn) or (0, GENESIS)
    finally:
        conn.close()


def check_pin(ws: Workspace, seq: int, hash_: str) -> str | None:
    """None if record `seq` still carries the pinned hash; else what is wrong."""
    from agentfs.core.audit_archive import iter_archived

    conn = db.connect(ws)
    try:
        for row in store.select(conn, after_seq=seq - 1, limit=1):
            if row["seq"] == seq:
                return None if row["hash"] == hash_ else (
                    f"seq {seq} has hash {row['hash']}, not the pinned {hash_}: the log was rewritten")
    finally:
        conn.close()
    for row in iter_archived(ws):
        if row["seq"] == seq:
            return None if row["hash"] == hash_ else (
                f"seq {seq} has hash {row['hash']}, not the pinned {hash_}: the log was rewritten")
    return f"seq {seq} is not in the log any more (the log was truncated)"
