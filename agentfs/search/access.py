"""Who may see which hit: the one place search meets identity and policy.

Kept apart so that the names of the core API are used in one spot only.
Failing closed matters: if the caller cannot be resolved to an agent or the
policy cannot be read, a non-root caller gets an error, never unfiltered hits.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from agentfs.errors import AgentfsError
from agentfs.workspace import Workspace

log = logging.getLogger(__name__)


class AccessError(AgentfsError):
    """The caller could not be checked; no results are given."""


class Access:
    """Turns a peer (uid, gid, pid) or a named agent into a `path -> may read` predicate."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._lock = threading.Lock()
        self._holder = None
        self._resolver = None

    def _load(self):  # type: ignore[no-untyped-def]
        with self._lock:
            if self._holder is None:
                from agentfs.core.policy import PolicyHolder

                self._holder = PolicyHolder(self.ws.policy_path)
            else:
                self._holder.maybe_reload()
            return self._holder

    def _identity(self, uid: int, gid: int, pid: int):  # type: ignore[no-untyped-def]
        holder = self._load()
        try:
            with self._lock:
                if self._resolver is None:
                    from agentfs.core.identity import IdentityResolver

                    self._resolver = IdentityResolver(holder, self.ws)
                resolver = self._resolver
            return resolver.resolve(uid, gid, pid)
        except ImportError as e:
            raise AccessError(f"cannot identify the caller (uid {uid}): {e}") from e

    def agent_of(self, uid: int, gid: int, pid: int) -> str:
        return str(self._identity(uid, gid, pid).agent)

    def session_agent(self, uid: int, gid: int, pid: int) -> str | None:
        """The agent of the `agentfs run` session `pid` belongs to, if any.

        Root inside `agentfs run --agent NAME` is that agent on the mount, so
        its searches are that agent's too: hits it could not open there
        would only mislead it.
        """
        ident = self._identity(uid, gid, pid)
        return str(ident.agent) if ident.how == "session" else None

    def reader_filter(self, agent: str) -> Callable[[str], bool]:
        """A predicate: may `agent` read this workspace path?"""
        from agentfs.core.policy import Rights

        policy = self._load().current

        def allowed(path: str) -> bool:
            return Rights.R in policy.rights(agent, path)

        return allowed

    def for_peer(self, uid: int, gid: int, pid: int, requested_agent: str | None
                 ) -> tuple[str | None, Callable[[str], bool] | None]:
        """(agent, filter) for a connected peer; root may ask as any agent or, outside a session, unfiltered."""
        if uid == 0:
            if requested_agent:
                return requested_agent, self.reader_filter(requested_agent)
            agent = self.session_agent(uid, gid, pid) if pid > 0 else None
            if agent is None:
                return None, None
            return agent, self.reader_filter(agent)
        agent = self.agent_of(uid, gid, pid)
        return agent, self.reader_filter(agent)
