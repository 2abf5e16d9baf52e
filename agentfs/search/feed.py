"""The change feed the sidecar follows: the workspace's audit log.

Every change made through a mount is an audit record naming its path (and
new path for renames), so following the log tells the indexer exactly which
files to look at. Records are read after a sequence number kept in the
index, so a restarted sidecar resumes where it stopped. Without an audit log
(no daemon has run yet, or the audit module is missing), `AuditFeed.open`
returns None and the sidecar relies on its periodic stat scan.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

from agentfs.workspace import Workspace

log = logging.getLogger(__name__)

_CHANGE_OPS_IGNORED = frozenset({"read", "open-r", "opendir", "lookup", "getattr", "lock", "unlock", "search"})


class AuditFeed:
    """Paths changed since a sequence number."""

    def __init__(self, ws: Workspace, records: Any, head: Any) -> None:
        self.ws = ws
        self._records = records  # (ws, after_seq, conn=) -> iterator of dicts
        self._head = head        # (ws) -> newest seq
        self._conn: Any = None   # one read-only state connection, reused while polling

    @classmethod
    def open(cls, ws: Workspace) -> "AuditFeed | None":
        records = _store_records
        for name in ("agentfs.core.audit_query", "agentfs.core.audit"):
            try:
                records = getattr(__import__(name, fromlist=["iter_records"]), "iter_records")
                break
            except (ImportError, AttributeError):
                continue
        feed = cls(ws, records, _store_head)
        try:
            feed.head()
        except Exception as e:  # no state DB or no audit table yet
            log.info("audit feed unavailable (%s): relying on stat scans", e)
            return None
        return feed

    def head(self) -> int:
        return int(self._head(self.ws))

    def changes(self, after_seq: int, limit: int = 10000) -> tuple[list[str], int]:
        """(changed paths, last seq read) for records after `after_seq`."""
        paths: list[str] = []
        last = after_seq
        if self._conn is None:
            self._conn = _connect_state(self.ws)
        try:
            records = list(self._records(self.ws, after_seq, conn=self._conn, limit=limit))
        except Exception:
            self.close()
            raise
        for rec in records:
            last = max(last, int(rec.get("seq", last)))
            result = str(rec.get("result", "ok"))
            if result not in ("ok", "0") or rec.get("op") in _CHANGE_OPS_IGNORED:
                continue
            for key in ("path", "new_path"):
                p = rec.get(key)
                if p and isinstance(p, str) and p.startswith("/"):
                    paths.append(p)
        return paths, last

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _connect_state(ws: Workspace):  # type: ignore[no-untyped-def]
    from agentfs.store import db

    return db.connect(ws, readonly=True, timeout=5.0)


def _store_records(ws: Workspace, after_seq: int, *, conn: Any, limit: int) -> Iterator[dict[str, Any]]:
    from agentfs.store import audit_log

    for n, rec in enumerate(audit_log.iter_all(conn, after_seq=after_seq)):
        if n >= limit:
            return
        yield rec


def _store_head(ws: Workspace) -> int:
    from agentfs.store import audit_log

    conn = _connect_state(ws)
    try:
        head = audit_log.read_head(conn)
        return head[0] if head else 0
    finally:
        conn.close()
