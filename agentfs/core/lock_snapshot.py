"""The in-memory side of the lock table: snapshot, queued requests, and who blocks whom.

Pure code with no I/O, shared by the hot-path snapshot checks and the
grant transaction so that both decide alike.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from agentfs.core.lock_types import Lock, LockMode, ancestors, modes_conflict, overlaps


@dataclass(frozen=True)
class Intent:
    id: int
    path: str
    agent: str
    mode: LockMode
    expires_ns: int

    def as_lock(self) -> Lock:
        return Lock(self.path, self.mode, self.agent, None, 0, 0, self.expires_ns)


class Snapshot:
    """An immutable in-memory copy of the lock table, indexed for ancestor and subtree lookups."""

    def __init__(self, locks: Iterable[Lock] = (), intents: Iterable[Intent] = ()):
        self.locks = sorted(locks, key=lambda lk: (lk.path, lk.agent))
        self.intents = sorted(intents, key=lambda i: i.id)
        self.by_path: dict[str, list[Lock]] = {}
        for lock in self.locks:
            self.by_path.setdefault(lock.path, []).append(lock)
        self.paths = sorted(self.by_path)

    def covering(self, path: str) -> Iterator[Lock]:
        """Locks on path and on each of its ancestors."""
        by_path = self.by_path
        for p in ancestors(path):
            found = by_path.get(p)
            if found:
                yield from found

    def below(self, path: str) -> Iterator[Lock]:
        """Locks strictly below path."""
        if path == "/":
            for p in self.paths:
                if p != "/":
                    yield from self.by_path[p]
            return
        prefix = path + "/"
        i = bisect.bisect_left(self.paths, prefix)
        while i < len(self.paths) and self.paths[i].startswith(prefix):
            yield from self.by_path[self.paths[i]]
            i += 1


def request_blocker(locks: Iterable[Lock], intents: Iterable[Intent], agent: str, path: str,
                     mode: LockMode, my_intent: int | None, now_ns: int,
                     alive: Callable[[Lock], bool]) -> Lock | None:
    """What stops `agent` taking `mode` on `path`: a lock, or an earlier incompatible intent.

    Shared by the snapshot pre-check and the transaction, so that both
    decide alike. An agent already holding a lock on or above or below the
    path does not queue behind intents: whoever waits there waits for it
    anyway, and making it queue would only make both time out.
    """
    holding = False
    for lock in locks:
        if not lock.alive_at(now_ns) or not overlaps(lock.path, path):
            continue
        if lock.agent == agent:
            holding = True
            continue
        if modes_conflict(lock.mode, mode) and alive(lock):
            return lock
    if holding:
        return None
    for intent in intents:
        if my_intent is not None and intent.id >= my_intent:
            break
        if (intent.agent != agent and intent.expires_ns > now_ns
                and modes_conflict(intent.mode, mode) and overlaps(intent.path, path)):
            return intent.as_lock()
    return None
