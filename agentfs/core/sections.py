"""The registry of policy-file sections owned by other modules.

The policy file is one file for the whole workspace, but its sections
belong to different parts of agentfs (`[mount]` to the daemon, `[locks]` to
the lock manager...). Each part declares its keys here at import time, so
the validator can reject a misspelt key in any of them, and `settings()`
can fill in defaults, without the policy module knowing them all.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FieldSpec:
    """One key of a section: its type (bool, int, float, str or list), default and help."""

    type: type
    default: Any
    help: str = ""
    # Optional extra check: returns a reason the value is wrong, or None.
    check: Callable[[Any], str | None] | None = None


@dataclass
class Section:
    name: str
    fields: dict[str, FieldSpec]
    agent_section: bool = False


_SECTIONS: dict[str, Section] = {}
_discovered = False


def discover() -> None:
    """Import every agentfs.core module once, so all sections are declared before a file is checked.

    Otherwise `agentfs policy check` (which imports little) could call a key
    unknown that the daemon (which imports everything) accepts.
    """
    global _discovered
    if _discovered:
        return
    _discovered = True
    import agentfs.core as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        name = f"agentfs.core.{info.name}"
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - one broken module must not stop validation
            log.warning("cannot import %s to learn its policy sections: %s", name, e)


def register_section(name: str, fields: dict[str, FieldSpec], *, agent_section: bool = False) -> None:
    """Declare (or extend) a section; nested names like "audit.runaway" are `[audit.runaway]`.

    With agent_section=True the section lives under each agent instead:
    `[agents.NAME.<name>]`, read back with `Policy.agent_settings(agent, name)`.
    """
    key = ("agent:" if agent_section else "") + name
    sec = _SECTIONS.get(key)
    if sec is None:
        _SECTIONS[key] = Section(name, dict(fields), agent_section)
    else:
        sec.fields.update(fields)


def section(name: str, *, agent_section: bool = False) -> Section | None:
    return _SECTIONS.get(("agent:" if agent_section else "") + name)


def has_subsections(name: str, *, agent_section: bool = False) -> bool:
    """True if some registered section lies below `name` (e.g. "audit" for "audit.runaway")."""
    prefix = ("agent:" if agent_section else "") + name + "."
    return any(k.startswith(prefix) for k in _SECTIONS)


def top_level_names() -> list[str]:
    names = {k.split(".")[0] for k in _SECTIONS if not k.startswith("agent:")}
    return sorted(names | {"agents"})


def agent_section_names() -> list[str]:
    return sorted(k[len("agent:"):].split(".")[0] for k in _SECTIONS if k.startswith("agent:"))


def check_value(spec: FieldSpec, value: Any) -> tuple[Any, str | None]:
    """(the value converted to the spec's type, or a reason it is wrong)."""
    t = spec.type
    ok = isinstance(value, t) and not (t in (int, float) and isinstance(value, bool))
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        return value, f"must be {_type_name(t)}, not {_type_name(type(value))}"
    if spec.check is not None:
        reason = spec.check(value)
        if reason:
            return value, reason
    return value, None


def _type_name(t: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(t, t.__name__)


def non_negative(value: Any) -> str | None:
    return "must not be negative" if value < 0 else None
