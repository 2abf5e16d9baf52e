"""The indexer sidecar: catches up, follows changes, embeds, answers queries.

Three kinds of threads, so that none waits on another for long:
- the main thread walks the tree once, then follows the audit feed (every
  ~0.2 s) with a stat scan as a safety net, writing text and keywords at once;
- one embedding thread turns pending chunks into vectors in small batches;
- the query server (one thread per connection) reads the index with its own
  connections; a query embeds only its own short text, and vector KNN runs
  on an in-memory copy of the vectors (see `vectors.py`).

The socket lives in the abstract namespace: WS is mode 0700, but agents must
reach the sidecar to search, and a filesystem socket under WS would be out of
their reach. Who is asking comes from SO_PEERCRED, not from the request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import signal
import socket
import socketserver
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable

from agentfs.errors import AgentfsError
from agentfs.search.access import Access
from agentfs.search.embedder import Embedder, configured_name, load_embedder
from agentfs.search.feed import AuditFeed
from agentfs.search.index import IndexDB
from agentfs.search.indexer import Indexer
from agentfs.search.ranking import QueryCache, search
from agentfs.search.vectors import VectorCache
from agentfs.workspace import Workspace, mount_for_workspace

log = logging.getLogger(__name__)

FEED_POLL = 0.2
SAFETY_SCAN = 30.0
EMBED_BATCH = 8
MAX_REQUEST = 64 * 1024
MAX_K = 200


def socket_address(ws_root: Path) -> str:
    """The abstract socket of a workspace's sidecar (no file; reachable by every user)."""
    digest = hashlib.sha256(str(Path(ws_root).resolve()).encode("utf-8", "surrogateescape")).hexdigest()
    return "\0agentfs-search-" + digest[:16]


class Sidecar:
    def __init__(self, ws: Workspace, *, rebuild: bool = False, embedder: str | None = None) -> None:
        self.ws = ws
        self.stop = threading.Event()
        self.wake_embedder = threading.Event()
        self.catching_up = True
        self.db = IndexDB(ws.index_db)
        if rebuild:
            self.db.clear()
        self.embedder_name = embedder or configured_name(ws.policy_path)
        self.embedder: Embedder | None
        self.embedder, self.note = load_embedder(self.embedder_name)
        if self.embedder is not None and not self.db.vec_ok:
            self.note = "sqlite-vec cannot be loaded (SQLite extension loading missing): keyword search only"
            self.embedder = None
        self.vectors: VectorCache | None = None
        self.min_similarity = float(getattr(self.embedder, "min_similarity", 0.0))
        if self.embedder is not None:
            self.db.prepare_vectors(self.embedder_name, int(self.embedder.dim))
            self.vectors = VectorCache(int(self.embedder.dim))
            self.vectors.load(self.db.iter_vectors())
        self.indexer = Indexer(ws, self.db)
        self.access = Access(ws)
        self._pool: queue.LifoQueue[IndexDB] = queue.LifoQueue()
        self._cache = QueryCache()
        self._server: socketserver.BaseServer | None = None
        self._feed: AuditFeed | None = None
        self._feed_seq = 0
        self._threads: list[threading.Thread] = []

    @property
    def mode(self) -> str:
        return "hybrid" if self.embedder is not None else "bm25"

    # -- lifecycle -----------------------------------------------------------------------

    def serve_in_background(self) -> None:
        """Start answering queries (during catch-up too: results say they are partial)."""
        address = socket_address(self.ws.root)
        handler = _handler_for(self)
        try:
            self._server = _Server(address, handler)
        except OSError as e:
            raise AgentfsError(f"a search sidecar is already running for {self.ws.root} ({e})") from e
        t = threading.Thread(target=self._server.serve_forever, name="search-server", daemon=True)
        t.start()
        self._threads.append(t)

    def start_embedding(self) -> None:
        if self.embedder is None:
            return
        t = threading.Thread(target=self._embed_loop, name="search-embed", daemon=True)
        t.start()
        self._threads.append(t)

    def catch_up(self, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        t0 = time.monotonic()
        # Where the feed stands before the walk: changes made during it are replayed.
        self._feed = AuditFeed.open(self.ws)
        self._feed_seq = self._feed.head() if self._feed else 0
        stats = self.indexer.scan("/", progress)
        self.catching_up = False
        self.wake_embedder.set()
        log.info("caught up in %.1fs: %s", time.monotonic() - t0, stats)
        return {"seconds": time.monotonic() - t0, "files": stats.seen, "indexed": stats.indexed,
                "deleted": stats.deleted, "chunks_added": stats.chunks_added, "skipped": stats.skipped}

    def follow(self) -> None:
        """Follow the audit feed until stopped, with a stat scan as a safety net."""
        feed, seq = self._feed, self._feed_seq
        if feed is None:
            feed = AuditFeed.open(self.ws)
            seq = feed.head() if feed else 0
        last_scan = time.monotonic()
        scan_cost = 0.0
        mounted = False
        next_mount_check = 0.0
        quiet_until = 0.0
        next_feed_try = time.monotonic() + 10.0
        while not self.stop.wait(FEED_POLL):
            if feed is None and time.monotonic() >= next_feed_try:
                # A daemon may create the audit log after we started.
                feed = self._feed = AuditFeed.open(self.ws)
                seq = feed.head() if feed else 0
                next_feed_try = time.monotonic() + 10.0
            if feed is not None:
                try:
                    paths, seq = feed.changes(seq)
                except Exception as e:  # a busy or rotated log must not stop indexing
                    if time.monotonic() >= quiet_until:
                        log.warning("reading the audit feed failed (stat scans continue): %s", e)
                        quiet_until = time.monotonic() + 60.0
                    paths = []
                if paths:
                    st = self.indexer.sync_paths(paths)
                    if st.indexed or st.deleted:
                        self.wake_embedder.set()
            # The feed only sees changes made through a mount. Without a feed or a
            # mount, files change behind our back: scan often (bounded by what a scan
            # costs); with both, rarely, as a safety net.
            if time.monotonic() >= next_mount_check:
                mounted = bool(mount_for_workspace(self.ws))
                next_mount_check = time.monotonic() + 1.0
            interval = SAFETY_SCAN if feed is not None and mounted else max(1.0, 10 * scan_cost)
            if time.monotonic() - last_scan >= interval:
                t0 = time.monotonic()
                st = self.indexer.scan("/")
                scan_cost = time.monotonic() - t0
                last_scan = time.monotonic()
                if st.indexed or st.deleted:
                    self.wake_embedder.set()

    def wait_embedded(self, poll: float = 0.2) -> None:
        """Block until every chunk has its vector (for `--once`)."""
        while self.embedder is not None and self.db.stats()["pending"] and not self.stop.is_set():
            self.wake_embedder.set()
            time.sleep(poll)

    def shutdown(self) -> None:
        self.stop.set()
        self.wake_embedder.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(timeout=10)
        if self._feed is not None:
            self._feed.close()
        while not self._pool.empty():
            self._pool.get_nowait().close()
        self.db.close()

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, frame: Any) -> None:
            self.stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    # -- embedding -------------------------------------------------------------------------

    def _embed_loop(self) -> None:
        db = IndexDB(self.ws.index_db)
        try:
            while not self.stop.is_set():
                batch = db.pending(EMBED_BATCH)
                if not batch:
                    self.wake_embedder.wait(1.0)
                    self.wake_embedder.clear()
                    continue
                try:
                    ids = [i for i, _ in batch]
                    vectors = self.embedder.embed([t for _, t in batch])  # type: ignore[union-attr]
                    db.put_vectors(ids, vectors)
                    self.vectors.add(ids, vectors)  # type: ignore[union-attr]
                except Exception:
                    log.exception("embedding failed; retrying in 5 s")
                    self.stop.wait(5.0)
        finally:
            db.close()

    # -- queries --------------------------------------------------------------------------------

    def answer(self, req: dict[str, Any], peer: tuple[int, int, int]) -> dict[str, Any]:
        """One request from a peer (pid, uid, gid) to one response."""
        pid, uid, gid = peer
        if req.get("op") == "status":
            return {"status": self.status()}
        text = req.get("query")
        if not isinstance(text, str):
            return {"error": "request needs a \"query\" string"}
        k = max(1, min(int(req.get("k") or 10), MAX_K))
        prefix = req.get("path_prefix")
        agent = req.get("agent")
        try:
            agent, allowed = self.access.for_peer(uid, gid, pid, agent if isinstance(agent, str) else None)
        except Exception as e:  # fail closed: no identity, no results
            log.warning("cannot check search caller uid=%d pid=%d: %s", uid, pid, e)
            return {"error": f"cannot check your permissions: {e}"}
        db = self._conn()
        try:
            embed = self.embedder.embed if self.embedder is not None else None
            hits, mode = search(db, text, k=k, path_prefix=prefix if isinstance(prefix, str) else None,
                                embed=embed, allowed=allowed, cache=self._cache, vectors=self.vectors,
                                min_similarity=self.min_similarity)
            fresh = self._fresh(db)
        finally:
            self._pool.put(db)
        return {"hits": [h.to_dict() for h in hits], "mode": mode, "agent": agent, "fresh": fresh}

    def _conn(self) -> IndexDB:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            return IndexDB(self.ws.index_db)

    def _fresh(self, db: IndexDB) -> dict[str, Any]:
        s = db.stats()
        return {"catching_up": self.catching_up, "pending": s["pending"] if self.embedder else 0,
                "files": s["files"], "last_indexed": s["last_indexed"]}

    def status(self) -> dict[str, Any]:
        db = self._conn()
        try:
            s = db.stats()
        finally:
            self._pool.put(db)
        if self.embedder is None:
            s["pending"] = 0
        s.update(running=True, mode=self.mode, note=self.note, catching_up=self.catching_up,
                 embedder=self.embedder_name)
        return s


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False


def _peer(sock: socket.socket) -> tuple[int, int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def _handler_for(sidecar: Sidecar) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        timeout = 60

        def handle(self) -> None:
            peer = _peer(self.request)
            while True:
                try:
                    line = self.rfile.readline(MAX_REQUEST)
                except OSError:
                    return
                if not line:
                    return
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict):
                        raise ValueError("request must be a JSON object")
                    resp = sidecar.answer(req, peer)
                except Exception as e:  # one bad request must not kill the server
                    log.debug("bad search request: %s", e, exc_info=True)
                    resp = {"error": f"{type(e).__name__}: {e}"}
                try:
                    self.wfile.write(json.dumps(resp).encode() + b"\n")
                    self.wfile.flush()
                except OSError:
                    return

    return Handler
