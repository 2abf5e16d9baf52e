"""The search index database (WS/state/index.db): all of its SQL lives here.

It belongs to the indexer sidecar alone, not to the workspace state, so it
can be deleted and rebuilt at any time (`agentfs index --rebuild`). Tables:

- files: one row per file seen, with the stat fields that make an unchanged
  file cost one `stat`, its content hash, and why it was skipped if it was.
- chunks: line ranges of a file with their text. `embedded` is 0 until the
  embedding worker has put the chunk's vector into `chunk_vec`, so keyword
  search sees a change at once and vectors follow.
- chunk_fts: FTS5 over chunk text and context (path, heading); rowid = chunk id.
- chunk_vec: sqlite-vec vec0 table of embeddings; rowid = chunk id.
- meta: embedder name and dimension, to notice a changed model.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from agentfs.search.chunker import Chunk
from agentfs.store.db import sqlite_module

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER, mtime_ns INTEGER, ino INTEGER,
    hash TEXT, kind TEXT, skipped TEXT,
    indexed_at REAL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: vector caches key on it
    file_id INTEGER NOT NULL,
    start_line INTEGER NOT NULL, end_line INTEGER NOT NULL,
    text_hash TEXT NOT NULL,
    context TEXT NOT NULL, text TEXT NOT NULL,
    embedded INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS chunks_file ON chunks(file_id);
CREATE INDEX IF NOT EXISTS chunks_pending ON chunks(embedded) WHERE embedded = 0;
CREATE VIRTUAL TABLE IF NOT EXISTS chunk_fts USING fts5(text, context, tokenize = 'porter unicode61');
"""


@dataclass(frozen=True)
class FileRow:
    id: int
    path: str
    size: int
    mtime_ns: int
    ino: int
    hash: str | None


@dataclass(frozen=True)
class ChunkRow:
    id: int
    path: str
    start_line: int
    end_line: int
    text: str


class IndexDB:
    """One connection to the index; not shared between threads."""

    def __init__(self, path: Path, *, readonly: bool = False, timeout: float = 30.0) -> None:
        sqlite = sqlite_module()
        self.path = path
        if readonly:
            self.conn = sqlite.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout,
                                       isolation_level=None, check_same_thread=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
            self.conn = sqlite.connect(str(path), timeout=timeout, isolation_level=None,
                                       check_same_thread=False)
        self.conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        self.vec_ok = self._load_vec()
        if not readonly:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(SCHEMA)

    def _load_vec(self) -> bool:
        try:
            import sqlite_vec  # type: ignore[import-not-found]

            self.conn.enable_load_extension(True)
            sqlite_vec.load(self.conn)
            self.conn.enable_load_extension(False)
            return True
        except Exception as e:  # no extension loading: keyword search still works
            log.warning("sqlite-vec unavailable (%s): vector search disabled", e)
            return False

    def close(self) -> None:
        self.conn.close()

    # -- meta and vector table ------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                          "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def has_vectors(self) -> bool:
        return self.vec_ok and self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'chunk_vec'").fetchone() is not None

    def prepare_vectors(self, embedder_name: str, dim: int) -> None:
        """Make chunk_vec fit the embedder; a different model invalidates every vector."""
        if not self.vec_ok:
            return
        same = self.meta("embedder") == embedder_name and self.meta("dim") == str(dim)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            if not same:
                self.conn.execute("DROP TABLE IF EXISTS chunk_vec")
                self.conn.execute("UPDATE chunks SET embedded = 0")
                self.set_meta("embedder", embedder_name)
                self.set_meta("dim", str(dim))
            self.conn.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS chunk_vec USING "
                              f"vec0(embedding float[{int(dim)}] distance_metric=cosine)")
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def clear(self) -> None:
        """Forget everything (rebuild)."""
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("DELETE FROM chunks")
        self.conn.execute("DELETE FROM files")
        self.conn.execute("DELETE FROM chunk_fts")
        if self.has_vectors():
            self.conn.execute("DELETE FROM chunk_vec")
        self.conn.execute("COMMIT")

    # -- files ------------------------------------------------------------------

    def file(self, path: str) -> FileRow | None:
        row = self.conn.execute("SELECT id, path, size, mtime_ns, ino, hash FROM files WHERE path = ?",
                                (path,)).fetchone()
        return FileRow(*row) if row else None

    def file_stats(self) -> dict[str, tuple[int, int, int]]:
        return {p: (s, m, i) for p, s, m, i in self.conn.execute("SELECT path, size, mtime_ns, ino FROM files")}

    def paths_under(self, prefix: str) -> list[str]:
        """The path itself and everything below it (a deleted or renamed directory)."""
        like = prefix.rstrip("/").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"
        return [r[0] for r in self.conn.execute(
            "SELECT path FROM files WHERE path = ? OR path LIKE ? ESCAPE '\\'", (prefix, like))]

    def touch_file(self, file_id: int, size: int, mtime_ns: int, ino: int) -> None:
        """Content unchanged (same hash): remember the new stat so the next look is a stat."""
        self.conn.execute("UPDATE files SET size = ?, mtime_ns = ?, ino = ? WHERE id = ?",
                          (size, mtime_ns, ino, file_id))

    def put_file(self, path: str, size: int, mtime_ns: int, ino: int, content_hash: str,
                 kind: str, skipped: str | None, chunks: list[Chunk]) -> tuple[int, int]:
        """Store a file's new chunks, keeping rows (and vectors) whose text is unchanged.

        Returns (chunks kept, chunks added). Runs in one transaction.
        """
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            row = c.execute("SELECT id FROM files WHERE path = ?", (path,)).fetchone()
            if row:
                file_id = row[0]
                c.execute("UPDATE files SET size=?, mtime_ns=?, ino=?, hash=?, kind=?, skipped=?, indexed_at=? "
                          "WHERE id=?", (size, mtime_ns, ino, content_hash, kind, skipped, time.time(), file_id))
            else:
                file_id = c.execute(
                    "INSERT INTO files(path, size, mtime_ns, ino, hash, kind, skipped, indexed_at) "
                    "VALUES (?,?,?,?,?,?,?,?)",
                    (path, size, mtime_ns, ino, content_hash, kind, skipped, time.time())).lastrowid
            old: dict[str, list[int]] = {}
            for cid, h in c.execute("SELECT id, text_hash FROM chunks WHERE file_id = ?", (file_id,)):
                old.setdefault(h, []).append(cid)
            kept = added = 0
            for ch in chunks:
                ids = old.get(ch.text_hash)
                if ids:
                    c.execute("UPDATE chunks SET start_line = ?, end_line = ? WHERE id = ?",
                              (ch.start_line, ch.end_line, ids.pop()))
                    kept += 1
                    continue
                cid = c.execute("INSERT INTO chunks(file_id, start_line, end_line, text_hash, context, text) "
                                "VALUES (?,?,?,?,?,?)",
                                (file_id, ch.start_line, ch.end_line, ch.text_hash, ch.context, ch.text)).lastrowid
                c.execute("INSERT INTO chunk_fts(rowid, text, context) VALUES (?,?,?)", (cid, ch.text, ch.context))
                added += 1
            self._drop_chunks([i for ids in old.values() for i in ids])
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return kept, added

    def delete_files(self, paths: Iterable[str]) -> int:
        c = self.conn
        n = 0
        c.execute("BEGIN IMMEDIATE")
        try:
            for p in paths:
                row = c.execute("SELECT id FROM files WHERE path = ?", (p,)).fetchone()
                if not row:
                    continue
                self._drop_chunks([r[0] for r in c.execute("SELECT id FROM chunks WHERE file_id = ?", (row[0],))])
                c.execute("DELETE FROM files WHERE id = ?", (row[0],))
                n += 1
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return n

    def _drop_chunks(self, ids: list[int]) -> None:
        vec = self.has_vectors()
        for cid in ids:
            self.conn.execute("DELETE FROM chunks WHERE id = ?", (cid,))
            self.conn.execute("DELETE FROM chunk_fts WHERE rowid = ?", (cid,))
            if vec:
                self.conn.execute("DELETE FROM chunk_vec WHERE rowid = ?", (cid,))

    # -- embedding ----------------------------------------------------------------

    def pending(self, limit: int) -> list[tuple[int, str]]:
        """(chunk id, text to embed) of chunks without a vector yet."""
        return [(cid, f"{ctx}\n{text}") for cid, ctx, text in self.conn.execute(
            "SELECT id, context, text FROM chunks WHERE embedded = 0 LIMIT ?", (limit,))]

    def put_vectors(self, ids: list[int], vectors: np.ndarray) -> None:
        """Store vectors of chunks that still exist (a chunk may vanish while being embedded)."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            for cid, v in zip(ids, vectors):
                if c.execute("SELECT 1 FROM chunks WHERE id = ? AND embedded = 0", (cid,)).fetchone() is None:
                    continue
                c.execute("DELETE FROM chunk_vec WHERE rowid = ?", (cid,))
                c.execute("INSERT INTO chunk_vec(rowid, embedding) VALUES (?, ?)",
                          (cid, np.asarray(v, dtype=np.float32).tobytes()))
                c.execute("UPDATE chunks SET embedded = 1 WHERE id = ?", (cid,))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def iter_vectors(self) -> Iterator[tuple[int, bytes]]:
        """Every (chunk id, float32 vector bytes), to fill the sidecar's in-memory copy."""
        if self.has_vectors():
            yield from self.conn.execute("SELECT rowid, embedding FROM chunk_vec")

    # -- queries ---------------------------------------------------------------------

    def keyword_search(self, match: str, limit: int) -> list[tuple[int, float]]:
        """(chunk id, BM25 score: higher is better), best first; `match` must already be
        a safe FTS5 expression."""
        return [(r[0], -r[1]) for r in self.conn.execute(
            "SELECT rowid, bm25(chunk_fts, 1.0, 0.5) AS s FROM chunk_fts WHERE chunk_fts MATCH ? "
            "ORDER BY s LIMIT ?", (match, limit))]

    def vector_search(self, vector: np.ndarray, limit: int) -> list[tuple[int, float]]:
        """(chunk id, cosine similarity), nearest first."""
        return [(r[0], 1.0 - r[1] if r[1] is not None else -1.0) for r in self.conn.execute(
            "SELECT rowid, distance FROM chunk_vec WHERE embedding MATCH ? AND k = ? ORDER BY distance",
            (np.asarray(vector, dtype=np.float32).tobytes(), limit))]

    def chunk_rows(self, ids: list[int]) -> dict[int, ChunkRow]:
        """Where candidate chunks are (text left empty: only the winners need it)."""
        out: dict[int, ChunkRow] = {}
        for s in range(0, len(ids), 500):
            part = ids[s:s + 500]
            q = ",".join("?" * len(part))
            for cid, path, a, b in self.conn.execute(
                    f"SELECT c.id, f.path, c.start_line, c.end_line FROM chunks c "
                    f"JOIN files f ON f.id = c.file_id WHERE c.id IN ({q})", part):
                out[cid] = ChunkRow(cid, path, a, b, "")
        return out

    def chunk_texts(self, ids: list[int]) -> dict[int, str]:
        if not ids:
            return {}
        q = ",".join("?" * len(ids))
        return dict(self.conn.execute(f"SELECT id, text FROM chunks WHERE id IN ({q})", ids))

    def stats(self) -> dict[str, Any]:
        c = self.conn
        files, last = c.execute("SELECT count(*), max(indexed_at) FROM files WHERE skipped IS NULL").fetchone()
        skipped = dict(c.execute("SELECT skipped, count(*) FROM files WHERE skipped IS NOT NULL GROUP BY skipped"))
        chunks, pending = c.execute("SELECT count(*), coalesce(sum(embedded = 0), 0) FROM chunks").fetchone()
        return {"files": files, "chunks": chunks, "pending": pending, "skipped": skipped,
                "skipped_binary": skipped.get("binary", 0), "last_indexed": last,
                "embedder": self.meta("embedder")}

    # -- bulk helpers (benchmarks) ------------------------------------------------------

    def copy_corpus(self, prefix: str, perturb: Callable[[np.ndarray], np.ndarray]) -> int:
        """Copy every file not under `prefix`'s parent copies to `prefix` + its path, with
        perturbed vectors; how benchmarks grow an index to 100k chunks without
        embedding 100k texts. Returns the number of chunks added."""
        c = self.conn
        vec = self.has_vectors()
        added = 0
        c.execute("BEGIN IMMEDIATE")
        try:
            files = c.execute("SELECT id, path, size, mtime_ns, ino, hash, kind FROM files "
                              "WHERE skipped IS NULL AND path NOT LIKE '/_copy%'").fetchall()
            for fid, path, size, mtime, ino, h, kind in files:
                nid = c.execute("INSERT INTO files(path, size, mtime_ns, ino, hash, kind, indexed_at) "
                                "VALUES (?,?,?,?,?,?,?)",
                                (prefix + path, size, mtime, ino, h, kind, time.time())).lastrowid
                for cid, a, b, th, ctx, text, emb in c.execute(
                        "SELECT id, start_line, end_line, text_hash, context, text, embedded FROM chunks "
                        "WHERE file_id = ?", (fid,)).fetchall():
                    ncid = c.execute("INSERT INTO chunks(file_id, start_line, end_line, text_hash, context, text, "
                                     "embedded) VALUES (?,?,?,?,?,?,?)",
                                     (nid, a, b, th, prefix + ctx, text, emb)).lastrowid
                    c.execute("INSERT INTO chunk_fts(rowid, text, context) VALUES (?,?,?)",
                              (ncid, text, prefix + ctx))
                    if vec and emb:
                        row = c.execute("SELECT embedding FROM chunk_vec WHERE rowid = ?", (cid,)).fetchone()
                        if row:
                            v = perturb(np.frombuffer(row[0], dtype=np.float32))
                            c.execute("INSERT INTO chunk_vec(rowid, embedding) VALUES (?, ?)",
                                      (ncid, np.asarray(v, dtype=np.float32).tobytes()))
                    added += 1
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return added
