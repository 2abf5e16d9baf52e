#!/usr/bin/env python3
"""SciFact benchmark of agentfs search: quality, throughput, latency, freshness.

The corpus is written into a temporary workspace as files (docs/<id>.md, the
title as a heading), indexed by the same indexer the sidecar runs, and the
300 test queries go through the same ranking function as `agentfs search`.

    python scripts/eval_search.py                 # everything (embedding takes minutes)
    python scripts/eval_search.py --skip-100k     # no 100k-chunk latency run
    python scripts/eval_search.py --workdir /tmp/x --keep   # reuse an indexed workspace

Prints nDCG@10 and recall@100 (hybrid and BM25-only), indexing throughput,
query latency p50/p95 at the corpus size and at ~100k chunks (the corpus
copied with perturbed vectors), and freshness under a running sidecar.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from agentfs.search.embedder import load_embedder
from agentfs.search.index import IndexDB
from agentfs.search.indexer import Indexer
from agentfs.search.ranking import search
from agentfs.search.vectors import VectorCache
from agentfs.workspace import Workspace

FLOOR = 0.0
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "scifact"


def load_scifact(data: Path, limit: int | None) -> tuple[list[dict], dict[str, str], dict[str, dict[str, int]]]:
    corpus = [json.loads(line) for line in open(data / "corpus.jsonl")]
    if limit:
        corpus = corpus[:limit]
    queries = {q["_id"]: q["text"] for q in map(json.loads, open(data / "queries.jsonl"))}
    qrels: dict[str, dict[str, int]] = {}
    ids = {d["_id"] for d in corpus}
    for line in list(open(data / "qrels" / "test.tsv"))[1:]:
        qid, did, score = line.rstrip("\n").split("\t")
        if did in ids:
            qrels.setdefault(qid, {})[did] = int(score)
    return corpus, queries, qrels


def make_workspace(root: Path, corpus: list[dict], embedder: str) -> Workspace:
    (root / "data" / "docs").mkdir(parents=True, exist_ok=True)
    (root / "state").mkdir(exist_ok=True)
    (root / "agentfs.toml").write_text(f'[search]\nembedder = "{embedder}"\n')
    for d in corpus:
        p = root / "data" / "docs" / f"{d['_id']}.md"
        if not p.exists():
            p.write_text(f"# {d['title']}\n\n{d['text']}\n")
    return Workspace(root)


def ndcg_at(ranked: list[str], rel: dict[str, int], k: int) -> float:
    dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(rel.values(), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def quality(db: IndexDB, queries: dict[str, str], qrels: dict[str, dict[str, int]], embed,
            vectors: VectorCache | None) -> tuple[float, float]:
    nd, rc = [], []
    for qid, rel in qrels.items():
        hits, _ = search(db, queries[qid], k=100, embed=embed, vectors=vectors, min_similarity=FLOOR)
        ranked = [Path(h.path).stem for h in hits]
        nd.append(ndcg_at(ranked, rel, 10))
        rc.append(len(set(ranked[:100]) & set(rel)) / len(rel))
    return statistics.mean(nd), statistics.mean(rc)


def latency(db: IndexDB, texts: list[str], embed, vectors: VectorCache | None,
            k: int = 10) -> str:
    """Wall-clock p50/p95, and CPU p50 (what the query costs; less sensitive to a busy host)."""
    wall, cpu = [], []
    for t in texts:
        t0, c0 = time.perf_counter(), time.process_time()
        search(db, t, k=k, embed=embed, vectors=vectors, min_similarity=FLOOR)
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    wall.sort()
    cpu.sort()
    load = os.getloadavg()[0]
    return (f"p50 {wall[len(wall) // 2]:.1f} ms  p95 {wall[int(len(wall) * 0.95) - 1]:.1f} ms  "
            f"(CPU p50 {cpu[len(cpu) // 2]:.1f} ms; load average {load:.1f} on {os.cpu_count()} cores)")


def _vectors(db: IndexDB, emb) -> VectorCache | None:
    """The sidecar's in-memory vector copy, built the same way the sidecar builds it."""
    if emb is None:
        return None
    vc = VectorCache(int(emb.dim))
    vc.load(db.iter_vectors())
    return vc


def index_all(ws: Workspace, emb, name: str) -> dict[str, float]:
    db = IndexDB(ws.index_db)
    if emb is not None:
        db.prepare_vectors(name, emb.dim)
    t0 = time.perf_counter()
    stats = Indexer(ws, db).scan("/")
    t_text = time.perf_counter() - t0
    n_embedded = 0
    t1 = time.perf_counter()
    if emb is not None:
        while True:
            batch = db.pending(256)
            if not batch:
                break
            db.put_vectors([i for i, _ in batch], emb.embed([t for _, t in batch]))
            n_embedded += len(batch)
            print(f"  embedded {n_embedded} chunks, {n_embedded / (time.perf_counter() - t1):.1f}/s",
                  file=sys.stderr, end="\r")
        print(file=sys.stderr)
    t_emb = time.perf_counter() - t1
    chunks = db.stats()["chunks"]
    db.close()
    return {"files": stats.seen, "chunks": chunks, "text_seconds": t_text, "embed_seconds": t_emb,
            "embedded": n_embedded, "added": stats.chunks_added}


def freshness(ws: Workspace, rounds: int) -> tuple[float, float, str]:
    """Seconds from a file's close() to a hit, with `agentfs index` running."""
    from agentfs.search.client import SearchUnavailable, query_full

    exe = shutil.which("agentfs") or str(Path(sys.executable).with_name("agentfs"))
    proc = subprocess.Popen([exe, "-w", str(ws.root), "index"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                r = query_full(ws.root, "warmup", k=1)
                if not r["fresh"]["catching_up"]:
                    break
            except SearchUnavailable:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the sidecar did not come up")
            time.sleep(0.05)
        samples = []
        for i in range(rounds):
            word = "zq" + uuid.uuid4().hex[:10]
            p = ws.data_path / "fresh" / f"note{i}.md"
            p.parent.mkdir(exist_ok=True)
            with open(p, "w") as f:
                f.write(f"# Fresh note\n\nThe codeword is {word}.\n")
            t0 = time.monotonic()
            while time.monotonic() - t0 < 30:
                hits = query_full(ws.root, word, k=3)["hits"]
                if any(h["path"] == f"/fresh/note{i}.md" for h in hits):
                    break
                time.sleep(0.02)
            samples.append(time.monotonic() - t0)
        samples.sort()
        return samples[len(samples) // 2], samples[-1], "stat scan (no mount: no audit feed)"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--workdir", type=Path, help="workspace directory to create or reuse (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the workspace afterwards")
    ap.add_argument("--embedder", default="minilm", help="minilm, none, or module:factory")
    ap.add_argument("--limit", type=int, default=None, help="only the first N documents (smoke runs)")
    ap.add_argument("--skip-100k", action="store_true", help="skip the 100k-chunk latency run")
    ap.add_argument("--fresh-rounds", type=int, default=10)
    args = ap.parse_args()

    corpus, queries, qrels = load_scifact(args.data, args.limit)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="agentfs-eval-"))
    try:
        ws = make_workspace(root, corpus, args.embedder)
        emb, note = load_embedder(args.embedder)
        print(f"workspace {root}: {len(corpus)} documents, {len(qrels)} test queries; {note}")
        ix = index_all(ws, emb, args.embedder)
        print(f"indexing: {ix['files']} files, {ix['chunks']} chunks")
        if ix["added"]:
            print(f"  text and keywords: {ix['added']} chunks in {ix['text_seconds']:.1f}s "
                  f"({ix['added'] / max(ix['text_seconds'], 1e-9):.0f} chunks/s)")
        else:
            print(f"  nothing changed: the scan took {ix['text_seconds']:.2f}s (a stat a file)")
        if ix["embedded"]:
            threads = os.environ.get("OPENBLAS_NUM_THREADS", "default")
            print(f"  embedding: {ix['embedded']} chunks in {ix['embed_seconds']:.1f}s "
                  f"({ix['embedded'] / ix['embed_seconds']:.1f} chunks/s; {os.cpu_count()} cores, "
                  f"OPENBLAS_NUM_THREADS={threads})")
        db = IndexDB(ws.index_db)
        embed = emb.embed if emb is not None else None
        global FLOOR
        FLOOR = float(getattr(emb, "min_similarity", 0.0))  # as the sidecar does
        vectors = _vectors(db, emb)
        if embed is not None:
            nd, rc = quality(db, queries, qrels, embed, vectors)
            print(f"hybrid (BM25 + MiniLM fused):  nDCG@10 {nd:.4f}  recall@100 {rc:.4f}")
        nd, rc = quality(db, queries, qrels, None, None)
        print(f"BM25 only (FTS5):             nDCG@10 {nd:.4f}  recall@100 {rc:.4f}")
        qtexts = [queries[q] for q in qrels]
        n_chunks = db.stats()["chunks"]
        print(f"query latency at {n_chunks} chunks (k=10, query embedding included): "
              f"{latency(db, qtexts, embed, vectors)}")
        db.close()
        if args.fresh_rounds:
            f50, fmax, how = freshness(ws, args.fresh_rounds)
            print(f"freshness (close() to searchable, {how}): p50 {f50:.2f}s  max {fmax:.2f}s")
        if not args.skip_100k:
            big = root / "state" / "index-100k.db"
            shutil.copy(ws.index_db, big)
            db = IndexDB(big)
            rng = np.random.default_rng(0)
            copies = 0
            while n_chunks < 100_000:
                def perturb(v: np.ndarray) -> np.ndarray:
                    w = v + rng.normal(0, 0.02, v.shape).astype(np.float32)
                    return w / np.linalg.norm(w)
                copies += 1
                n_chunks += db.copy_corpus(f"/_copy{copies}", perturb)
            db.conn.execute("PRAGMA optimize")
            print(f"query latency at {n_chunks} chunks: {latency(db, qtexts, embed, _vectors(db, emb))}")
            db.close()
            big.unlink()
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
