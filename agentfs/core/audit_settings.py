"""The `[audit]` and `[audit.runaway]` settings of the policy file.

They are declared with the policy section registry so that a misspelt key is
a load error naming the line; here they are turned into frozen values with
defaults, so the audit code never has to ask whether a key exists.

Policy file shape:

    [audit]
    reads = false              # also record opens for reading
    retention_records = 0      # keep at most N live records (0: unlimited)
    retention_days = 0         # archive records older than N days (0: never)
    durability = "process"     # "process": survives a daemon kill; "power": also power loss

    [audit.runaway]
    writes_per_file_per_minute = 120
    new_files_per_minute = 1000
    ops_per_minute = 0         # any change at all (0: off)
    action = "alert"           # or "deny": refuse the agent's changes while cooling off
    cooloff_seconds = 60

    [agents.NAME.runaway]      # per-agent overrides of any [audit.runaway] key
    action = "deny"
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping

DURABILITY = ("process", "power")
ACTIONS = ("alert", "deny")


@dataclass(frozen=True)
class RunawayRule:
    """Thresholds per sliding window; 0 turns a threshold off."""

    writes_per_file_per_minute: int = 120
    new_files_per_minute: int = 1000
    ops_per_minute: int = 0
    action: str = "alert"
    cooloff_seconds: float = 60.0
    window_seconds: float = 60.0


@dataclass(frozen=True)
class AuditSettings:
    reads: bool = False
    retention_records: int = 0
    retention_days: float = 0.0
    durability: str = "process"
    runaway: RunawayRule = RunawayRule()
    runaway_agents: Mapping[str, RunawayRule] = field(default_factory=dict)

    def rule_for(self, agent: str) -> RunawayRule:
        return self.runaway_agents.get(agent, self.runaway)


def _one_of(choices: tuple[str, ...]):
    return lambda v: None if v in choices else "must be one of " + ", ".join(f'"{c}"' for c in choices)


def _register() -> None:
    """Declare the sections if the policy registry exists (it is optional for this module)."""
    try:
        from agentfs.core.sections import FieldSpec, non_negative, register_section
    except ImportError:
        try:
            from agentfs.core.policy import FieldSpec, register_section  # type: ignore[attr-defined]
            non_negative = None  # type: ignore[assignment]
        except ImportError:
            return
    d, r = AuditSettings(), RunawayRule()
    register_section("audit", {
        "reads": FieldSpec(bool, d.reads, "also record opens for reading"),
        "retention_records": FieldSpec(int, d.retention_records,
                                       "keep at most this many live records, archive older (0: unlimited)",
                                       non_negative),
        "retention_days": FieldSpec(float, d.retention_days,
                                    "archive records older than this many days (0: never)", non_negative),
        "durability": FieldSpec(str, d.durability,
                                '"process" (survives a daemon kill) or "power" (fsync, survives power loss)',
                                _one_of(DURABILITY)),
    })
    runaway_fields = {
        "writes_per_file_per_minute": FieldSpec(int, r.writes_per_file_per_minute,
                                                "changes to one path per window: opens for writing, truncates, renames... (0: off)",
                                                non_negative),
        "new_files_per_minute": FieldSpec(int, r.new_files_per_minute,
                                          "files, directories and links created per window (0: off)",
                                          non_negative),
        "ops_per_minute": FieldSpec(int, r.ops_per_minute, "changes of any kind per window (0: off)",
                                    non_negative),
        "action": FieldSpec(str, r.action, '"alert" or "deny"', _one_of(ACTIONS)),
        "cooloff_seconds": FieldSpec(float, r.cooloff_seconds,
                                     "how long a denied agent stays denied", non_negative),
        "window_seconds": FieldSpec(float, r.window_seconds, "the sliding window (seconds)",
                                    lambda v: None if v > 0 else "must be positive"),
    }
    register_section("audit.runaway", runaway_fields)
    try:
        register_section("runaway", runaway_fields, agent_section=True)
    except TypeError:
        pass


_register()


def _rule(base: RunawayRule, d: Mapping[str, Any] | None) -> RunawayRule:
    if not d:
        return base
    known = {f.name for f in fields(RunawayRule)}
    vals = {k: v for k, v in d.items() if k in known}
    if vals.get("action") not in (None, *ACTIONS):
        vals.pop("action")
    return replace(base, **vals)


def parse(d: Mapping[str, Any] | None) -> AuditSettings:
    """Settings from what the daemon's `settings()` returns; absent keys take defaults.

    Accepted shapes: a mapping of section names (`{"audit": {...},
    "audit.runaway": {...}}`, what `settings_from_policy` builds), nested
    (`{"audit": {"runaway": {...}}}`, the TOML as parsed), or just the
    `[audit]` section itself; per-agent rules under
    `{"agents": {NAME: {"runaway": {...}}}}`.
    """
    d = d or {}
    flat = {f.name for f in fields(AuditSettings)} | {"runaway"}
    if "audit" not in d and flat & set(d):
        d = {"audit": d}  # just the [audit] section, as `Policy.settings("audit")` returns it
    audit = dict(d.get("audit") or {})
    runaway_d = d.get("audit.runaway") or audit.pop("runaway", None) or {}
    known = {f.name for f in fields(AuditSettings)} - {"runaway", "runaway_agents"}
    vals = {k: v for k, v in audit.items() if k in known}
    if vals.get("durability") not in (None, *DURABILITY):
        vals.pop("durability")
    base = _rule(RunawayRule(), runaway_d)
    per_agent: dict[str, RunawayRule] = {}
    for name, a in (d.get("agents") or {}).items():
        if isinstance(a, Mapping) and isinstance(a.get("runaway"), Mapping):
            per_agent[name] = _rule(base, a["runaway"])
    for name, a in (runaway_d.get("agents") or {}).items() if isinstance(runaway_d, Mapping) else ():
        if isinstance(a, Mapping):
            per_agent[name] = _rule(base, a)
    return AuditSettings(**vals, runaway=base, runaway_agents=per_agent)


def from_policy_file(path: Any) -> AuditSettings:
    """Settings read straight from agentfs.toml, for CLI commands that run without a daemon."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return AuditSettings()
    return parse(data)


def settings_from_policy(policy: Any) -> dict[str, Any]:
    """The dict `AuditLog`'s settings callable returns, from a loaded `Policy`.

    Per-agent rules take only the keys the agent's `[agents.NAME.runaway]`
    sets, so everything else falls back to `[audit.runaway]`.
    """
    agents = {}
    for name, a in getattr(policy, "agents", {}).items():
        own = (getattr(a, "extra", None) or {}).get("runaway")
        if own:
            agents[name] = {"runaway": dict(own)}
    return {"audit": policy.settings("audit"), "audit.runaway": policy.settings("audit.runaway"),
            "agents": agents}


def policy_settings(holder: Any) -> Callable[[], dict[str, Any]]:
    """A settings callable over a `PolicyHolder`: the same dict until the policy is reloaded.

    Returning the same object lets `AuditLog` skip re-parsing on every request.
    """
    cache: list[Any] = [None, None]

    def current() -> dict[str, Any]:
        p = holder.current
        if cache[0] is not p:
            cache[0], cache[1] = p, settings_from_policy(p)
        return cache[1]

    return current
