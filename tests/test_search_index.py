"""Indexing, incremental updates, skips, ranking and the BM25 fallback (no mount, no sidecar)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentfs.search import extract as extract_mod
from agentfs.search.embedder import load_embedder
from agentfs.search.index import ChunkRow, IndexDB
from agentfs.search.indexer import Indexer
from agentfs.search.ranking import _fuse, fts_query, search
from agentfs.search.vectors import VectorCache
from agentfs.workspace import Workspace


class CountingEmbedder:
    """Bag-of-words hashing vectors; counts every text it embeds."""

    dim = 64

    def __init__(self) -> None:
        self.count = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.count += len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"\w+", t.lower()):
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1.0
            out[i] /= max(float(np.linalg.norm(out[i])), 1e-9)
        return out


def make_counting() -> CountingEmbedder:
    return CountingEmbedder()


@pytest.fixture(scope="session")
def minilm():
    emb, note = load_embedder("minilm")
    if emb is None:
        pytest.skip(note)
    return emb


class Env:
    def __init__(self, root: Path, embedder=None, name: str = "test") -> None:
        (root / "data").mkdir(parents=True)
        (root / "state").mkdir()
        (root / "agentfs.toml").write_text("")
        self.ws = Workspace(root)
        self.db = IndexDB(self.ws.index_db)
        self.emb = embedder
        if embedder is not None:
            self.db.prepare_vectors(name, embedder.dim)
        self.ix = Indexer(self.ws, self.db)

    def write(self, rel: str, text: str | bytes) -> Path:
        p = self.ws.data_path / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return p

    def embed_pending(self) -> int:
        n = 0
        while self.emb is not None:
            batch = self.db.pending(64)
            if not batch:
                break
            self.db.put_vectors([i for i, _ in batch], self.emb.embed([t for _, t in batch]))
            n += len(batch)
        return n

    def sync(self):
        st = self.ix.scan("/")
        self.embed_pending()
        return st

    def paths(self, query: str, **kw) -> list[str]:
        """Files whose text matches (keywords: vector search always returns neighbours)."""
        hits, _ = search(self.db, query, embed=None, **kw)
        return [h.path for h in hits]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path / "ws", CountingEmbedder())


def _sections(n: int, changed: int | None = None) -> str:
    out = ["# Handbook\n"]
    for i in range(n):
        body = " ".join(f"topic{i}word{k}" for k in range(40))
        if i == changed:
            body += " amended"
        out.append(f"## Part {i}\n\n{body}\n")
    return "\n".join(out)


def test_index_finds_files_with_line_ranges(env: Env):
    env.write("/notes/a.md", "# Alpha\n\nThe quick brown fox jumps.\n")
    env.write("/notes/b.md", "# Beta\n\nnothing relevant\n")
    st = env.sync()
    assert st.indexed == 2
    hits, mode = search(env.db, "brown fox", embed=env.emb.embed)
    assert mode == "hybrid"
    assert hits[0].path == "/notes/a.md"
    assert (hits[0].start_line, hits[0].end_line) == (1, 3)
    assert "quick brown fox" in hits[0].snippet


def test_unchanged_files_are_not_reindexed_and_touch_keeps_chunks(env: Env):
    p = env.write("/a.md", _sections(5))
    env.sync()
    before = env.emb.count
    assert env.sync().indexed == 0
    os.utime(p, ns=(1, 1))
    st = env.sync()
    assert st.chunks_added == 0 and env.emb.count == before


def test_an_edit_reembeds_only_the_changed_chunk(env: Env):
    env.write("/h.md", _sections(6))
    env.sync()
    n_chunks = env.db.stats()["chunks"]
    assert n_chunks >= 6
    before = env.emb.count
    env.write("/h.md", _sections(6, changed=3))
    st = env.sync()
    assert st.chunks_added == 1 and st.chunks_kept == n_chunks - 1
    assert env.emb.count - before == 1
    assert env.paths("amended") == ["/h.md"]


def test_rename_and_delete_leave_the_index(env: Env):
    env.write("/old/name.md", "# Zebra facts\n\nzebras have stripes\n")
    env.write("/keep.md", "unrelated text\n")
    env.sync()
    assert env.paths("zebras") == ["/old/name.md"]
    os.rename(env.ws.data_path / "old", env.ws.data_path / "new")
    env.ix.sync_paths(["/old", "/new"])  # what the audit feed reports for a directory rename
    env.embed_pending()
    assert env.paths("zebras") == ["/new/name.md"]
    os.unlink(env.ws.data_path / "new" / "name.md")
    env.ix.sync_paths(["/new/name.md"])
    assert env.paths("zebras") == []
    assert env.db.file("/old/name.md") is None and env.db.file("/new/name.md") is None
    env.write("/gone.md", "ephemeral words\n")
    env.sync()
    os.unlink(env.ws.data_path / "gone.md")
    assert env.sync().deleted == 1
    assert env.paths("ephemeral") == []


def test_binary_large_and_unreadable_files_are_skipped_and_counted(env: Env, monkeypatch):
    env.write("/img.png", b"\x89PNG\r\n\x1a\n\0\0\0binarystuff")
    env.write("/big.log", b"needle " * (extract_mod.MAX_FILE_BYTES // 7 + 10))
    env.write("/secret.txt", "unreadablesecret words\n")
    env.write("/ok.txt", "needle in a normal file\n")
    real_read = Indexer._read

    def read(self, path):
        if path == "/secret.txt":
            raise PermissionError(13, "Permission denied", path)
        return real_read(self, path)

    monkeypatch.setattr(Indexer, "_read", read)
    st = env.sync()
    assert st.skipped == {"binary": 1, "too large": 1, "unreadable": 1}
    stats = env.db.stats()
    assert stats["skipped_binary"] == 1 and stats["skipped"]["unreadable"] == 1
    assert env.paths("needle") == ["/ok.txt"]
    assert env.paths("unreadablesecret") == []
    assert env.paths("binarystuff") == []


def test_symlinks_are_never_followed(env: Env, tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shadow.txt").write_text("topsecretpassword\n")
    os.symlink(outside / "shadow.txt", env.ws.data_path / "link.txt")
    os.symlink(outside, env.ws.data_path / "linkdir")
    env.sync()
    env.ix.sync_paths(["/link.txt", "/linkdir/shadow.txt", "/linkdir"])
    assert env.paths("topsecretpassword") == []
    assert env.db.stats()["files"] == 0


def test_path_prefix_limits_results(env: Env):
    env.write("/a/x.md", "kiwi fruit\n")
    env.write("/b/y.md", "kiwi bird\n")
    env.write("/ab/z.md", "kiwi shoe polish\n")
    env.sync()
    assert sorted(env.paths("kiwi")) == ["/a/x.md", "/ab/z.md", "/b/y.md"]
    assert env.paths("kiwi", path_prefix="/a") == ["/a/x.md"]
    assert env.paths("kiwi", path_prefix="b/") == ["/b/y.md"]


def test_allowed_filter_drops_files_but_keeps_k(env: Env):
    for i in range(30):
        env.write(f"/private/p{i}.md", "quokka " * 5 + "\n")
    env.write("/public/q.md", "a quokka\n")
    env.sync()
    hits, _ = search(env.db, "quokka", k=5, embed=env.emb.embed, allowed=lambda p: p.startswith("/public/"))
    assert [h.path for h in hits] == ["/public/q.md"]


def test_results_group_by_file_with_the_best_chunk_as_snippet(env: Env):
    text = _sections(4) + "\n## Llamas\n\n" + "llama " * 30 + "\n"
    env.write("/multi.md", text)
    env.write("/other.md", "a llama appears once\n")
    env.sync()
    hits, _ = search(env.db, "llama", embed=env.emb.embed)
    assert [h.path for h in hits].count("/multi.md") == 1
    top = next(h for h in hits if h.path == "/multi.md")
    assert "llama" in top.snippet
    assert 0 < top.score <= 1.0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=40))
def test_any_user_text_is_a_safe_query(env: Env, text: str):
    if env.db.stats()["files"] == 0:
        env.write("/a.md", 'Quotes " and (parens) AND OR NOT NEAR * ^ : - column:stuff\n')
        env.sync()
    hits, _ = search(env.db, text, embed=env.emb.embed)
    assert isinstance(hits, list)
    q = fts_query(text)
    assert q is None or q.count('"') % 2 == 0


def test_fts_syntax_is_neutralised():
    for text in ['"', "AND", "a OR b", "NEAR(x y)", "col:val", "foo*", "(", "-x", "^start"]:
        q = fts_query(text)
        assert q is None or all(part.startswith('"') and part.endswith('"') for part in q.split(" OR "))
    assert fts_query("  ...  ") is None


def test_bm25_only_when_no_embedder(tmp_path: Path):
    env = Env(tmp_path / "ws", None)
    env.write("/a.md", "retry uploads with backoff\n")
    env.sync()
    hits, mode = search(env.db, "uploads", embed=None)
    assert mode == "bm25" and [h.path for h in hits] == ["/a.md"]


def test_embedder_choices_and_failures_fall_back_to_keywords():
    emb, note = load_embedder("none")
    assert emb is None and "keyword" in note
    emb, note = load_embedder("no_such_module_xyz:factory")
    assert emb is None and "unavailable" in note and "keyword" in note
    emb, note = load_embedder("bogus")
    assert emb is None and "unknown embedder" in note
    emb, note = load_embedder("test_search_index:make_counting")
    assert isinstance(emb, CountingEmbedder) and "64" in note


def test_vector_cache_matches_sqlite_vec(tmp_path: Path):
    env = Env(tmp_path / "ws", None)
    env.db.prepare_vectors("random", 32)
    for i in range(60):
        env.write(f"/d{i}.md", f"document {i}\n")
    env.sync()
    rng = np.random.default_rng(7)
    pending = env.db.pending(1000)
    vecs = rng.normal(size=(len(pending), 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    env.db.put_vectors([i for i, _ in pending], vecs)
    vc = VectorCache(32)
    vc.load(env.db.iter_vectors())
    assert len(vc) == 60
    q = vecs[0] + 0.5 * vecs[1]
    q /= np.linalg.norm(q)
    mine, theirs = vc.knn(q, 10), env.db.vector_search(q, 10)
    assert [c for c, _ in mine] == [c for c, _ in theirs]
    assert np.allclose([s for _, s in mine], [s for _, s in theirs], atol=1e-5)
    first = mine[0][0]
    vc.discard([first])
    assert first not in dict(vc.knn(q, 60)) and len(vc.knn(q, 60)) == 59


def test_paraphrase_found_by_hybrid_but_not_bm25(tmp_path: Path, minilm):
    env = Env(tmp_path / "ws", minilm, "minilm")
    env.write("/garage.md", "# Garage\n\nOur mechanic fixes broken car engines and replaces worn brakes.\n")
    env.write("/kitchen.md", "# Kitchen\n\nBake the bread at two hundred degrees for forty minutes.\n")
    env.write("/garden.md", "# Garden\n\nWater the tomato plants every morning in summer.\n")
    env.sync()
    query = "automobile repair"
    bm25, mode = search(env.db, query, embed=None)
    assert mode == "bm25" and [h.path for h in bm25] == []
    hybrid, mode = search(env.db, query, embed=minilm.embed, min_similarity=minilm.min_similarity)
    assert mode == "hybrid" and [h.path for h in hybrid] == ["/garage.md"]
    nothing, _ = search(env.db, "quantum chromodynamics lattice", embed=minilm.embed,
                        min_similarity=minilm.min_similarity)
    assert nothing == []


def test_minilm_embeddings_are_sane(minilm):
    v = minilm.embed(["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."])
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    sim = v @ v.T
    # sentence-transformers gives 0.7553 for the first pair with the reference implementation.
    assert abs(sim[0, 1] - 0.7553) < 0.01
    assert sim[0, 2] < 0.1


class _FakeRanks:
    """Just enough of IndexDB for _fuse: where chunks are and their text."""

    def __init__(self, chunks: dict[int, str]) -> None:
        self.chunks = chunks

    def chunk_rows(self, ids: list[int]) -> dict[int, ChunkRow]:
        return {i: ChunkRow(i, self.chunks[i], i, i, "") for i in ids if i in self.chunks}

    def chunk_texts(self, ids: list[int]) -> dict[int, str]:
        return {i: f"chunk {i}" for i in ids}


def test_a_file_scores_the_mean_of_its_best_normalised_chunk_scores():
    # /a.md: chunk 1 is the keyword favourite, chunk 2 the semantic one: both credit /a.md.
    db = _FakeRanks({1: "/a.md", 2: "/a.md", 3: "/b.md", 4: "/c.md"})
    hits, gone = _fuse(db, [(1, 10.0), (3, 5.0), (4, 0.0)],  # type: ignore[arg-type]
                       [(2, 0.9), (3, 0.5), (4, 0.1), (99, 0.05)], 10, None, None, vec_floor=0.1)
    assert [(h.path, h.score) for h in hits] == [("/a.md", 1.0), ("/b.md", 0.5), ("/c.md", 0.0)]
    assert hits[0].snippet in ("chunk 1", "chunk 2")
    assert gone == [99]


def test_scores_are_scaled_from_each_retrievers_floor_not_from_the_last_candidate():
    # Two files with the same text but for their names (the demo's copy):
    # scaled from the weaker of two candidates, the copy would score 0.
    db = _FakeRanks({1: "/research/uploads.md", 2: "/drafts/summary.md"})
    hits, _ = _fuse(db, [(1, 3.10), (2, 3.05)], [(1, 0.75), (2, 0.74)],  # type: ignore[arg-type]
                    10, None, None, vec_floor=0.2)
    assert [(h.path, h.score) for h in hits] == [("/research/uploads.md", 1.0),
                                                 ("/drafts/summary.md", round((3.05 / 3.10 + 0.54 / 0.55) / 2, 4))]
    # Below the floor (KNN with no similarity floor), the weakest candidate is the bottom again.
    hits, _ = _fuse(db, [], [(1, 0.3), (2, -0.1)], 10, None, None, vec_floor=0.0)  # type: ignore[arg-type]
    assert [h.score for h in hits] == [1.0, 0.0]


def test_a_retrievers_confidence_counts_not_just_its_order():
    # Keywords find /a.md far ahead of the rest; vectors barely separate the
    # top three. Rank fusion would put /b.md (2nd and 1st) first.
    db = _FakeRanks({1: "/a.md", 2: "/b.md", 3: "/c.md", 4: "/d.md"})
    hits, _ = _fuse(db, [(1, 10.0), (2, 1.0), (3, 0.9), (4, 0.0)],  # type: ignore[arg-type]
                    [(2, 0.50), (3, 0.49), (1, 0.48), (4, 0.0)], 10, None, None)
    assert [h.path for h in hits][:2] == ["/a.md", "/b.md"]


def test_a_lone_keyword_match_scores_one(tmp_path: Path):
    env = Env(tmp_path / "ws", None)
    env.write("/a.md", "retry uploads with backoff\n")
    env.write("/b.md", "nothing related\n")
    env.sync()
    hits, _ = search(env.db, "backoff", embed=None)
    assert [(h.path, h.score) for h in hits] == [("/a.md", 1.0)]


def test_a_hidden_file_does_not_shift_the_scores_of_visible_ones():
    db = _FakeRanks({1: "/secret.md", 2: "/a.md", 3: "/b.md"})
    filtered, _ = _fuse(db, [(1, 10.0), (2, 5.0), (3, 1.0)], [(1, 0.9), (3, 0.6), (2, 0.5)],  # type: ignore[arg-type]
                        10, None, lambda p: p != "/secret.md")
    absent, _ = _fuse(db, [(2, 5.0), (3, 1.0)], [(3, 0.6), (2, 0.5)], 10, None, None)  # type: ignore[arg-type]
    assert [(h.path, h.score) for h in filtered] == [(h.path, h.score) for h in absent]
    # /a.md: 5/5 and (0.5 - 0)/(0.6 - 0); /b.md: 1/5 and 1.
    assert [(h.path, h.score) for h in filtered] == [("/a.md", round((1 + 0.5 / 0.6) / 2, 4)), ("/b.md", 0.6)]
