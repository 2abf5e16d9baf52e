"""The benchmark script runs end to end and reports in its documented shapes.

No timing is asserted: figures depend on the machine. This only guards the
script against rotting (a renamed option, a broken mount helper, a JSON key
a release comparison relies on).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "scripts" / "bench.py"
GEN_POLICY = REPO / "scripts" / "gen_policy.py"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the benchmark mounts, which needs root")


def test_quick_run_prints_a_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    base = tmp_path / "base"
    r = subprocess.run([sys.executable, str(BENCH), "--quick", "--repeat", "1", "--only", "small_files,find",
                        "--dir", str(base), "--json", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["workload", "native", "s", "bare"]
    table = lines[2:lines.index(next(ln for ln in lines if ln.startswith("(")))]
    rows = {ln.split()[0]: ln.split() for ln in table}
    assert set(rows) == {"small_files", "find"}
    # small_files on ext4 without a journal is slowed for every target: the run says so
    notes = [ln for ln in lines if "without a journal" in ln]
    assert len(notes) == (1 if "no journal" in json.loads(out.read_text())["filesystem"] else 0)
    for row in rows.values():
        assert all(float(c) > 0 for c in row[1:4])
        assert row[4].endswith("x") and row[6].endswith("x")

    doc = json.loads(out.read_text())
    assert {"schema", "date", "git", "machine", "filesystem", "sizes", "repeat", "targets",
            "workloads"} <= set(doc)
    assert doc["sizes"]["quick"] is True and doc["repeat"] == 1
    assert [t["name"] for t in doc["targets"]] == ["native", "bare", "governed"]
    assert set(doc["workloads"]) == {"small_files", "find"}
    sf = doc["workloads"]["small_files"]
    assert set(sf["seconds"]) == {"native", "bare", "governed"}
    assert set(sf["ratios"]) == {"bare/native", "governed/native", "governed/bare"}
    assert sf["details"]["governed"]["files"] == 1000
    assert len(sf["runs"]["native"]) == 1
    shown = subprocess.run([sys.executable, str(BENCH), "--show", str(out), "--stat", "best", "--compare", str(out)],
                           capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert "(best of the repeats" in shown.stdout
    assert "small_files  governed/native" in shown.stdout and "+0%" in shown.stdout
    # everything was unmounted and removed afterwards
    assert str(base) not in Path("/proc/self/mounts").read_text()
    assert not base.exists()


def test_code_runs_a_target_from_another_source_tree_and_logs_the_loop_cpu(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(BENCH), "--quick", "--repeat", "1", "--only", "find",
                        "--targets", "governed", "--variant", "tree=", "--code", f"tree={REPO}", "-v",
                        "--dir", str(tmp_path / "base"), "--json", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert {t["name"]: t["code"] for t in doc["targets"]} == {"governed": None, "tree": str(REPO)}
    assert "loop_user_s" in doc["workloads"]["find"]["details"]["tree"]
    assert "loop user" in r.stderr
    bad = subprocess.run([sys.executable, str(BENCH), "--code", f"nosuch={REPO}", "--dir", str(tmp_path / "b")],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "--code 'nosuch=" in bad.stderr and "Traceback" not in bad.stderr


def test_unknown_workload_is_one_line(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(BENCH), "--only", "nosuch", "--dir", str(tmp_path / "b")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "unknown workload(s) nosuch" in r.stderr
    assert "Traceback" not in r.stderr


def test_gen_policy_writes_a_valid_policy_granting_the_bench_uid_everything(tmp_path: Path) -> None:
    from agentfs.core.policy import Policy

    out = tmp_path / "p.toml"
    r = subprocess.run([sys.executable, str(GEN_POLICY), "--agents", "50", "--rules", "20", "-o", str(out)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    pol = Policy.from_text(out.read_text())
    assert {f"agent{i}" for i in range(50)} | {"bench"} <= set(pol.agents)
    assert pol.agent_for_uid(os.getuid()) == "bench"
    assert str(pol.rights("bench", "/bench/src/json/__init__.py")) == "rwcdl"
    assert not pol.rights("agent0", "/bench/src/json/__init__.py")
