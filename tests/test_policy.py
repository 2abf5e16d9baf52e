"""The policy file: parsing, every validation error with its line, glob
semantics, rights arithmetic, visibility, uniform(), explain and reload."""

from __future__ import annotations

import logging
import os
import re
import textwrap
from itertools import product
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentfs.core.globs import GlobError, _pattern, compile_glob
from agentfs.core.policy import FieldSpec, Policy, PolicyError, PolicyHolder, Rights, register_section
from agentfs.core.starter import STARTER_POLICY_TEXT

DESIGN_EXAMPLE = """\
[workspace]
default_agent = "nobody"          # callers no agent claims; no rules = no rights

[agents.researcher]
uids = [2001]                     # processes of these Unix users are this agent
rules = [
  { path = "/research/**", allow = "rwcdl" },
  { path = "/data/**",     allow = "r" },
]

[agents.writer]                   # no uids: started with `agentfs run --agent writer`
rules = [
  { path = "/research/**", allow = "r" },
  { path = "/drafts/**",   allow = "rwcdl" },
  { path = "/drafts/secret/**", deny = "rwcdl" },
]

[agents.supervisor]
uids = [1000]
rules = [{ path = "/**", allow = "rwcdl" }]
"""


@pytest.fixture
def design() -> Policy:
    return Policy.from_text(DESIGN_EXAMPLE)


def one_agent(*rules: str) -> Policy:
    body = ",\n".join(f"  {r}" for r in rules)
    return Policy.from_text(f"[agents.a]\nrules = [\n{body}\n]\n")


# -- rights letters -----------------------------------------------------------

def test_rights_parse_and_str() -> None:
    assert Rights.parse("rw") == Rights.R | Rights.W
    assert Rights.parse("lrdcw") == Rights.R | Rights.W | Rights.C | Rights.D | Rights.L
    assert str(Rights.parse("wr")) == "rw"
    assert Rights.parse("rw").fixed() == "rw---"
    assert str(Rights.NONE) == "-" and Rights.parse("") == Rights.NONE
    with pytest.raises(ValueError, match="unknown right 'x'"):
        Rights.parse("rx")


# -- the DESIGN.md example ----------------------------------------------------

def test_design_example_loads(design: Policy) -> None:
    assert design.default_agent == "nobody"
    assert set(design.agents) == {"researcher", "writer", "supervisor", "nobody"}
    assert design.agents["nobody"].implicit and not design.agents["nobody"].rules
    assert design.agents["researcher"].uids == frozenset({2001})
    assert design.rule_count == 6
    assert design.agent_for_uid(2001) == "researcher"
    assert design.agent_for_uid(1000) == "supervisor"
    assert design.agent_for_uid(4242) is None
    assert [r.line for r in design.agents["writer"].rules] == [13, 14, 15]


def test_rights_add_up_and_deny_beats_allow(design: Policy) -> None:
    assert str(design.rights("writer", "/research/a.md")) == "r"
    assert str(design.rights("writer", "/drafts/x/y.md")) == "rwcdl"
    assert design.rights("writer", "/drafts/secret/plan.md") == Rights.NONE
    assert design.rights("writer", "/drafts/secret") == Rights.NONE
    assert design.rights("writer", "/data/x") == Rights.NONE
    assert str(design.rights("supervisor", "/drafts/secret/plan.md")) == "rwcdl"
    assert design.rights("nobody", "/research/a.md") == Rights.NONE
    assert design.rights("no-such-agent", "/research/a.md") == Rights.NONE
    p = one_agent('{ path = "/d/**", allow = "r" }', '{ path = "/d/*.md", allow = "wc" }',
                  '{ path = "/d/x.md", deny = "c" }')
    assert str(p.rights("a", "/d/y.md")) == "rwc"
    assert str(p.rights("a", "/d/x.md")) == "rw"
    assert str(p.rights("a", "/d/y.txt")) == "r"


def test_visibility_of_ancestors(design: Policy) -> None:
    assert design.visible("nobody", "/")
    assert not design.visible("nobody", "/research")
    assert design.visible("writer", "/research")
    assert design.visible("writer", "/drafts")
    assert not design.visible("writer", "/drafts/secret")
    assert not design.visible("writer", "/drafts/secret/x")
    assert not design.visible("writer", "/data")
    assert design.visible("researcher", "/data/sub/f.csv")
    p = one_agent('{ path = "/a/*/b/**", allow = "w" }')
    assert p.visible("a", "/a") and p.visible("a", "/a/x") and p.visible("a", "/a/x/b")
    assert p.visible("a", "/a/x/b/c")          # holds w below: a folder above something usable
    assert not p.visible("a", "/a/x/b/c", is_dir=False)   # a file with no r is invisible
    assert not p.visible("a", "/a/x/c")
    assert not p.visible("a", "/b")
    q = one_agent('{ path = "/a/b/c.txt", allow = "r" }')
    assert q.visible("a", "/a") and q.visible("a", "/a/b") and q.visible("a", "/a/b/c.txt")
    assert not q.visible("a", "/a/b/d.txt") and not q.visible("a", "/a/c")


def test_drop_box_folder_is_visible_but_unreadable() -> None:
    p = one_agent('{ path = "/inbox/**", allow = "c" }', '{ path = "/inbox/**", deny = "r" }')
    assert p.rights("a", "/inbox/x") == Rights.C
    assert p.visible("a", "/inbox")


def test_uniform(design: Policy) -> None:
    assert not design.uniform("/research/x")      # writer r, researcher rwcdl
    assert not design.uniform("/")                # supervisor has rights on /
    p = Policy.from_text(textwrap.dedent("""\
        [workspace]
        default_agent = "a"
        [agents.a]
        rules = [{ path = "/pub/**", allow = "r" }]
        [agents.b]
        rules = [{ path = "/pub/**", allow = "r" }, { path = "/b/**", allow = "rw" }]
    """))
    assert p.uniform("/pub/x")
    assert p.uniform("/")
    assert not p.uniform("/b/x")
    assert p.uniform("/elsewhere")                # nobody sees it: alike
    q = Policy.from_text('[workspace]\ndefault_agent = "a"\n[agents.a]\nrules = [{ path = "/pub/**", allow = "r" }]\n'
                         '[agents.b]\nrules = [{ path = "/pub/**", allow = "rw" }]\n')
    assert not q.uniform("/pub/x") and q.same_view("/pub/x")     # rights differ, visibility alike
    assert not design.same_view("/research/x")                     # nobody cannot see it
    assert design.same_view("/")


def test_explain(design: Policy) -> None:
    entries = design.explain("writer", "/drafts/secret/x")
    assert [(e["kind"], e["glob"], e["letters"], e["line"]) for e in entries[:-1]] == [
        ("allow", "/drafts/**", "rwcdl", 14), ("deny", "/drafts/secret/**", "rwcdl", 15)]
    assert entries[-1]["kind"] == "result" and entries[-1]["rights"] == "-"
    assert entries[-1]["visible"] is False
    root = design.explain("researcher", "/")
    assert root[-1]["visible"] is True and root[-1]["rights"] == "-"
    anc = one_agent('{ path = "/a/*/b/**", allow = "w" }', '{ path = "/c", allow = "r" }').explain("a", "/a/x")
    assert [(e["kind"], e["index"]) for e in anc[:-1]] == [("ancestor", 0)]
    assert anc[-1]["visible"] is True and anc[-1]["rights"] == "-"
    assert design.explain("ghost", "/x")[-1]["known_agent"] is False


# -- globs ----------------------------------------------------------------------

@pytest.mark.parametrize("glob, yes, no", [
    ("/a/*", ["/a/x", "/a/.hidden"], ["/a", "/a/x/y", "/b/x"]),
    ("/a/**", ["/a", "/a/x", "/a/x/y/z"], ["/ab", "/b/a"]),
    ("/**", ["/", "/a", "/a/b/c"], []),
    ("/", ["/"], ["/a"]),
    ("/a/**/b", ["/a/b", "/a/x/b", "/a/x/y/b"], ["/a/xb", "/a/x/b/c"]),
    ("/**/*.md", ["/x.md", "/a/b/x.md"], ["/a/x.txt", "/a.md/x"]),
    ("/a?.txt", ["/ab.txt"], ["/a.txt", "/abc.txt", "/a/.txt"]),
    ("/[a-c]x", ["/ax", "/cx"], ["/dx", "//x"]),
    ("/[!a-c]x", ["/dx"], ["/ax"]),
    ("/lit\\*", ["/lit*"], ["/litx"]),
    ("/a b/(c)+", ["/a b/(c)+"], ["/a b/cc"]),
])
def test_glob_semantics(glob: str, yes: list[str], no: list[str]) -> None:
    g = compile_glob(glob)
    for p in yes:
        assert g.match(p), (glob, p)
    for p in no:
        assert not g.match(p), (glob, p)


@pytest.mark.parametrize("bad, why", [
    ("", "empty"), ("a/b", "start with '/'"), ("/a/", "trailing"), ("/a//b", "empty path segment"),
    ("/a/**b", "whole path segment"), ("/a/b**", "whole path segment"), ("/[ab", "never closed"),
    ("/a/../b", "'..'"), ("/./b", "'.'"), ("/[z-a]", "bad character class"), ("/a\\", "escapes nothing"),
])
def test_bad_globs(bad: str, why: str) -> None:
    with pytest.raises(GlobError, match=why.replace("(", "\\(").replace("*", "\\*")):
        compile_glob(bad)


# -- validation errors: each names file, line and key ---------------------------

BAD_CASES = [
    # (text, line, key, fragment of the reason)
    ('[agents.w]\nrules = [\n  { path = "/a/**", allow = "r" },\n  { path = "/b", allow = "rx" },\n]\n',
     4, "agents.w.rules[1].allow", "unknown right 'x' (use letters r w c d l)"),
    ('[agents.w]\nrules = [{ path = "/a/**b", allow = "r" }]\n', 2, "agents.w.rules[0].path",
     "whole path segment"),
    ('[agents.w]\nrules = [{ path = 5, allow = "r" }]\n', 2, "agents.w.rules[0].path", "string glob"),
    ('[agents.w]\n\nrules = [\n { path = "/a", allow = "r", extra = 1 },\n]\n', 4,
     "agents.w.rules[0].extra", "unknown key (use path, allow, deny)"),
    ('[agents.w]\nrules = [{ allow = "r" }]\n', 2, "agents.w.rules[0]", "missing path"),
    ('[agents.w]\nrules = [{ path = "/a", allow = "r", deny = "w" }]\n', 2, "agents.w.rules[0]", "exactly one"),
    ('[agents.w]\nrules = [{ path = "/a" }]\n', 2, "agents.w.rules[0]", "exactly one"),
    ('[agents.w]\nrules = [{ path = "/a", allow = "" }]\n', 2, "agents.w.rules[0].allow", "empty"),
    ('[agents.w]\nrules = [{ path = "/a", deny = 7 }]\n', 2, "agents.w.rules[0].deny", "string of letters"),
    ('[agents.w]\nrules = ["/a"]\n', 2, "agents.w.rules[0]", "a rule is a table"),
    ('[agents.w]\nrules = { path = "/a", allow = "r" }\n', 2, "agents.w.rules", "must be a list"),
    ('[agents.w]\nuids = 5\n', 2, "agents.w.uids", "list of Unix user ids"),
    ('[agents.w]\nuids = [1, "x"]\n', 2, "agents.w.uids[1]", "uid must be a number"),
    ('[agents.w]\nuids = [-1]\n', 2, "agents.w.uids[0]", "uid must be a number"),
    ('[agents.a]\nuids = [7]\n\n[agents.b]\nuids = [8, 7]\n', 5, "agents.b.uids[1]", "already belongs to agent 'a'"),
    ('[agents.w]\nuid = [1]\n', 2, "agents.w.uid", "unknown key"),
    ('[agents."bad name"]\nuids = []\n', 1, 'agents."bad name"', "agent names"),
    ('agents = 3\n', 1, "agents", "must be tables"),
    ('[workspace]\ndefault_agent = 3\n', 2, "workspace.default_agent", "must be a string"),
    ('[workspace]\ndefault_agnet = "x"\n', 2, "workspace.default_agnet", "unknown key (known: default_agent)"),
    ('[workspace]\ndefault_agent = "a b"\n', 2, "workspace.default_agent", "not a valid agent name"),
    ('[mount]\ncache_seconds = "60"\n', 2, "mount.cache_seconds", "must be a number"),
    ('[mount]\ncache_seconds = -1\n', 2, "mount.cache_seconds", "must not be negative"),
    ('[mount]\nstream_writes = "auto"\n', 2, "mount.stream_writes", "must be behind, direct or cache"),
    ('[mount]\ndirect_writes = "sometimes"\n', 2, "mount.direct_writes", "must be auto, always or never"),
    ('[locks]\n# ttl\n\nwait_seconds = true\n', 4, "locks.wait_seconds", "must be a number"),
    ('[audit]\nreads = "yes"\n', 2, "audit.reads", "must be true or false"),
    ('\n\n[bogus]\nx = 1\n', 3, "bogus", "unknown section"),
    ('mount = 5\n', 1, "mount", "must be a table"),
]


@pytest.mark.parametrize("text, line, key, reason", BAD_CASES)
def test_validation_errors_name_file_line_key(text: str, line: int, key: str, reason: str) -> None:
    with pytest.raises(PolicyError) as ei:
        Policy.from_text(text, "ws/agentfs.toml")
    e = ei.value
    assert str(e).startswith(f"ws/agentfs.toml:{line}: {key}: "), str(e)
    assert reason in str(e)
    assert (e.line, e.key) == (line, key)
    assert "\n" not in str(e)


def test_toml_syntax_error_names_line() -> None:
    with pytest.raises(PolicyError, match=r"^agentfs.toml:3: not valid TOML"):
        Policy.from_text('[agents.w]\nuids = [1]\nrules = [ { path = "/a" allow = "r" } ]\n')


def test_multiline_strings_and_comments_keep_lines_right() -> None:
    text = textwrap.dedent('''\
        # comment with [brackets] and = signs
        [search]
        embedder = """
        minilm
        """
        [agents.x]   # trailing comment
        rules = [
          # a comment line inside the array
          { path = '/lit/**', allow = "r" },   # one
          { path = "/q\\"uote", allow = "r" },
          { path = "/bad", allow = "rq" },
        ]
    ''')
    with pytest.raises(PolicyError) as ei:
        Policy.from_text(text)
    assert ei.value.line == 11 and ei.value.key == "agents.x.rules[2].allow"


def test_array_of_tables_rules() -> None:
    text = textwrap.dedent("""\
        [agents.x]
        [[agents.x.rules]]
        path = "/a/**"
        allow = "r"

        [[agents.x.rules]]
        path = "/b/**"
        allow = "rz"
    """)
    with pytest.raises(PolicyError) as ei:
        Policy.from_text(text)
    assert (ei.value.line, ei.value.key) == (8, "agents.x.rules[1].allow")


def test_load_uses_path_in_errors(tmp_path) -> None:
    f = tmp_path / "agentfs.toml"
    f.write_text('[agents.w]\nrules = [{ path = "x", allow = "r" }]\n')
    with pytest.raises(PolicyError, match=rf"^{f}:2: agents.w.rules\[0\].path: bad glob"):
        Policy.load(f)
    with pytest.raises(PolicyError, match="cannot read"):
        Policy.load(tmp_path / "missing.toml")


def test_empty_file_is_deny_all() -> None:
    p = Policy.from_text("")
    assert p.default_agent == "nobody" and list(p.agents) == ["nobody"]
    assert p.rights("nobody", "/x") == Rights.NONE and not p.visible("nobody", "/x")


def test_default_agent_may_be_a_defined_agent() -> None:
    p = Policy.from_text('[workspace]\ndefault_agent = "guest"\n[agents.guest]\n'
                         'rules = [{ path = "/pub/**", allow = "r" }]\n')
    assert not p.agents["guest"].implicit
    assert p.rights("guest", "/pub/a") == Rights.R


# -- settings registry ------------------------------------------------------------

def test_settings_defaults_and_values() -> None:
    p = Policy.from_text("[locks]\nwait_seconds = 2\n")
    assert p.settings("locks") == {"default_ttl": 300.0, "wait_seconds": 2.0}
    assert isinstance(p.settings("locks")["wait_seconds"], float)
    assert p.settings("mount") == {"cache_seconds": 60.0, "stream_writes": "behind", "direct_writes": "",
                                   "direct_reads": "auto"}
    assert p.settings("audit")["reads"] is False
    assert p.settings("search")["embedder"] == "minilm"
    with pytest.raises(KeyError):
        p.settings("nope")


def test_registered_nested_and_agent_sections() -> None:
    register_section("testsec.inner", {"n": FieldSpec(int, 3, "a test knob")})
    register_section("testagent", {"quota": FieldSpec(int, 10, "per-agent knob")}, agent_section=True)
    p = Policy.from_text("[testsec.inner]\nn = 5\n[agents.a.testagent]\nquota = 2\n")
    assert p.settings("testsec.inner") == {"n": 5}
    assert p.agent_settings("a", "testagent") == {"quota": 2}
    assert p.agent_settings("nobody", "testagent") == {"quota": 10}
    with pytest.raises(PolicyError, match=r"^agentfs.toml:2: testsec.inner.m: unknown key \(known: n\)"):
        Policy.from_text("[testsec.inner]\nm = 5\n")
    with pytest.raises(PolicyError, match=r":2: testsec.inner.n: must be an integer"):
        Policy.from_text("[testsec.inner]\nn = true\n")
    with pytest.raises(PolicyError, match=r":2: agents.a.testagent.quota: must be an integer"):
        Policy.from_text('[agents.a.testagent]\nquota = "x"\n')


def test_starter_policy_validates() -> None:
    p = Policy.from_text(STARTER_POLICY_TEXT)
    assert p.default_agent == "nobody"
    assert list(p.agents) == ["nobody"] and not p.agents["nobody"].implicit
    assert p.agents["nobody"].rules == ()
    # the commented-out example agents are valid too
    examples: list[str] = []
    block = False
    for line in STARTER_POLICY_TEXT.splitlines():
        block = line.startswith("# [agents.") or (block and line.startswith("# "))
        if block:
            examples.append(line[2:])
    q = Policy.from_text(STARTER_POLICY_TEXT + "\n".join(examples))
    assert {"supervisor", "researcher", "writer"} <= set(q.agents)
    assert str(q.rights("writer", "/drafts/a")) == "rwcdl"


def test_starter_policy_explains_every_key() -> None:
    lines = STARTER_POLICY_TEXT.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("["):
            assert lines[i + 1].startswith("#") or lines[i - 1].startswith("#"), f"unexplained: {line}"
        elif line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"no comment above: {line}"


# -- memoisation and reload ------------------------------------------------------

def test_rights_are_memoised(design: Policy) -> None:
    design.rights("writer", "/drafts/a")
    before = design._rights.cache_info().hits
    design.rights("writer", "/drafts/a")
    assert design._rights.cache_info().hits == before + 1


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_holder_reload_good_and_bad(tmp_path, caplog) -> None:
    f = tmp_path / "agentfs.toml"
    f.write_text('[agents.a]\nrules = [{ path = "/x/**", allow = "r" }]\n')
    clock = FakeClock()
    h = PolicyHolder(f, clock=clock)
    seen: list[Policy] = []
    h.add_listener(seen.append)
    first = h.current
    assert first.rights("a", "/x/1") == Rights.R

    f.write_text('[agents.a]\nrules = [{ path = "/x/**", allow = "rw" }]\n')
    assert not h.maybe_reload()              # throttled: checked at most every 0.5 s
    clock.t += 0.6
    assert h.maybe_reload()
    assert str(h.current.rights("a", "/x/1")) == "rw" and h.generation == 1 and seen == [h.current]

    good = h.current
    with caplog.at_level(logging.ERROR, logger="agentfs.core.policy"):
        f.write_text('[agents.a]\nrules = [{ path = "/x/**", allow = "rwq" }]\n')
        clock.t += 0.6
        assert not h.maybe_reload()
    assert h.current is good and h.generation == 1
    assert h.last_error and f"{f}:2: agents.a.rules[0].allow" in h.last_error
    assert any(f"{f}:2:" in r.getMessage() for r in caplog.records)
    caplog.clear()
    clock.t += 0.6
    assert not h.maybe_reload()              # same broken file: not re-parsed, not re-logged
    assert not caplog.records

    f.write_text('[agents.a]\nrules = [{ path = "/y/**", allow = "r" }]\n')
    os.utime(f, ns=(1, 2))                   # even an mtime going back is a change
    assert h.reload()
    assert h.current.rights("a", "/y/1") == Rights.R and h.last_error is None and h.generation == 2


def test_holder_refuses_broken_file_at_start(tmp_path) -> None:
    f = tmp_path / "agentfs.toml"
    f.write_text("[agents.a]\nfoo = 1\n")
    with pytest.raises(PolicyError, match=":2: agents.a.foo: unknown key"):
        PolicyHolder(f)


# -- the examples in README.md (Policies) ------------------------------------------------

def _doc_blocks() -> list[str]:
    """The toml examples of the README's Policies section (up to the Locks section)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    text = readme.split("\n## Policies\n", 1)[1].split("\n## Locks\n", 1)[0]
    return [b.split("```", 1)[0] for b in text.split("```toml\n")[1:]]


def test_doc_examples_validate_and_mean_what_they_say() -> None:
    blocks = _doc_blocks()
    assert len(blocks) == 4
    policies = [Policy.from_text(b, "README.md") for b in blocks]
    handoff, data, secrets = policies[1:]
    assert handoff.rights("researcher", "/handoff/x.md") == Rights.C
    assert handoff.visible("researcher", "/handoff") and not handoff.visible("researcher", "/handoff/x.md", is_dir=False)
    assert str(handoff.rights("writer", "/handoff/x.md")) == "rd"
    assert data.rights("analyst", "/data/prices.csv") == Rights.R
    assert data.agent_for_uid(2102) == "analyst"
    assert not secrets.visible("coder", "/project/secrets")
    assert secrets.rights("coder", "/project/secrets") == Rights.NONE
    assert secrets.rights("coder", "/project/src/key.pem") == Rights.NONE
    assert secrets.rights("coder", "/project/key.pem") == Rights.NONE
    assert str(secrets.rights("coder", "/project/src/main.py")) == "rwcdl"
    assert str(secrets.rights("ops", "/project/secrets/token")) == "rwcdl"


# -- globs against a brute-force model ---------------------------------------------------

_NAMES = ["a", "b", "x.md"]
_UNIVERSE = ["/" + "/".join(p) for n in range(1, 6) for p in product(_NAMES, repeat=n)]
_SEGMENT = st.sampled_from(["a", "b", "x.md", "*", "**", "*.md", "?", "[ab]", "[!a]"])


@settings(max_examples=150, deadline=None)
@given(st.lists(_SEGMENT, min_size=1, max_size=3))
def test_glob_ancestors_match_brute_force(segments: list[str]) -> None:
    """`ancestor(P)` is exactly "something strictly below P matches" (within the universe)."""
    g = compile_glob("/" + "/".join(segments))
    matches = [q for q in _UNIVERSE if g.match(q)]
    for p in _UNIVERSE:
        if p.count("/") > 2:
            continue
        below = any(q.startswith(p + "/") for q in matches)
        assert bool(g.ancestor(p)) == below, (g.text, p)


@settings(max_examples=150, deadline=None)
@given(st.lists(_SEGMENT, min_size=1, max_size=3))
def test_glob_fast_paths_agree_with_regex(segments: list[str]) -> None:
    text = "/" + "/".join(segments)
    g = compile_glob(text)
    rx = re.compile(_pattern(tuple(segments), text), re.DOTALL)
    for p in _UNIVERSE:
        assert g.match(p) == (rx.fullmatch(p) is not None), (text, p)


def test_link_leak(design: Policy) -> None:
    # out of the writer's secret folder into its readable drafts: the writer would gain rights
    assert design.link_leak("/drafts/secret/plan.md", "/drafts/plan.md") == "writer"
    # from drafts into research: the researcher gains rwcdl on the writer's file
    assert design.link_leak("/drafts/a.md", "/research/a.md") == "researcher"
    # within one area, everyone keeps exactly the rights they had
    assert design.link_leak("/drafts/a.md", "/drafts/b.md") is None
    # into a place where some lose rights but nobody gains: allowed
    assert design.link_leak("/research/a.md", "/drafts/secret/a.md") is None


def test_cacheable_asks_only_the_agents_that_can_see_the_parent() -> None:
    p = Policy.from_text(
        '[workspace]\ndefault_agent = "nobody"\n'
        '[agents.a]\nrules = [{ path = "/a/**", allow = "rwcdl" }, { path = "/shared/**", allow = "r" }]\n'
        '[agents.b]\nrules = [{ path = "/b/**", allow = "rwcdl" }, { path = "/shared/**", allow = "r" },\n'
        '  { path = "/shared/only-a/**", deny = "r" }]\n')
    assert not p.same_view("/a/x") and p.cacheable("/a/x")      # only a sees /a: its area caches
    assert not p.cacheable("/a")                                 # /a itself differs among all who see "/"
    assert p.cacheable("/shared/doc")                            # a and b both see it
    assert not p.cacheable("/shared/only-a")                     # both see /shared, only a sees this
    assert p.cacheable("/shared/only-a/deeper")                  # only a sees its parent
