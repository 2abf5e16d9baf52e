"""Line numbers of keys in a TOML text.

tomllib returns plain dicts without positions, yet a policy error must name
its line. This scanner walks a text that tomllib already accepted and
records where each key, table and array element starts, keyed by the same
path the validator uses: ("agents", "writer", "rules", 1, "allow").
It is best effort: anything it cannot follow falls back to the nearest
enclosing key it did see.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

Path = tuple  # of str | int

_BARE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class LineMap:
    """Where each key path of a TOML document starts (1-based lines)."""

    def __init__(self, text: str) -> None:
        self._s = text
        self._i = 0
        self._line = 1
        self.lines: dict[Path, int] = {}
        try:
            self._document()
        except Exception as e:  # noqa: BLE001 - positions must never break validation
            log.debug("TOML line scan stopped at line %d: %s", self._line, e)

    def line_of(self, path: Path) -> int:
        """The line of `path`, or of its nearest recorded ancestor (1 if none)."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return 1

    # -- scanning -----------------------------------------------------------

    def _record(self, path: Path, line: int) -> None:
        self.lines.setdefault(path, line)

    def _advance(self, n: int = 1) -> None:
        self._line += self._s.count("\n", self._i, self._i + n)
        self._i += n

    def _eof(self) -> bool:
        return self._i >= len(self._s)

    def _skip(self, newlines: bool) -> None:
        s = self._s
        while self._i < len(s):
            c = s[self._i]
            if c in " \t":
                self._i += 1
            elif c == "#":
                end = s.find("\n", self._i)
                self._i = len(s) if end < 0 else end
            elif newlines and c in "\r\n":
                self._advance()
            else:
                return

    def _expect(self, text: str) -> None:
        if not self._s.startswith(text, self._i):
            raise ValueError(f"expected {text!r}")
        self._advance(len(text))

    def _document(self) -> None:
        table: Path = ()
        arrays: dict[Path, int] = {}
        while True:
            self._skip(newlines=True)
            if self._eof():
                return
            line = self._line
            if self._s.startswith("[[", self._i):
                self._advance(2)
                base = tuple(self._key())
                self._skip(False)
                self._expect("]]")
                idx = arrays.get(base, -1) + 1
                arrays[base] = idx
                self._record_prefixes(base, line)
                table = base + (idx,)
                self._record(table, line)
            elif self._s[self._i] == "[":
                self._advance()
                table = tuple(self._key())
                self._skip(False)
                self._expect("]")
                self._record_prefixes(table, line)
            else:
                self._keyval(table)

    def _record_prefixes(self, path: Path, line: int) -> None:
        for k in range(1, len(path) + 1):
            self._record(path[:k], line)

    def _key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self._skip(False)
            c = self._s[self._i]
            if c == '"':
                parts.append(self._basic_string())
            elif c == "'":
                end = self._s.index("'", self._i + 1)
                parts.append(self._s[self._i + 1:end])
                self._advance(end + 1 - self._i)
            else:
                start = self._i
                while not self._eof() and self._s[self._i] in _BARE:
                    self._i += 1
                if start == self._i:
                    raise ValueError("empty key")
                parts.append(self._s[start:self._i])
            self._skip(False)
            if not self._eof() and self._s[self._i] == ".":
                self._advance()
                continue
            return parts

    def _keyval(self, table: Path) -> None:
        line = self._line
        path = table + tuple(self._key())
        self._record_prefixes(path, line)
        self._skip(False)
        self._expect("=")
        self._skip(False)
        self._value(path)

    def _value(self, path: Path) -> None:
        s = self._s
        c = s[self._i]
        if c == "[":
            self._advance()
            idx = 0
            while True:
                self._skip(newlines=True)
                if s[self._i] == "]":
                    self._advance()
                    return
                self._record(path + (idx,), self._line)
                self._value(path + (idx,))
                self._skip(newlines=True)
                if s[self._i] == ",":
                    self._advance()
                    idx += 1
        elif c == "{":
            self._advance()
            while True:
                self._skip(newlines=True)
                if s[self._i] == "}":
                    self._advance()
                    return
                self._keyval(path)
                self._skip(newlines=True)
                if s[self._i] == ",":
                    self._advance()
        elif s.startswith('"""', self._i) or s.startswith("'''", self._i):
            quote = s[self._i:self._i + 3]
            j = self._i + 3
            while True:
                if quote == '"""' and s[j] == "\\":
                    j += 2
                    continue
                if s.startswith(quote, j):
                    j += 3
                    while j < len(s) and s[j] == quote[0]:
                        j += 1
                    break
                j += 1
            self._advance(j - self._i)
        elif c == '"':
            self._basic_string()
        elif c == "'":
            end = s.index("'", self._i + 1)
            self._advance(end + 1 - self._i)
        else:
            while not self._eof() and s[self._i] not in ",]}#\r\n":
                self._i += 1

    def _basic_string(self) -> str:
        s = self._s
        j = self._i + 1
        while s[j] != '"':
            j += 2 if s[j] == "\\" else 1
        text = s[self._i + 1:j]
        self._advance(j + 1 - self._i)
        return text
