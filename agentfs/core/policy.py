"""The policy: which agents exist, how each is recognised, and what each may do where.

Loaded from `WS/agentfs.toml` and validated as a whole: a bad file raises
PolicyError naming file, line and key, so a broken edit never half-applies.
A Policy is immutable; a reload builds a new one (see PolicyHolder), which
is what lets `rights()` and `visible()` memoise freely on the hot path.

Semantics (DESIGN.md): default deny; deny rules beat allow rules; the rights
of all matching allow rules add up. Rights: r read and list, w change
existing content and metadata, c create, d delete or rename away, l lock.
"""

import functools
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from agentfs.core import sections as _sections
from agentfs.core.policy_parse import Parser
from agentfs.core.rights import (_AS_RIGHTS, AGENT_NAME, ALL, LETTERS, Agent, PolicyError, Rights, Rule,
                                 _first_segment)
from agentfs.core.sections import FieldSpec, non_negative, register_section

__all__ = ["Rights", "Rule", "Agent", "Policy", "PolicyHolder", "PolicyError",
           "FieldSpec", "register_section", "LETTERS", "ALL"]

log = logging.getLogger(__name__)

_CACHE_SIZE = 1 << 16


class Policy:
    """A validated, immutable policy with memoised rights and visibility."""

    def __init__(self, agents: dict[str, Agent], settings: dict[str, dict[str, Any]],
                 default_agent: str, filename: str) -> None:
        self.agents = agents
        self.default_agent = default_agent
        self.filename = filename
        self._settings = settings
        self._groups: dict[str, tuple[str, ...]] = {}
        self._by_uid = {uid: a.name for a in agents.values() for uid in a.uids}
        self._rights = functools.lru_cache(maxsize=_CACHE_SIZE)(self._compute_rights)
        self._visible = functools.lru_cache(maxsize=_CACHE_SIZE)(self._compute_visible)
        self._uniform = functools.lru_cache(maxsize=_CACHE_SIZE)(self._compute_uniform)
        self._same_view = functools.lru_cache(maxsize=_CACHE_SIZE)(self._compute_same_view)
        self._cacheable = functools.lru_cache(maxsize=_CACHE_SIZE)(self._compute_cacheable)

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
        parser = Parser(text, filename)
        agents, settings = parser.parse()
        default = settings.get("workspace", {}).get("default_agent", "nobody")
        if not AGENT_NAME.fullmatch(default):
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
        b = a.bucket(_first_segment(path))
        allow = 0
        for r in b.allow:
            if r.allow & ~allow and r.glob.match(path):
                allow |= r.allow
        if allow:
            for r in b.deny:
                if r.deny & allow and r.glob.match(path):
                    allow &= ~r.deny
        return _AS_RIGHTS[allow]

    def _subtree_denied(self, a: Agent, path: str) -> int:
        """Rights denied on `path` and on everything below it."""
        denied = 0
        for r in a.bucket(_first_segment(path)).deny:
            if r.glob.subtree and r.glob.match(path):
                denied |= r.deny
        return denied

    def _compute_visible(self, agent: str, path: str, is_dir: bool) -> bool:
        if path == "/":
            return True
        if self._rights(agent, path) & 1:
            return True
        a = self.agents.get(agent)
        if a is None or not is_dir:
            return False
        denied = -1
        for r in a.bucket(_first_segment(path)).allow:
            if r.glob.ancestor(path):
                if denied < 0:
                    denied = self._subtree_denied(a, path)
                if r.allow & ~denied:
                    return True
        return False

    def _uniform_groups(self, seg: str) -> tuple[str, ...]:
        """One agent per distinct set of rules that bear on paths under `seg`."""
        groups = self._groups.get(seg)
        if groups is None:
            reps: dict[tuple, str] = {}
            for name, a in self.agents.items():
                reps.setdefault(a.bucket(seg).signature, name)
            groups = tuple(reps.values())
            if len(self._groups) > 4096:
                self._groups.clear()
            self._groups[seg] = groups
        return groups

    def same_view(self, path: str) -> bool:
        """True if every agent sees `path` alike (visible to all, or to none); rights may differ.

        Looser than uniform(): rights are enforced in every operation that
        opens or changes, and those always reach the daemon, so the kernel's
        shared caches can only leak *visibility* (a cached entry answering
        lookup/stat for an agent that should get ENOENT).
        """
        return self._same_view(path)

    def _compute_same_view(self, path: str) -> bool:
        return self._views_agree(path, among_seers_of=None)

    def _views_agree(self, path: str, among_seers_of: str | None) -> bool:
        """Whether agents see `path` alike: all of them, or those who see `among_seers_of`."""
        first: tuple[bool, bool] | None = None
        for name in self._uniform_groups(_first_segment(path)):
            if among_seers_of is not None and not self._visible(name, among_seers_of, True):
                continue
            seen = (self._visible(name, path, True), self._visible(name, path, False))
            if first is None:
                first = seen
            elif seen != first:
                return False
        return True

    def cacheable(self, path: str) -> bool:
        """True if every agent that can see the parent of `path` sees `path` alike.

        That is what lets the kernel cache the entry for everyone: its shared
        dentry cache is reached only by walking through the parent, and an
        agent that cannot see the parent is stopped there (or higher), where
        the entry is not cacheable and the daemon answers ENOENT. Looser than
        same_view(): an agent's private area caches for that agent, and only
        its top directory is looked up every time.
        """
        return self._cacheable(path)

    def _compute_cacheable(self, path: str) -> bool:
        parent = path.rsplit("/", 1)[0] or "/"
        return self._views_agree(path, among_seers_of=None if parent == "/" else parent)

    def _compute_uniform(self, path: str) -> bool:
        first: tuple[Rights, bool, bool] | None = None
        for name in self._uniform_groups(_first_segment(path)):
            seen = (self._rights(name, path), self._visible(name, path, True), self._visible(name, path, False))
            if first is None:
                first = seen
            elif seen != first:
                return False
        return True

    def link_leak(self, src_path: str, new_path: str) -> str | None:
        """The agent a hard link `new_path` -> `src_path` would give more rights, or None.

        A hard link is the same file under a second name; if any agent has a
        right (or visibility) on the new name that it lacks on the old one,
        the link would carry the file into an area where its reader gets more,
        or out of a private area. The FUSE layer refuses such links (EACCES),
        on top of requiring r on the source and c on the new name.
        """
        for name in self.agents:
            old = self._rights(name, src_path)
            new = self._rights(name, new_path)
            if new & ~old:
                return name
            if self._visible(name, new_path, False) and not self._visible(name, src_path, False):
                return name
        return None

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


def _direct_mode(value: Any) -> str | None:
    return None if value in ("auto", "always", "never") else "must be auto, always or never"


def _stream_mode(value: Any) -> str | None:
    return None if value in ("behind", "direct", "cache") else "must be behind, direct or cache"


def _old_direct_writes(value: Any) -> str | None:
    return None if value in ("", "auto", "always", "never") else "must be auto, always or never"


# `direct_writes`, the key before `stream_writes`, still read when set:
# its auto sent large writes past the cache with O_DIRECT, as "direct" does now,
# but behind is what auto would choose today.
_OLD_DIRECT_WRITES = {"auto": "behind", "always": "direct", "never": "cache"}


def stream_writes(mount: dict[str, Any]) -> str:
    """The `[mount] stream_writes` in force: `direct_writes`, its old name, wins when set."""
    old = mount.get("direct_writes")
    return _OLD_DIRECT_WRITES[old] if old else str(mount.get("stream_writes", "behind"))


# Sections other parts of agentfs read, declared here so that the starter file
# validates before those parts exist; their owners may extend them.
register_section("workspace", {
    "default_agent": FieldSpec(str, "nobody", "agent of callers that no rule claims"),
})
register_section("mount", {
    "cache_seconds": FieldSpec(float, 60.0, "kernel entry/attr timeout where all agents see a path alike",
                               non_negative),
    "stream_writes": FieldSpec(str, "behind", "how large writes of write-only handles reach the disk: "
                               "behind, direct or cache", _stream_mode),
    "direct_writes": FieldSpec(str, "", "old name of stream_writes (auto: behind, always: direct, never: "
                               "cache); wins when set", _old_direct_writes),
    "direct_reads": FieldSpec(str, "auto", "large reads of read-only handles past the backing page cache: "
                              "auto, always or never", _direct_mode),
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
