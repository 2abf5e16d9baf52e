"""Errors a user can hit.

Each carries one line that says what went wrong and what to do; the CLI
prints it without a traceback and exits non-zero.
"""


class AgentfsError(Exception):
    """A failure the user can fix; its message is shown as-is."""

    exit_code = 1


class WorkspaceError(AgentfsError):
    """The workspace is missing, malformed, or cannot be found."""


class MountError(AgentfsError):
    """Mounting or unmounting failed."""
