"""Turning the text of agentfs.toml into agents and settings, or one PolicyError.

Errors name file, line and key (`agentfs.toml:14: agents.writer.rules[1].allow:
unknown right 'x' ...`); tomllib gives no positions, so lines come from
agentfs.core.tomllines.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

from agentfs.core import sections as _sections
from agentfs.core.globs import GlobError, compile_glob
from agentfs.core.rights import AGENT_NAME, Agent, PolicyError, Rights, Rule
from agentfs.core.tomllines import LineMap

def _key(path: tuple) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            text = p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else '"' + p.replace('"', '\\"') + '"'
            out += ("." if out else "") + text
    return out


class Parser:
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
        _sections.discover()
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
        if not AGENT_NAME.fullmatch(name):
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


