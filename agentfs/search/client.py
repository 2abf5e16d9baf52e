"""Asking the sidecar: a sync client for the CLI, an async (trio) one for FUSE.

Protocol: one JSON object a line each way over the sidecar's abstract Unix
socket. Request `{"query", "k", "path_prefix", "agent"?}` (or
`{"op": "status"}`); response `{"hits": [...], "mode", "fresh"}` or
`{"error": "..."}`.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from agentfs.errors import AgentfsError
from agentfs.search.ranking import Hit, search
from agentfs.search.sidecar import socket_address
from agentfs.workspace import Workspace

MAX_RESPONSE = 16 * 1024 * 1024


class SearchUnavailable(AgentfsError):
    """No sidecar answers for this workspace (or it refused the request)."""


def _request(query: str, k: int, path_prefix: str | None, agent: str | None) -> bytes:
    req: dict[str, Any] = {"query": query, "k": int(k), "path_prefix": path_prefix}
    if agent is not None:
        req["agent"] = agent
    return json.dumps(req).encode() + b"\n"


def _parse(raw: bytes) -> dict[str, Any]:
    if not raw.endswith(b"\n"):
        raise SearchUnavailable("the search sidecar closed the connection without an answer")
    resp = json.loads(raw)
    if "error" in resp:
        raise SearchUnavailable(f"search failed: {resp['error']}")
    return resp


def request(ws_root: Path, payload: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to the sidecar of `ws_root`; SearchUnavailable if none runs."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(socket_address(ws_root))
        except (ConnectionRefusedError, FileNotFoundError) as e:
            raise SearchUnavailable(
                f"no search sidecar runs for {ws_root}: start one with `agentfs index -w {ws_root}`") from e
        s.sendall(json.dumps(payload).encode() + b"\n")
        buf = bytearray()
        while not buf.endswith(b"\n") and len(buf) < MAX_RESPONSE:
            part = s.recv(65536)
            if not part:
                break
            buf += part
    except socket.timeout as e:
        raise SearchUnavailable(f"the search sidecar of {ws_root} did not answer within {timeout:g}s") from e
    finally:
        s.close()
    return _parse(bytes(buf))


def query_full(ws_root: Path, query: str, *, k: int = 10, path_prefix: str | None = None,
               agent: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """The sidecar's whole answer: hits (as dicts), mode and freshness."""
    req = json.loads(_request(query, k, path_prefix, agent))
    return request(ws_root, req, timeout)


def query(ws_root: Path, query: str, *, k: int = 10, path_prefix: str | None = None,
          agent: str | None = None, timeout: float = 5.0) -> list[Hit]:
    resp = query_full(ws_root, query, k=k, path_prefix=path_prefix, agent=agent, timeout=timeout)
    return [Hit.from_dict(h) for h in resp.get("hits", [])]


async def query_async(ws_root: Path, query: str, *, k: int = 10, path_prefix: str | None = None,
                      agent: str | None = None, timeout: float = 5.0) -> list[Hit]:
    """For the FUSE daemon (root): hits that `agent` may read; never blocks the trio loop."""
    import trio

    with trio.move_on_after(timeout) as scope:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                await sock.connect(socket_address(ws_root))
            except (ConnectionRefusedError, FileNotFoundError) as e:
                raise SearchUnavailable(f"no search sidecar runs for {ws_root}") from e
            data = _request(query, k, path_prefix, agent)
            while data:
                sent = await sock.send(data)
                data = data[sent:]
            buf = bytearray()
            while not buf.endswith(b"\n") and len(buf) < MAX_RESPONSE:
                part = await sock.recv(65536)
                if not part:
                    break
                buf += part
        finally:
            sock.close()
        return [Hit.from_dict(h) for h in _parse(bytes(buf)).get("hits", [])]
    assert scope.cancelled_caught
    raise SearchUnavailable(f"the search sidecar of {ws_root} did not answer within {timeout:g}s")


def query_direct(ws: Workspace, query: str, *, k: int = 10, path_prefix: str | None = None) -> dict[str, Any]:
    """Root without a sidecar: read the index ourselves through the same ranking code.

    Inside an `agentfs run` session the hits are filtered for the session's
    agent, as the sidecar would filter them.
    """
    from agentfs.search.access import Access
    from agentfs.search.embedder import configured_name, load_embedder
    from agentfs.search.index import IndexDB

    if not ws.index_db.exists():
        raise SearchUnavailable(f"{ws.root} has no search index yet: run `agentfs index -w {ws.root}`")
    access = Access(ws)
    agent = access.session_agent(os.getuid(), os.getgid(), os.getpid())
    allowed = access.reader_filter(agent) if agent is not None else None
    db = IndexDB(ws.index_db, readonly=True)
    try:
        embed = None
        note = None
        floor = 0.0
        name = configured_name(ws.policy_path)
        if db.has_vectors() and db.meta("embedder") == name:
            emb, note = load_embedder(name)
            embed = emb.embed if emb is not None else None
            floor = float(getattr(emb, "min_similarity", 0.0))
        hits, mode = search(db, query, k=k, path_prefix=path_prefix, embed=embed, allowed=allowed,
                            min_similarity=floor)
        stats = db.stats()
    finally:
        db.close()
    return {"hits": [h.to_dict() for h in hits], "mode": mode, "sidecar": False, "note": note, "agent": agent,
            "fresh": {"pending": stats["pending"] if embed else 0, "files": stats["files"],
                      "last_indexed": stats["last_indexed"], "catching_up": False}}


def search_any(ws: Workspace, query: str, *, k: int = 10, path_prefix: str | None = None,
               timeout: float = 30.0) -> dict[str, Any]:
    """The CLI's path: the sidecar if one runs, else (root only) the index directly."""
    try:
        return query_full(ws.root, query, k=k, path_prefix=path_prefix, timeout=timeout)
    except SearchUnavailable as e:
        if os.geteuid() != 0 or "no search sidecar" not in str(e):
            raise
    return query_direct(ws, query, k=k, path_prefix=path_prefix)


def index_status(ws: Workspace) -> dict[str, Any]:
    """For `agentfs status`: files, chunks, skipped binaries, pending, last indexed, mode."""
    try:
        st = request(ws.root, {"op": "status"}, timeout=2.0)["status"]
        return st
    except SearchUnavailable:
        pass
    out: dict[str, Any] = {"running": False, "files": 0, "chunks": 0, "pending": 0, "skipped": {},
                           "skipped_binary": 0, "last_indexed": None, "mode": None}
    if os.geteuid() != 0 or not ws.index_db.exists():
        return out
    from agentfs.search.index import IndexDB

    try:
        db = IndexDB(ws.index_db, readonly=True, timeout=2.0)
    except Exception:
        return out
    try:
        out.update(db.stats())
        out["mode"] = "hybrid" if db.has_vectors() and db.meta("embedder") else "bm25"
    finally:
        db.close()
    return out
