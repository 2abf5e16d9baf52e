"""Shared helpers of the audit tests: a running AuditLog and raw access to its table."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import AsyncIterator, Callable

import trio

from agentfs.core.audit import AuditEvent, AuditLog
from agentfs.workspace import Workspace


@contextlib.asynccontextmanager
async def running(ws: Workspace, settings: Callable[[], dict] | dict | None = None,
                  daemon_id: str = "d1", helper: bool = False) -> AsyncIterator[AuditLog]:
    """An AuditLog whose writer runs for the duration of the block, flushed at the end."""
    cfg = settings if callable(settings) else (lambda d=settings or {}: d)
    log = AuditLog(ws, cfg, daemon_id, helper=helper)
    async with trio.open_nursery() as n:
        await n.start(log.run)
        try:
            yield log
        finally:
            await log.aclose()


def ev(op: str = "create", path: str = "/f", agent: str = "alice", **kw) -> AuditEvent:
    return AuditEvent(op=op, agent=agent, uid=kw.pop("uid", 1000), pid=kw.pop("pid", 4242), path=path, **kw)


def raw(ws: Workspace) -> sqlite3.Connection:
    """A plain connection, as a tamperer with root on the state directory would use."""
    return sqlite3.connect(ws.state_db, isolation_level=None)
