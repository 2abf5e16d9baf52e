"""Runaway detection: an agent stuck in a loop, caught by sliding-window counts.

Counts live in memory per daemon (a loop runs against one mount; sharing
counts across daemons would put a database write on every change). Each
check is O(1) amortised: per agent and rule, a table from path to its
timestamps in the window, and a sweep after as many changes as there are
entries drops paths that went quiet, so that touching many files once
(tar -x) does not grow memory without bound nor make every change pay for
the entries it left behind.

The table is kept small because it is large by nature (one entry per path
changed in the last minute: ~17,000 while a benchmark repeats tar -x) and
is touched on every change, on the FUSE loop's thread: a path holds one
float until its second change, then a list of at most threshold + 1 of
its newest timestamps (a threshold is crossed when the (threshold + 1)-th
newest is still in the window; older ones cannot matter), keyed by the
path string itself. A deque and a tuple key each cost ~0.7 KB a path, and
the cache misses of walking that much memory cost more than the counting.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_right
from dataclasses import dataclass
from typing import Callable

from agentfs.core.audit_settings import AuditSettings, RunawayRule

log = logging.getLogger(__name__)

# Operations that bring a new name into the tree.
NEW_FILE_OPS = frozenset({"create", "mknod", "mkdir", "symlink", "link"})
_SWEEP_EVERY = 4096


@dataclass(frozen=True)
class Alert:
    """One threshold crossing, to be recorded as an audit record of op "runaway"."""

    agent: str
    rule: str
    path: str
    count: int
    threshold: int
    window_seconds: float
    action: str
    cooloff_until_ns: int | None


class RunawayDetector:
    """Decides, per change, whether an agent has run away; calls `on_alert` once per window."""

    def __init__(self, settings: Callable[[], AuditSettings], on_alert: Callable[[Alert], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._on_alert = on_alert
        self.clock = clock
        # agent -> rule name -> path -> one timestamp, or the newest ones (ascending).
        self._hits: dict[str, dict[str, dict[str, float | list[float]]]] = {}
        self._alerted_until: dict[tuple[str, str, str], float] = {}
        self._cooloff_until: dict[str, float] = {}
        self._calls = 0
        self._swept_at = 0
        self._entries_at_sweep = 0

    def cooling_off(self, agent: str) -> bool:
        until = self._cooloff_until.get(agent)
        if until is None:
            return False
        if self.clock() < until:
            return True
        del self._cooloff_until[agent]
        return False

    def check(self, agent: str, op: str, path: str, removal: bool = False) -> bool:
        """Count one change (the caller asks only for changes); True means refuse it.

        True only with action "deny" while the agent is cooling off.
        `removal`: the change only takes the path away (unlink, rmdir, the
        source of a rename). It counts as a change but not against the path:
        a loop that deletes and recreates a file shows in the recreation, and
        counting every deleted path (rm -rf) filled the window's table with
        keys that can never count again.
        """
        rule = self._settings().rule_for(agent)
        by_path = rule.writes_per_file_per_minute and not removal
        new_file = rule.new_files_per_minute and op in NEW_FILE_OPS
        if not (by_path or new_file or rule.ops_per_minute):
            # Nothing to count (a removal under the default rule: every entry
            # of an rm -rf): only a cooling-off agent's refusal remains.
            return bool(self._cooloff_until) and self.cooling_off(agent) and rule.action == "deny"
        now = self.clock()
        self._calls += 1
        # Sweep once the counted calls since the last sweep reach the entries
        # it left (at least _SWEEP_EVERY): there are at most that many plus
        # those calls, so each call pays O(1). A fixed period made each call
        # pay for entries/period, which grew with the tree (rm -rf of 20,000
        # files: ~2 µs a call). Calls that count nothing add no entries.
        if self._calls - self._swept_at >= max(_SWEEP_EVERY, self._entries_at_sweep):
            self._swept_at = self._calls
            self._sweep(now, rule.window_seconds)
        if self._cooloff_until and self.cooling_off(agent):
            return rule.action == "deny"
        deny = False
        # Every change counts against its path: a loop rewriting one file shows
        # as opens for writing, truncates, or renames onto it (atomic saves).
        if by_path:
            deny |= self._count(now, rule, agent, "writes_per_file_per_minute", path,
                                rule.writes_per_file_per_minute)
        if new_file:
            deny |= self._count(now, rule, agent, "new_files_per_minute", "", rule.new_files_per_minute,
                                path)
        if rule.ops_per_minute:
            deny |= self._count(now, rule, agent, "ops_per_minute", "", rule.ops_per_minute, path)
        return deny

    def _count(self, now: float, rule: RunawayRule, agent: str, name: str, key_path: str,
               threshold: int, shown_path: str | None = None) -> bool:
        by_rule = self._hits.get(agent)
        if by_rule is None:
            by_rule = self._hits[agent] = {}
        table = by_rule.get(name)
        if table is None:
            table = by_rule[name] = {}
        edge = now - rule.window_seconds
        q = table.get(key_path)
        if q is None or q.__class__ is not list and q <= edge:  # type: ignore[operator]
            # Most paths are changed a few times at most (tar -x, rm -rf).
            table[key_path] = now
            if threshold >= 1:
                return False
            q = table[key_path] = [now]
        elif q.__class__ is not list:
            q = table[key_path] = [q, now]  # type: ignore[list-item]
        else:
            q.append(now)  # type: ignore[union-attr]
            if q[0] <= edge:  # type: ignore[index]
                del q[:bisect_right(q, edge)]  # type: ignore[arg-type, index]
            if len(q) > threshold + 1:  # type: ignore[arg-type]
                del q[:len(q) - threshold - 1]  # type: ignore[arg-type, index]
        count = len(q)  # type: ignore[arg-type]
        if count <= threshold:
            return False
        key = (agent, name, key_path)
        if self._alerted_until.get(key, 0.0) > now:
            return False
        self._alerted_until[key] = now + rule.window_seconds
        cool_ns = None
        if rule.action == "deny":
            self._cooloff_until[agent] = now + rule.cooloff_seconds
            cool_ns = time.time_ns() + int(rule.cooloff_seconds * 1e9)
        alert = Alert(agent, name, shown_path or key_path or "/", count, threshold,
                      rule.window_seconds, rule.action, cool_ns)
        log.warning("audit: runaway agent %r: %s = %d > %d in %gs on %s (action %s)", agent, name,
                    count, threshold, rule.window_seconds, alert.path, rule.action)
        self._on_alert(alert)
        return rule.action == "deny"

    def _sweep(self, now: float, window: float) -> None:
        edge = now - window
        entries = 0
        for agent, by_rule in list(self._hits.items()):
            for name, table in list(by_rule.items()):
                for path in [p for p, q in table.items() if (q[-1] if q.__class__ is list else q) <= edge]:
                    del table[path]
                if table:
                    entries += len(table)
                else:
                    del by_rule[name]
            if not by_rule:
                del self._hits[agent]
        self._entries_at_sweep = entries
        for key in [k for k, t in self._alerted_until.items() if t <= now]:
            del self._alerted_until[key]

    def tracked(self) -> set[tuple[str, str, str]]:
        """(agent, rule, path) of every path whose changes are still counted."""
        return {(agent, name, path) for agent, by_rule in self._hits.items()
                for name, table in by_rule.items() for path in table}
