"""An in-memory mirror of the index's vectors, for fast KNN in the sidecar.

sqlite-vec stores the vectors durably and answers KNN for one-off readers
(the CLI without a sidecar), but its scan took ~90 ms at 100k chunks here,
where one BLAS matrix-vector product over the same vectors takes ~8 ms. The
sidecar therefore keeps a float32 copy (1.5 KB a chunk: 150 MB at 100k).
Chunk ids are never reused (AUTOINCREMENT), so a stale row can only point
at a chunk that is gone; `search` reports such ids and they are dropped.
"""

from __future__ import annotations

import threading
from typing import Iterable

import numpy as np


class VectorCache:
    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self._buf = np.zeros((capacity, dim), dtype=np.float32)
        self._ids = np.full(capacity, -1, dtype=np.int64)
        self._n = 0
        self._row: dict[int, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._row)

    def load(self, rows: Iterable[tuple[int, bytes]]) -> None:
        ids, vecs = [], []
        for cid, blob in rows:
            ids.append(cid)
            vecs.append(np.frombuffer(blob, dtype=np.float32))
            if len(ids) >= 4096:
                self.add(ids, np.stack(vecs))
                ids, vecs = [], []
        if ids:
            self.add(ids, np.stack(vecs))

    def add(self, ids: list[int], vectors: np.ndarray) -> None:
        with self._lock:
            for cid, v in zip(ids, vectors):
                r = self._row.get(int(cid))
                if r is None:
                    if self._n == len(self._ids):
                        self._grow()
                    r = self._n
                    self._n += 1
                    self._row[int(cid)] = r
                    self._ids[r] = int(cid)
                self._buf[r] = v

    def discard(self, ids: Iterable[int]) -> None:
        with self._lock:
            for cid in ids:
                r = self._row.pop(int(cid), None)
                if r is not None:
                    self._ids[r] = -1
            if self._n > 1024 and len(self._row) < self._n // 2:
                self._compact()

    def knn(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(chunk id, cosine similarity) of the k nearest vectors, nearest first.

        Vectors are unit length, so the dot product is the cosine.
        """
        with self._lock:
            n = self._n
            if n == 0:
                return []
            scores = self._buf[:n] @ np.asarray(vector, dtype=np.float32)
            scores[self._ids[:n] < 0] = -np.inf
            k = min(k, n)
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top])]
            return [(int(self._ids[r]), float(scores[r])) for r in top if self._ids[r] >= 0]

    def _grow(self) -> None:
        cap = max(1024, 2 * len(self._ids))
        buf = np.zeros((cap, self.dim), dtype=np.float32)
        buf[:self._n] = self._buf[:self._n]
        ids = np.full(cap, -1, dtype=np.int64)
        ids[:self._n] = self._ids[:self._n]
        self._buf, self._ids = buf, ids

    def _compact(self) -> None:
        live = np.nonzero(self._ids[:self._n] >= 0)[0]
        self._buf[:len(live)] = self._buf[live]
        self._ids[:len(live)] = self._ids[live]
        self._ids[len(live):self._n] = -1
        self._n = len(live)
        self._row = {int(c): i for i, c in enumerate(self._ids[:self._n])}
