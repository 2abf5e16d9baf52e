"""Turning a file's bytes into indexable text, or a reason to skip it.

Line numbers matter (every hit names its line range), so every extractor
keeps the file's line structure: HTML tags are removed but their newlines
kept, so line N of the extracted text is line N of the file.
"""

from __future__ import annotations

import html
import io
import re
from dataclasses import dataclass

MAX_FILE_BYTES = 4 * 1024 * 1024

_MARKDOWN = {".md", ".markdown", ".mdx", ".rst", ".adoc", ".org"}
_HTML = {".html", ".htm", ".xhtml"}
_DATA = {".json", ".jsonl", ".ndjson", ".yaml", ".yml", ".csv", ".tsv", ".toml", ".xml", ".ini", ".cfg"}
_CODE = {
    ".py", ".pyi", ".js", ".mjs", ".cjs", ".ts", ".tsx", ".jsx", ".go", ".rs", ".c", ".h", ".cc", ".cpp",
    ".hpp", ".java", ".kt", ".scala", ".rb", ".php", ".cs", ".swift", ".sh", ".bash", ".zsh", ".fish",
    ".sql", ".lua", ".r", ".jl", ".pl", ".hs", ".ml", ".ex", ".exs", ".erl", ".clj", ".vue", ".svelte",
    ".css", ".scss", ".tf", ".nix", ".dockerfile", ".makefile", ".proto", ".graphql",
}
_SCRIPT_STYLE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.S | re.I)
_TAG = re.compile(r"<!--.*?-->|<[^>]*>", re.S)


@dataclass(frozen=True)
class Extracted:
    kind: str            # markdown, code, data, html, pdf, text
    text: str | None     # None when skipped
    skipped: str | None  # why not indexed: "binary", "too large", "unreadable", ...


def kind_of(path: str) -> str:
    name = path.rsplit("/", 1)[-1].lower()
    ext = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    if ext in _MARKDOWN:
        return "markdown"
    if ext in _HTML:
        return "html"
    if ext in _DATA:
        return "data"
    if ext in _CODE or name in {"makefile", "dockerfile", "justfile", "rakefile"}:
        return "code"
    if ext == ".pdf":
        return "pdf"
    return "text"


def _strip_html(text: str) -> str:
    def keep_lines(m: re.Match[str]) -> str:
        return "\n" * m.group(0).count("\n")

    return html.unescape(_TAG.sub(keep_lines, _SCRIPT_STYLE.sub(keep_lines, text)))


def _pdf_text(data: bytes) -> Extracted:
    try:
        import pypdf  # type: ignore[import-not-found]
    except ImportError:
        return Extracted("pdf", None, "pdf (install pypdf to index PDFs)")
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        text = "\n".join(page.extract_text() or "" for page in reader.pages)
    except Exception as e:  # a malformed PDF is skipped, never fatal
        return Extracted("pdf", None, f"pdf unreadable ({type(e).__name__})")
    return Extracted("pdf", text, None) if text.strip() else Extracted("pdf", None, "pdf without text")


def extract(path: str, data: bytes) -> Extracted:
    """The text of one file as the index should see it."""
    kind = kind_of(path)
    if len(data) > MAX_FILE_BYTES:
        return Extracted(kind, None, "too large")
    if kind == "pdf":
        return _pdf_text(data)
    if b"\0" in data[:8192]:
        return Extracted(kind, None, "binary")
    text = data.decode("utf-8", errors="replace")
    if text.count("\ufffd") > max(8, len(text) // 100):
        return Extracted(kind, None, "binary")
    if kind == "html":
        text = _strip_html(text)
    if not text.strip():
        return Extracted(kind, None, "empty")
    return Extracted(kind, text, None)
