"""Retention: the oldest audit records move to compressed JSON-lines segments.

A segment holds records exactly as stored (with `details` as its canonical
JSON text and both hashes), so `verify` recomputes every hash from the
segments and the live table as one chain. Segments are named by their seq
range and written to a temporary file, synced and renamed before the rows
leave the database.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

from agentfs.store import audit_log as store
from agentfs.store import db
from agentfs.workspace import Workspace

log = logging.getLogger(__name__)

ARCHIVE_DIR = "audit-archive"
# At most this many records a segment (and a transaction).
SEGMENT_RECORDS = 50000
_SEGMENT = re.compile(r"^audit-(\d{12})-(\d{12})\.jsonl\.gz$")


def archive_dir(ws: Workspace) -> Path:
    return ws.state_path / ARCHIVE_DIR


def segments(ws: Workspace) -> list[tuple[int, int, Path]]:
    """(first seq, last seq, file) of every segment, oldest first."""
    d = archive_dir(ws)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _SEGMENT.match(p.name)
        if m:
            out.append((int(m.group(1)), int(m.group(2)), p))
    out.sort()
    return out




def iter_archived(ws: Workspace, after_seq: int = 0) -> Iterator[dict[str, Any]]:
    """Archived records in seq order; a segment that cannot be read raises ValueError."""
    for first, last, path in segments(ws):
        if last <= after_seq:
            continue
        try:
            with gzip.open(path, "rt", encoding="ascii") as f:
                for line in f:
                    row = json.loads(line)
                    if row["seq"] > after_seq:
                        yield row
        except (OSError, EOFError, ValueError, KeyError) as e:
            raise ValueError(f"archive segment {path.name} is unreadable: {e}") from e


def _write_segment(ws: Workspace, rows: list[dict[str, Any]]) -> None:
    d = archive_dir(ws)
    d.mkdir(mode=0o700, exist_ok=True)
    first, last = rows[0]["seq"], rows[-1]["seq"]
    final = d / f"audit-{first:012d}-{last:012d}.jsonl.gz"
    tmp = d / f".{final.name}.tmp"
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
            for r in rows:
                gz.write(json.dumps({k: r[k] for k in store.COLUMNS}, ensure_ascii=True,
                                    separators=(",", ":")).encode("ascii") + b"\n")
        raw.flush()
        os.fsync(raw.fileno())
    # A crash after an earlier rename but before its commit leaves a segment
    # that starts at the same seq: the new one supersedes it.
    for f0, _l0, p in segments(ws):
        if f0 == first and p != final:
            p.unlink()
    os.replace(tmp, final)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def archive(ws: Workspace, keep_records: int = 0, retention_days: float = 0.0,
            *, upto_seq: int | None = None) -> int:
    """Move what the retention settings (or an explicit `upto_seq`) let go; returns how many."""
    conn = db.connect(ws)
    try:
        if upto_seq is None:
            before = (time.time_ns() - int(retention_days * 86400e9)) if retention_days > 0 else None
            upto_seq = store.archive_cutoff(conn, keep_records, before)
        total = 0
        while True:
            first, _last, _count = store.live_bounds(conn)
            if upto_seq <= 0 or first == 0 or first > upto_seq:
                break
            # Bounded segments keep each transaction (which holds appends off) short.
            n = store.archive_range(conn, min(upto_seq, first + SEGMENT_RECORDS - 1),
                                    lambda rows: _write_segment(ws, rows))
            if n == 0:
                break
            total += n
        if total:
            log.info("audit: archived %d records up to seq %d", total, upto_seq)
        return total
    finally:
        conn.close()
