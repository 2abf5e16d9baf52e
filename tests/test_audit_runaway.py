"""Runaway detection: alerts once per window, and "deny" refuses an agent while it cools off."""

from __future__ import annotations

from agentfs.core.audit import iter_records
from agentfs.core.audit_settings import AuditSettings, RunawayRule, parse
from agentfs.core.runaway import RunawayDetector
from test_audit_support import running


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _detector(rule: RunawayRule, per_agent: dict | None = None):
    alerts = []
    s = AuditSettings(runaway=rule, runaway_agents=per_agent or {})
    clock = Clock()
    return RunawayDetector(lambda: s, alerts.append, clock), alerts, clock


def test_writes_to_one_file_alert_once_per_window_and_only_for_that_file():
    d, alerts, clock = _detector(RunawayRule(writes_per_file_per_minute=5))
    for _ in range(5):
        assert d.check("loopy", "open-w", "/a") is False
    assert alerts == []
    assert d.check("loopy", "open-w", "/a") is False  # alert only: never denies
    assert len(alerts) == 1 and alerts[0].rule == "writes_per_file_per_minute" and alerts[0].count == 6
    for _ in range(20):
        d.check("loopy", "open-w", "/a")
        d.check("loopy", "open-w", "/b" + str(_))  # other files each stay under the threshold
    assert len(alerts) == 1
    clock.t += 61
    for _ in range(6):
        d.check("loopy", "open-w", "/a")
    assert len(alerts) == 2


def test_a_second_change_counts_against_the_first_unless_the_window_has_passed():
    """A file changed once is remembered by one timestamp; its second change must still count."""
    d, alerts, clock = _detector(RunawayRule(writes_per_file_per_minute=1))
    d.check("a", "write", "/f")
    clock.t += 61
    d.check("a", "write", "/f")  # the first one is out of the window
    assert alerts == []
    clock.t += 59
    d.check("a", "write", "/f")
    assert len(alerts) == 1 and alerts[0].count == 2


def test_quiet_paths_are_swept_whatever_their_count():
    d, alerts, clock = _detector(RunawayRule(writes_per_file_per_minute=5))
    for i in range(4096):
        d.check("a", "write", f"/once{i}")
    d.check("a", "write", "/busy")
    d.check("a", "write", "/busy")
    clock.t += 61
    for i in range(4096):
        d.check("a", "write", "/again")
    assert d.tracked() == {("a", "writes_per_file_per_minute", "/again")} and alerts[-1].path == "/again"


def test_a_busy_path_keeps_only_the_timestamps_that_can_cross_its_threshold():
    """Memory per path is bounded by the threshold, and the window still slides exactly."""
    d, alerts, clock = _detector(RunawayRule(writes_per_file_per_minute=3))
    for _ in range(50):
        d.check("a", "write", "/hot")
        clock.t += 0.5
    assert len(alerts) == 1 and alerts[0].count == 4
    assert len(d._hits["a"]["writes_per_file_per_minute"]["/hot"]) == 4
    clock.t += 61  # the window has passed: a new crossing alerts again, at the 4th change
    for i in range(4):
        d.check("a", "write", "/hot")
        clock.t += 10
        assert len(alerts) == (1 if i < 3 else 2)
    # 4 changes spread over more than the window never cross it
    clock.t += 61
    for _ in range(8):
        d.check("a", "write", "/slow")
        clock.t += 20.5
    assert len(alerts) == 2


def test_the_window_slides():
    d, alerts, clock = _detector(RunawayRule(writes_per_file_per_minute=3))
    for _ in range(3):
        d.check("a", "write", "/f")
        clock.t += 30  # never more than 3 in any 60 s
    d.check("a", "write", "/f")
    assert alerts == []


def test_new_files_per_minute_counts_creations_across_paths():
    d, alerts, _ = _detector(RunawayRule(writes_per_file_per_minute=0, new_files_per_minute=10))
    for i in range(10):
        d.check("spammer", "create", f"/out/{i}")
        d.check("spammer", "unlink", f"/out/{i}")  # not a new file
    assert alerts == []
    d.check("spammer", "mkdir", "/out/dir")
    assert [a.rule for a in alerts] == ["new_files_per_minute"] and alerts[0].path == "/out/dir"


def test_deny_refuses_every_change_of_the_agent_until_the_cooloff_ends():
    d, alerts, clock = _detector(RunawayRule(writes_per_file_per_minute=2, action="deny", cooloff_seconds=30))
    assert [d.check("loopy", "open-w", "/a") for _ in range(3)] == [False, False, True]
    assert alerts[0].action == "deny" and alerts[0].cooloff_until_ns is not None
    assert d.check("loopy", "create", "/elsewhere") is True
    assert d.check("other", "open-w", "/a") is False
    clock.t += 31
    assert d.check("loopy", "create", "/elsewhere") is False


def test_a_removal_counts_as_a_change_but_not_against_its_path():
    """rm -rf must not fill the per-path counts; deleting and recreating a file still shows."""
    d, alerts, clock = _detector(RunawayRule(writes_per_file_per_minute=2, ops_per_minute=5))
    for _ in range(3):
        assert d.check("a", "unlink", "/f", removal=True) is False
    assert alerts == [] and not any(k[2] == "/f" for k in d.tracked())
    for _ in range(3):
        d.check("b", "create", "/g")
        d.check("b", "unlink", "/g", removal=True)
    assert [(a.agent, a.rule, a.count) for a in alerts] == [("b", "writes_per_file_per_minute", 3),
                                                            ("b", "ops_per_minute", 6)]
    for _ in range(3):
        d.check("a", "rmdir", "/d", removal=True)
    assert [(a.agent, a.rule, a.count) for a in alerts[2:]] == [("a", "ops_per_minute", 6)]


def test_a_cooling_off_agent_may_not_remove_either():
    d, alerts, clock = _detector(RunawayRule(writes_per_file_per_minute=1, action="deny", cooloff_seconds=30))
    assert [d.check("a", "create", "/g") for _ in range(2)] == [False, True]
    assert d.check("a", "unlink", "/g", removal=True) is True
    clock.t += 31
    assert d.check("a", "unlink", "/g", removal=True) is False


def test_per_agent_overrides():
    s = parse({"audit": {"runaway": {"writes_per_file_per_minute": 100}},
               "agents": {"intern": {"runaway": {"writes_per_file_per_minute": 2, "action": "deny"}}}})
    assert s.rule_for("intern") == RunawayRule(writes_per_file_per_minute=2, action="deny")
    assert s.rule_for("senior").writes_per_file_per_minute == 100
    assert parse({}).rule_for("x") == RunawayRule()
    assert parse({"audit.runaway": {"action": "deny"}}).runaway.action == "deny"


async def test_an_alert_becomes_an_audit_record(ws):
    settings = {"audit": {"runaway": {"writes_per_file_per_minute": 3, "action": "deny",
                                      "cooloff_seconds": 600}}}
    async with running(ws, settings) as log:
        denied = [log.runaway("loopy", "open-w", "/spin.txt", uid=1001, pid=77) for _ in range(5)]
    assert denied == [False, False, False, True, True]
    alerts = list(iter_records(ws, op="runaway"))
    assert len(alerts) == 1
    a = alerts[0]
    assert (a["agent"], a["uid"], a["pid"], a["path"]) == ("loopy", 1001, 77, "/spin.txt")
    assert a["details"]["rule"] == "writes_per_file_per_minute" and a["details"]["action"] == "deny"
    assert a["details"]["count"] == 4 and a["details"]["threshold"] == 3


def test_settings_from_a_policy_file(workdir):
    from agentfs.core.audit_settings import policy_settings
    from agentfs.core.policy import PolicyHolder

    p = workdir / "agentfs.toml"
    p.write_text("""\
[workspace]
default_agent = "anyone"

[agents.anyone]
rules = [{ path = "/**", allow = "rwcdl" }]

[agents.intern]
rules = [{ path = "/**", allow = "rw" }]

[agents.intern.runaway]
action = "deny"

[audit]
retention_records = 100
durability = "power"

[audit.runaway]
writes_per_file_per_minute = 7
""")
    fn = policy_settings(PolicyHolder(p))
    assert fn() is fn()
    s = parse(fn())
    assert (s.retention_records, s.durability, s.reads) == (100, "power", False)
    assert s.rule_for("anyone").writes_per_file_per_minute == 7
    assert s.rule_for("intern") == RunawayRule(writes_per_file_per_minute=7, action="deny")


def test_a_misspelt_runaway_key_is_a_policy_error(workdir):
    import pytest

    from agentfs.core.policy import Policy, PolicyError

    p = workdir / "agentfs.toml"
    p.write_text('[workspace]\ndefault_agent = "nobody"\n\n[audit.runaway]\nactoin = "deny"\n')
    with pytest.raises(PolicyError, match="actoin"):
        Policy.load(p)
    p.write_text('[workspace]\ndefault_agent = "nobody"\n\n[audit]\ndurability = "paranoid"\n')
    with pytest.raises(PolicyError, match="durability"):
        Policy.load(p)


def test_parse_accepts_just_the_audit_section():
    s = parse({"reads": True, "retention_records": 9, "durability": "power"})
    assert (s.reads, s.retention_records, s.durability) == (True, 9, "power")
    assert s.runaway == RunawayRule()


def test_sweeping_costs_a_bounded_amount_per_change_however_many_paths_are_remembered():
    """Touching many files once (rm -rf): sweeps visit O(1) keys per change, not keys/period."""
    d, _alerts, _clock = _detector(RunawayRule(writes_per_file_per_minute=5))
    visited: list[int] = []
    real = d._sweep
    d._sweep = lambda now, window: (visited.append(len(d.tracked())), real(now, window))
    n = 40_000
    for i in range(n):
        d.check("a", "write", f"/f{i}")
    assert visited and sum(visited) <= 2 * n, (len(visited), sum(visited))
