"""The policy: which agents exist, how each is recognised, and what each may do where.

Loaded from `WS/agentfs.toml` and validated as a whole: a bad file raises
PolicyError naming file, line and key, so a broken edit never half-applies.
A Policy is immutable; a reload builds a new one (see PolicyHolder), which
is what lets `rights()` and `visible()` memoise freely on the hot path.

Semantics (DESIGN.md): default deny; deny rules beat allow rules; the rights
of all matching allow rules add up. Rights: r read and list, w change
existing content and metadata, c create, d delete or rename away, l lock.
"""

from __future__ import annotations

import enum
import functools
import logging
import os
import re
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from agentfs.core import sections as _sections
from agentfs.core.globs import Glob, GlobError, compile_glob
from agentfs.core.sections import FieldSpec, non_negative, register_section
from agentfs.core.tomllines import LineMap
from agentfs.errors import AgentfsError

__all__ = ["Rights", "Rule", "Agent", "Policy", "PolicyHolder", "PolicyError",
           "FieldSpec", "register_section"]

log = logging.getLogger(__name__)

LETTERS = "rwcdl"
_AGENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_CACHE_SIZE = 1 << 16


class PolicyError(AgentfsError):
    """The policy file is invalid; the message is `FILE:LINE: KEY: what is wrong`."""

    def __init__(self, filename: str, line: int, key: str, reason: str) -> None:
        self.filename, self.line, self.key, self.reason = filename, line, key, reason
        where = f"{filename}:{line}"
        super().__init__(f"{where}: {key}: {reason}" if key else f"{where}: {reason}")


class Rights(enum.IntFlag):
    """What an agent may do on a path; str() gives the letters ("rw", or "-" for none)."""

    NONE = 0
    R = 1
    W = 2
    C = 4
    D = 8
    L = 16

    @classmethod
    def parse(cls, letters: str) -> "Rights":
        """Rights from letters like "rwc"; "-" or "" is none. ValueError names a bad letter."""
        value = 0
        for ch in letters:
            if ch == "-":
                continue
            pos = LETTERS.find(ch)
            if pos < 0:
                raise ValueError(f"unknown right {ch!r} (use letters r w c d l)")
            value |= 1 << pos
        return cls(value)

    def __str__(self) -> str:
        v = int(self)
        return "".join(ch for i, ch in enumerate(LETTERS) if v & (1 << i)) or "-"

    def fixed(self) -> str:
        """Letters in fixed positions, "rw---" style."""
        v = int(self)
        return "".join(ch if v & (1 << i) else "-" for i, ch in enumerate(LETTERS))


ALL = int(Rights.R | Rights.W | Rights.C | Rights.D | Rights.L)


@dataclass(frozen=True)
class Rule:
    glob: Glob
    allow: int  # bit set; 0 for a deny rule
    deny: int   # bit set; 0 for an allow rule
    line: int
    index: int

    @property
    def path(self) -> str:
        return self.glob.text

    @property
    def kind(self) -> str:
        return "deny" if self.deny else "allow"

    @property
    def letters(self) -> str:
        return str(Rights(self.deny or self.allow))


@dataclass(frozen=True)
class Agent:
    name: str
    uids: frozenset[int]
    rules: tuple[Rule, ...]
    line: int = 0
    implicit: bool = False  # the default agent, named but not defined: no rules
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)

    @functools.cached_property
    def _allow(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.allow)

    @functools.cached_property
    def _deny(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.deny)


def _key(path: tuple) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            text = p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else '"' + p.replace('"', '\\"') + '"'
            out += ("." if out else "") + text
    return out


class _Parser:
    """Turns the TOML data into agents and settings, raising the first error found."""

    def __init__(self, text: str, filename: str) -> None:
        self.filename = filename
        try:
            self.data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            msg = str(e)
            m = re.search(r"\(at line (\d+), column \d+\)", msg)
            line = int(m.group(1)) if m else 1
            msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg) if m else msg
            raise PolicyError(filename, line, "", f"not valid TOML: {msg}") from None
        self.lines = LineMap(text)

    def error(self, path: tuple, reason: str) -> PolicyError:
        return PolicyError(self.filename, self.lines.line_of(path), _key(path), reason)

    def parse(self) -> tuple[dict[str, Agent], dict[str, dict[str, Any]]]:
        settings: dict[str, dict[str, Any]] = {}
        agents_data: Any = {}
        for name, value in self.data.items():
            if name == "agents":
                agents_data = value
            elif name in _sections.top_level_names():
                self._section(name, value, (name,), settings, agent=False)
            else:
                raise self.error((name,), "unknown section (known: "
                                 + ", ".join(_sections.top_level_names()) + ")")
        if not isinstance(agents_data, dict):
            raise self.error(("agents",), "must be tables like [agents.NAME]")
        agents: dict[str, Agent] = {}
        owner: dict[int, str] = {}
        for name, value in agents_data.items():
            agents[name] = self._agent(name, value, owner)
        return agents, settings

    def _section(self, name: str, value: Any, path: tuple, out: dict, *, agent: bool) -> None:
        if not isinstance(value, dict):
            raise self.error(path, f"must be a table [{name}], not a value")
        spec = _sections.section(name, agent_section=agent)
        values: dict[str, Any] = {}
        for key, v in value.items():
            sub = f"{name}.{key}"
            if isinstance(v, dict) and (_sections.section(sub, agent_section=agent)
                                        or _sections.has_subsections(sub, agent_section=agent)):
                self._section(sub, v, path + (key,), out, agent=agent)
            elif spec is not None and key in spec.fields:
                converted, reason = _sections.check_value(spec.fields[key], v)
                if reason:
                    raise self.error(path + (key,), reason)
                values[key] = converted
            else:
                known = sorted(spec.fields) if spec else []
                hint = f" (known: {', '.join(known)})" if known else ""
                raise self.error(path + (key,), f"unknown key{hint}")
        out[name] = values

    def _agent(self, name: str, value: Any, owner: dict[int, str]) -> Agent:
        path = ("agents", name)
        if not _AGENT_NAME.fullmatch(name):
            raise self.error(path, "agent names use letters, digits, '_', '-' and '.' (at most 64)")
        if not isinstance(value, dict):
            raise self.error(path, "an agent is a table [agents.NAME] with uids and rules")
        uids: set[int] = set()
        rules: list[Rule] = []
        extra: dict[str, dict[str, Any]] = {}
        for key, v in value.items():
            if key == "uids":
                uids = self._uids(path + ("uids",), v, name, owner)
            elif key == "rules":
                if not isinstance(v, list):
                    raise self.error(path + (key,), 'must be a list like [{ path = "/x/**", allow = "r" }]')
                rules = [self._rule(path + (key, i), r, i) for i, r in enumerate(v)]
            elif key in _sections.agent_section_names():
                self._section(key, v, path + (key,), extra, agent=True)
            else:
                known = ", ".join(["uids", "rules", *_sections.agent_section_names()])
                raise self.error(path + (key,), f"unknown key (known: {known})")
        return Agent(name, frozenset(uids), tuple(rules), self.lines.line_of(path), extra=extra)

    def _uids(self, path: tuple, v: Any, name: str, owner: dict[int, str]) -> set[int]:
        if not isinstance(v, list):
            raise self.error(path, "must be a list of Unix user ids, like [2001]")
        out: set[int] = set()
        for i, uid in enumerate(v):
            if not isinstance(uid, int) or isinstance(uid, bool) or not 0 <= uid < 2**32 - 1:
                raise self.error(path + (i,), f"uid must be a number 0..4294967294, not {uid!r}")
            if uid in owner and owner[uid] != name:
                raise self.error(path + (i,), f"uid {uid} already belongs to agent {owner[uid]!r}")
            owner[uid] = name
            out.add(uid)
        return out

    def _rule(self, path: tuple, r: Any, index: int) -> Rule:
        if not isinstance(r, dict):
            raise self.error(path, 'a rule is a table like { path = "/x/**", allow = "r" }')
        for key in r:
            if key not in ("path", "allow", "deny"):
                raise self.error(path + (key,), "unknown key (use path, allow, deny)")
        if "path" not in r:
            raise self.error(path, "missing path (the glob the rule is about)")
        if ("allow" in r) == ("deny" in r):
            raise self.error(path, "give exactly one of allow or deny (write two rules for both)")
        glob_text = r["path"]
        if not isinstance(glob_text, str):
            raise self.error(path + ("path",), "must be a string glob like \"/research/**\"")
        try:
            glob = compile_glob(glob_text)
        except GlobError as e:
            raise self.error(path + ("path",), str(e)) from None
        kind = "allow" if "allow" in r else "deny"
        letters = r[kind]
        if not isinstance(letters, str):
            raise self.error(path + (kind,), "must be a string of letters r w c d l, like \"rw\"")
        try:
            bits = int(Rights.parse(letters))
        except ValueError as e:
            raise self.error(path + (kind,), str(e)) from None
        if not bits:
            raise self.error(path + (kind,), "empty: give at least one of the letters r w c d l")
        line = self.lines.line_of(path + ("path",))
        return Rule(glob, bits if kind == "allow" else 0, bits if kind == "deny" else 0, line, index)


class Policy:
    """A validated, immutable policy with memoised rights and visibility."""

    def __init__(self, agents: dict[str, Agent], settings: dict[str, dict[str, Any]],
                 default_agent: str, filename: str) -> None:
        self.agents = agents
        self.default_agent = default_agent
        self.filename = filename
        self._settings = settings
        self._by_uid = {uid: a.name for a in agents.values() for uid in a.uids}
        self._rights = functools.lru_cache(maxsize=_CACHE_SIZE)(self._compute_rights)
        self._visible = functools.lru_cache(maxsize=_CACHE_SIZE)(self._compute_visible)
        self._uniform = functools.lru_cache(maxsize=_CACHE_SIZE)(self._compute_uniform)

    # -- loading ----------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Policy":
        """Read and validate a policy file; PolicyError if it is missing or invalid."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise PolicyError(str(path), 0, "", f"cannot read the policy: {e}") from None
        return cls.from_text(text, str(path))

    @classmethod
    def from_text(cls, text: str, filename: str = "agentfs.toml") -> "Policy":
        parser = _Parser(text, filename)
        agents, settings = parser.parse()
        default = settings.get("workspace", {}).get("default_agent", "nobody")
        if not _AGENT_NAME.fullmatch(default):
            raise parser.error(("workspace", "default_agent"), "not a valid agent name")
        if default not in agents:
            # DESIGN.md's own example names "nobody" without defining it: an
            # undefined default agent is a rule-less one, which grants nothing.
            agents[default] = Agent(default, frozenset(), (), 0, implicit=True)
        return cls(agents, settings, default, filename)

    # -- identity ---------------------------------------------------------

    def agent_for_uid(self, uid: int) -> str | None:
        return self._by_uid.get(uid)

    @property
    def rule_count(self) -> int:
        return sum(len(a.rules) for a in self.agents.values())

    # -- rights and visibility (hot path) ---------------------------------

    def rights(self, agent: str, path: str) -> Rights:
        """The agent's rights on a normalised policy path ("/", "/a/b"); memoised."""
        return self._rights(agent, path)

    def visible(self, agent: str, path: str, is_dir: bool = True) -> bool:
        """Readable, or a directory above something the agent may use ("/" always).

        Pass is_dir=False for a path known not to be a directory: it is then
        visible only if readable (a file cannot be "above" anything).
        """
        return self._visible(agent, path, is_dir)

    def uniform(self, path: str) -> bool:
        """True if every agent has the same rights and visibility on `path`.

        Then the kernel may cache the entry for everyone (long timeouts);
        otherwise one agent's cached lookup could answer for another.
        """
        return self._uniform(path)

    def _compute_rights(self, agent: str, path: str) -> Rights:
        a = self.agents.get(agent)
        if a is None:
            return Rights.NONE
        allow = 0
        for r in a._allow:
            if r.allow & ~allow and r.glob.match(path):
                allow |= r.allow
        if allow:
            for r in a._deny:
                if r.deny & allow and r.glob.match(path):
                    allow &= ~r.deny
        return Rights(allow)

    def _subtree_denied(self, a: Agent, path: str) -> int:
        """Rights denied on `path` and on everything below it."""
        denied = 0
        for r in a._deny:
            if r.glob.subtree and r.glob.match(path):
                denied |= r.deny
        return denied

    def _compute_visible(self, agent: str, path: str, is_dir: bool) -> bool:
        if path == "/":
            return True
        if self._rights(agent, path) & Rights.R:
            return True
        a = self.agents.get(agent)
        if a is None or not is_dir:
            return False
        denied = -1
        for r in a._allow:
            if r.glob.ancestor(path):
                if denied < 0:
                    denied = self._subtree_denied(a, path)
                if r.allow & ~denied:
                    return True
        return False

    def _compute_uniform(self, path: str) -> bool:
        first: tuple[Rights, bool, bool] | None = None
        for name in self.agents:
            seen = (self._rights(name, path), self._visible(name, path, True), self._visible(name, path, False))
            if first is None:
                first = seen
            elif seen != first:
                return False
        return True

    # -- reporting --------------------------------------------------------

    def explain(self, agent: str, path: str) -> list[dict[str, Any]]:
        """Each rule that bears on `path` for `agent`, then a final {"kind": "result", ...}.

        Rule entries: kind "allow" / "deny" (the rule matches the path) or
        "ancestor" (the path is a directory above what the rule allows, which
        makes it visible), with index, glob, letters and line.
        """
        a = self.agents.get(agent)
        out: list[dict[str, Any]] = []
        if a is not None:
            for r in a.rules:
                if r.glob.match(path):
                    kind = r.kind
                elif r.allow and r.glob.ancestor(path):
                    kind = "ancestor"
                else:
                    continue
                out.append({"kind": kind, "index": r.index, "glob": r.path,
                            "letters": r.letters, "line": r.line})
        out.append({"kind": "result", "agent": agent, "path": path,
                    "known_agent": a is not None,
                    "rights": str(self.rights(agent, path)),
                    "visible": self.visible(agent, path)})
        return out

    def settings(self, section: str) -> dict[str, Any]:
        """Values of a registered section (`[locks]`, `[audit.runaway]`...), defaults filled in."""
        spec = _sections.section(section)
        if spec is None:
            raise KeyError(f"no registered policy section {section!r}")
        values = {k: f.default for k, f in spec.fields.items()}
        values.update(self._settings.get(section, {}))
        return values

    def agent_settings(self, agent: str, section: str) -> dict[str, Any]:
        """Values of a per-agent section `[agents.NAME.<section>]`, defaults filled in."""
        spec = _sections.section(section, agent_section=True)
        if spec is None:
            raise KeyError(f"no registered per-agent policy section {section!r}")
        values = {k: f.default for k, f in spec.fields.items()}
        a = self.agents.get(agent)
        if a is not None:
            values.update(a.extra.get(section, {}))
        return values


class PolicyHolder:
    """Owns the policy in force and reloads it when the file changes.

    `maybe_reload()` is cheap enough to call from request handlers: it stats
    the file at most every `interval` seconds. A broken edit is logged once
    (naming file and line) and the last good policy stays in force.
    """

    def __init__(self, path: str | os.PathLike[str], *, interval: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners: list[Callable[[Policy], None]] = []
        self.generation = 0
        self.last_error: str | None = None
        self._sig = self._signature()
        self._current = Policy.load(self.path)
        self._bad_sig: tuple[int, ...] | None = None
        self._next_check = clock() + interval

    @property
    def current(self) -> Policy:
        return self._current

    def add_listener(self, fn: Callable[[Policy], None]) -> None:
        """Call fn(new_policy) after each successful reload (e.g. to drop kernel caches)."""
        self._listeners.append(fn)

    def _signature(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)

    def maybe_reload(self) -> bool:
        """Reload if the file changed since the last look; True if a new policy is in force."""
        now = self._clock()
        if now < self._next_check:
            return False
        self._next_check = now + self.interval
        sig = self._signature()
        if sig == self._sig or sig == self._bad_sig or sig is None:
            return False
        return self._reload(sig)

    def reload(self) -> bool:
        """Reload now (SIGHUP); True if the new file was valid and is now in force."""
        return self._reload(self._signature())

    def _reload(self, sig: tuple[int, ...] | None) -> bool:
        with self._lock:
            try:
                new = Policy.load(self.path)
            except PolicyError as e:
                self._bad_sig = sig
                self.last_error = str(e)
                log.error("policy not reloaded, keeping the last good one: %s", e)
                return False
            self._current = new
            self._sig = sig
            self._bad_sig = None
            self.last_error = None
            self.generation += 1
        log.info("policy reloaded from %s: %d agents, %d rules", self.path, len(new.agents), new.rule_count)
        for fn in list(self._listeners):
            try:
                fn(new)
            except Exception:
                log.exception("policy reload listener failed")
        return True


# Sections other parts of agentfs read, declared here so that the starter file
# validates before those parts exist; their owners may extend them.
register_section("workspace", {
    "default_agent": FieldSpec(str, "nobody", "agent of callers that no rule claims"),
})
register_section("mount", {
    "cache_seconds": FieldSpec(float, 60.0, "kernel entry/attr timeout where all agents see a path alike",
                               non_negative),
})
register_section("locks", {
    "default_ttl": FieldSpec(float, 300.0, "lease of a lock taken without --ttl, seconds", non_negative),
    "wait_seconds": FieldSpec(float, 5.0, "how long a blocked open waits before EAGAIN", non_negative),
})
register_section("audit", {
    "reads": FieldSpec(bool, False, "also record reads (opens for reading), not only changes"),
})
register_section("search", {
    "embedder": FieldSpec(str, "minilm", "embedding model of the search index"),
})
