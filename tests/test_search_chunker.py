"""Chunking and text extraction: line ranges, headings, definitions, overlap, skips."""

from __future__ import annotations

from agentfs.search.chunker import OVERLAP_WORDS, TARGET_WORDS, chunk_text
from agentfs.search.extract import MAX_FILE_BYTES, extract


def _para(word: str, n: int) -> str:
    return " ".join(f"{word}{i}" for i in range(n))


def test_chunks_know_their_line_ranges_and_text():
    lines = [f"line {i} " + _para("w", 8) for i in range(1, 41)]
    chunks = chunk_text("/notes.txt", "\n".join(lines), "text")
    assert len(chunks) > 1
    for c in chunks:
        got = c.text.splitlines()
        assert got == lines[c.start_line - 1:c.end_line], (c.start_line, c.end_line)
    assert chunks[0].start_line == 1 and chunks[-1].end_line == 40


def test_consecutive_chunks_overlap_by_a_line_or_two():
    lines = [_para(f"l{i}x", 9) for i in range(60)]
    chunks = chunk_text("/a.txt", "\n".join(lines), "text")
    for a, b in zip(chunks, chunks[1:]):
        assert b.start_line <= a.end_line, "no overlap"
        shared = a.end_line - b.start_line + 1
        assert 1 <= shared and shared * 10 <= OVERLAP_WORDS + 10


def test_chunks_stay_near_the_target_size():
    text = "\n".join(_para(f"p{i}", 12) for i in range(200))
    for c in chunk_text("/big.md", text, "markdown"):
        assert len(c.text.split()) <= 150


def test_markdown_headings_start_new_chunks_and_give_context():
    sections = [f"## Section {n}\n\n" + _para(f"s{n}", 45) + "\n" for n in range(4)]
    text = "# Title\n\n" + "\n".join(sections)
    chunks = chunk_text("/doc.md", text, "markdown")
    starts = {c.text.splitlines()[0] for c in chunks}
    for n in range(1, 4):
        assert f"## Section {n}" in starts
    assert all(c.context.startswith("/doc.md") for c in chunks)
    assert all("/doc.md" in c.embed_text for c in chunks)


def test_a_long_section_carries_its_heading_into_later_chunks():
    text = "## Retries\n\n" + "\n".join(_para(f"r{i}", 20) for i in range(20))
    chunks = chunk_text("/ops.md", text, "markdown")
    assert len(chunks) >= 3
    assert "## Retries" in chunks[-1].context
    assert "## Retries" not in chunks[-1].text


def test_code_definitions_start_new_chunks():
    funcs = [f"def func_{n}(x):\n" + "\n".join(f"    y{k} = x + {k}  # {_para('c', 4)}" for k in range(6))
             for n in range(5)]
    text = "\n\n".join(funcs)
    chunks = chunk_text("/m.py", text, "code")
    firsts = [c.text.splitlines()[0] for c in chunks]
    assert sum(f.startswith("def func_") for f in firsts) >= 3, firsts


def test_a_very_long_line_becomes_overlapping_windows_on_that_line():
    words = [f"tok{i}" for i in range(450)]
    text = "# T\n\n" + " ".join(words) + "\n"
    chunks = chunk_text("/abs.md", text, "markdown")
    body = [c for c in chunks if c.start_line == 3]
    assert len(body) >= 4
    assert all(c.end_line == 3 for c in body)
    covered = set()
    for c in chunks:
        covered.update(w for w in c.text.split() if w.startswith("tok"))
    assert covered == set(words)
    assert max(len(c.text.split()) for c in chunks) <= TARGET_WORDS + 50


def test_identical_text_hashes_equal_and_path_changes_it():
    a = chunk_text("/x.md", "hello world\n", "markdown")[0]
    b = chunk_text("/x.md", "hello world\n", "markdown")[0]
    c = chunk_text("/y.md", "hello world\n", "markdown")[0]
    assert a.text_hash == b.text_hash != c.text_hash


def test_blank_text_gives_no_chunks():
    assert chunk_text("/e.txt", "\n\n   \n", "text") == []


def test_extract_skips_binary_large_and_empty_and_strips_html():
    assert extract("/a.bin", b"abc\0def").skipped == "binary"
    assert extract("/a.txt", bytes(range(128, 256)) * 50).skipped == "binary"
    assert extract("/a.txt", b"x" * (MAX_FILE_BYTES + 1)).skipped == "too large"
    assert extract("/a.txt", b"  \n").skipped == "empty"
    html = b"<html><head><style>p { color: red }\n</style></head>\n<body><p>Hello &amp; welcome</p>\n<p>second</p></body>"
    ex = extract("/page.html", html)
    assert ex.kind == "html" and ex.skipped is None
    lines = ex.text.splitlines()
    assert "Hello & welcome" in lines[2] and "second" in lines[3]
    assert "color" not in ex.text and "<p>" not in ex.text


def test_extract_kinds():
    assert extract("/a.md", b"# x").kind == "markdown"
    assert extract("/a.py", b"x = 1").kind == "code"
    assert extract("/a.json", b"{}").kind == "data"
    assert extract("/a.yaml", b"a: 1").kind == "data"
    assert extract("/README", b"text").kind == "text"
