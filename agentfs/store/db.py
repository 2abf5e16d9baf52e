"""Connections to the workspace state database and its schema.

Every table module in `agentfs.store` registers its DDL with
`register_schema`; `connect` makes sure all of it exists. Several daemons,
the CLI and the indexer open the same file, so the database runs in WAL mode
with a busy timeout instead of failing on contention.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import pkgutil
import sqlite3 as _stdlib_sqlite3
from types import ModuleType
from typing import TYPE_CHECKING, Iterator

from agentfs.errors import WorkspaceError

if TYPE_CHECKING:
    from agentfs.workspace import Workspace

log = logging.getLogger(__name__)

_SCHEMAS: dict[str, str] = {}
_discovered = False


def sqlite_module() -> ModuleType:
    """An sqlite3 module that can load extensions (sqlite-vec needs it).

    Debian's Python can; pyenv and some other builds lack
    `enable_load_extension`, in which case pysqlite3 (pysqlite3-binary)
    is used when installed.
    """
    if hasattr(_stdlib_sqlite3.Connection, "enable_load_extension"):
        return _stdlib_sqlite3
    try:
        return importlib.import_module("pysqlite3.dbapi2")
    except ImportError:
        return _stdlib_sqlite3


def register_schema(name: str, ddl: str) -> None:
    """Declare the tables of one store module; DDL must be idempotent (IF NOT EXISTS)."""
    _SCHEMAS[name] = ddl


def _discover() -> None:
    """Import every table module so that all schemas are registered."""
    global _discovered
    if _discovered:
        return
    import agentfs.store as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "db":
            importlib.import_module(f"agentfs.store.{info.name}")
    _discovered = True


def connect(ws: "Workspace", *, readonly: bool = False, timeout: float = 30.0) -> _stdlib_sqlite3.Connection:
    """Open the workspace state database with every schema in place."""
    sqlite = sqlite_module()
    path = ws.state_db
    try:
        if readonly:
            conn = sqlite.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout,
                                  check_same_thread=False, isolation_level=None)
        else:
            conn = sqlite.connect(str(path), timeout=timeout, check_same_thread=False,
                                  isolation_level=None)
    except sqlite.OperationalError as e:
        raise WorkspaceError(f"cannot open the workspace state {path}: {e} (are you root?)") from e
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    if not readonly:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        _discover()
        with conn:
            for ddl in _SCHEMAS.values():
                conn.executescript(ddl)
    return conn


@contextlib.contextmanager
def immediate(conn: _stdlib_sqlite3.Connection) -> Iterator[_stdlib_sqlite3.Connection]:
    """One write transaction taken up front (BEGIN IMMEDIATE), committed or rolled back.

    Taking the write lock first means two daemons never both read a state
    (the audit head, the lock table) and then both act on it.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
