"""Runaway detection: an agent stuck in a loop, caught by sliding-window counts.

Counts live in memory per daemon (a loop runs against one mount; sharing
counts across daemons would put a database write on every change). Each
check is O(1) amortised: a deque of timestamps per key, trimmed from the
left, and a sweep after as many changes as there are keys drops keys that
went quiet, so that touching many files once (tar -x) does not grow memory
without bound nor make every change pay for the keys it left behind.
"""

from __future__ import annotations

import logging
import time
from collections import deque
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
        # One timestamp per key until its second hit, then a deque of them.
        self._hits: dict[tuple[str, str, str], float | deque[float]] = {}
        self._alerted_until: dict[tuple[str, str, str], float] = {}
        self._cooloff_until: dict[str, float] = {}
        self._calls = 0
        self._swept_at = 0

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
        # Sweep after as many counted calls as there are keys (at least
        # _SWEEP_EVERY): a fixed period made each call pay for keys/period
        # entries, which grew with the tree (rm -rf of 20,000 files: ~2 µs a
        # call). Calls that count nothing add no keys, so they need no sweep.
        if self._calls - self._swept_at >= max(_SWEEP_EVERY, len(self._hits)):
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
        key = (agent, name, key_path)
        edge = now - rule.window_seconds
        q = self._hits.get(key)
        if q is None or not isinstance(q, deque) and q <= edge:
            # Most paths are changed once (tar -x, rm -rf): a bare timestamp
            # until a second hit, not a deque each (a third of the check's cost).
            self._hits[key] = now
            if threshold >= 1:
                return False
            q = self._hits[key] = deque((now,))
        elif not isinstance(q, deque):
            q = self._hits[key] = deque((q, now))
        else:
            q.append(now)
        while q and q[0] <= edge:
            q.popleft()
        if len(q) <= threshold:
            return False
        if self._alerted_until.get(key, 0.0) > now:
            return False
        self._alerted_until[key] = now + rule.window_seconds
        cool_ns = None
        if rule.action == "deny":
            self._cooloff_until[agent] = now + rule.cooloff_seconds
            cool_ns = time.time_ns() + int(rule.cooloff_seconds * 1e9)
        alert = Alert(agent, name, shown_path or key_path or "/", len(q), threshold,
                      rule.window_seconds, rule.action, cool_ns)
        log.warning("audit: runaway agent %r: %s = %d > %d in %gs on %s (action %s)", agent, name,
                    len(q), threshold, rule.window_seconds, alert.path, rule.action)
        self._on_alert(alert)
        return rule.action == "deny"

    def _sweep(self, now: float, window: float) -> None:
        edge = now - window
        for key in [k for k, q in self._hits.items()
                    if (not q or q[-1] <= edge if isinstance(q, deque) else q <= edge)]:
            del self._hits[key]
        for key in [k for k, t in self._alerted_until.items() if t <= now]:
            del self._alerted_until[key]
