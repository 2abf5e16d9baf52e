"""`.search/` and `.agentfs/` on a real mount, with a running sidecar and real Unix users."""

from __future__ import annotations

import errno
import json
import mmap
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from conftest import AGENTFS, make_workspace, mounted, run, wait_for

POLICY = """\
[workspace]
default_agent = "nobody"

[agents.nobody]
rules = []

[agents.researcher]
uids = [2901]
rules = [
  { path = "/research/**", allow = "rwcdl" },
  { path = "/private/**", allow = "rwcdl" },
]

[agents.writer]
uids = [2902]
rules = [
  { path = "/research/**", allow = "r" },
  { path = "/drafts/**", allow = "rwcdl" },
]

[agents.supervisor]
uids = [0]
rules = [{ path = "/**", allow = "rwcdl" }]

[search]
embedder = "none"
"""

QUERY = "exponential backoff retries"


@pytest.fixture
def searchable(workdir: Path, users) -> Iterator[tuple]:
    ws = make_workspace(workdir, POLICY)
    for d in ("research", "private", "drafts"):
        (ws.data_path / d).mkdir()
        os.chmod(ws.data_path / d, 0o777)
    (ws.data_path / "research" / "uploads.md").write_text(
        "# Uploads\n\nFailed uploads are retried with exponential backoff.\n")
    (ws.data_path / "private" / "plan.md").write_text(
        "# Private plan\n\nexponential backoff retries exponential backoff retries: secret plan.\n")
    (ws.data_path / "drafts" / "intro.md").write_text("# Intro\n\nNothing about that topic here.\n")
    sidecar = subprocess.Popen([AGENTFS, "index", "-w", str(ws.root)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        def ready() -> bool:
            r = run([AGENTFS, "search", "-w", str(ws.root), QUERY, "--json"], check=False)
            return r.returncode == 0 and "uploads.md" in r.stdout and "plan.md" in r.stdout
        wait_for(ready, timeout=60, interval=0.2, what="the sidecar to index the workspace")
        with mounted(ws, workdir / "mnt") as m:
            yield ws, m
    finally:
        sidecar.terminate()
        sidecar.wait(timeout=20)


def test_search_dir_lists_ranked_relative_symlinks_and_results(searchable, users):
    ws, m = searchable
    qdir = m.path / ".search" / QUERY
    names = sorted(os.listdir(qdir))
    assert "results.md" in names
    hits = [n for n in names if n != "results.md"]
    assert hits and hits[0].startswith("01-"), names
    assert any(n.endswith("uploads.md") for n in hits)
    link = next(n for n in hits if n.endswith("uploads.md"))
    target = os.readlink(qdir / link)
    assert target == "../../research/uploads.md"
    assert (qdir / link).read_text().startswith("# Uploads")
    results = (qdir / "results.md").read_text()
    assert "/research/uploads.md" in results and "score" in results


def test_results_md_shows_its_real_size_so_size_trusting_readers_get_it_all(searchable):
    ws, m = searchable
    f = m.path / ".search" / QUERY / "results.md"
    data = f.read_bytes()
    assert len(data) > 0 and os.stat(f).st_size == len(data)
    fd = os.open(f, os.O_RDONLY)
    try:
        with mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ) as mm:
            assert mm[:] == data
    finally:
        os.close(fd)
    whoami = m.path / ".agentfs" / "whoami"
    assert os.stat(whoami).st_size == 0 and whoami.read_text().startswith("agent:")


def test_search_never_shows_a_file_the_caller_may_not_read(searchable, users):
    ws, m = searchable
    qdir = str(m.path / ".search" / QUERY)
    as_writer = run(["sh", "-c", f'ls "{qdir}"; cat "{qdir}/results.md"'], user="agentfs-t2")
    assert "uploads.md" in as_writer.stdout
    assert "plan.md" not in as_writer.stdout and "secret" not in as_writer.stdout
    as_researcher = run(["ls", qdir], user="agentfs-t1")
    assert "plan.md" in as_researcher.stdout
    cli_writer = run([AGENTFS, "search", "-w", str(ws.root), QUERY, "--json"], user="agentfs-t2", check=False)
    if cli_writer.returncode == 0:
        assert "plan.md" not in cli_writer.stdout


def test_search_dir_is_read_only_and_ignores_file_manager_probes(searchable):
    ws, m = searchable
    sdir = m.path / ".search"
    for probe in (".hidden", ".directory", "autorun.inf", ".xdg-volume-info"):
        assert not (sdir / probe).exists()
    with pytest.raises(OSError) as e:
        (sdir / QUERY / "new.txt").write_text("x")
    assert e.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    with pytest.raises(OSError):
        os.mkdir(sdir / "x" / "y")
    with pytest.raises(OSError):
        os.unlink(sdir / QUERY / "results.md")
    assert m.answers()


def test_whoami_on_the_mount_names_each_users_agent(searchable, users):
    ws, m = searchable
    for user, agent in (("agentfs-t1", "researcher"), ("agentfs-t2", "writer")):
        r = run([AGENTFS, "whoami", "--json", str(m.path)], user=user)
        info = json.loads(r.stdout)
        assert info["agent"] == agent and info["uid"] == users[user] and info["via"] == "uid"
    nobody = run(["cat", str(m.path / ".agentfs" / "whoami")], user="nobody")
    assert "agent: nobody" in nobody.stdout
