"""Red team: a careless and a malicious agent against another agent's private area.

alice (uid 2901) keeps `/alice` private and collects hand-offs in `/inbox`,
a drop box where others may only create. mallory (uid 2902) is malicious:
she guesses names, probes stat, xattrs, locks and `.search/`, plants
symlinks and hard links, renames and races. carl (uid 2903) is careless:
he runs `find`, `grep -r`, `du`, `cp -r` and `rm -rf` over the whole mount.
Every file is mode 0666 and every folder 0777: only the policy stands
between them and alice's files. Nothing may leak: no content, no name in
any listing, no size, and alice's files are intact afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import pytest

from agent_worker import LIST, READ, Worker
from conftest import AGENTFS, make_workspace, mounted, run
from test_permissions_mount import build

POLICY = """\
[workspace]
default_agent = "nobody"

[agents.alice]
uids = [2901]
rules = [
  { path = "/alice/**", allow = "rwcdl" },
  { path = "/inbox/**", allow = "rwcdl" },
  { path = "/shared/**", allow = "rwcdl" },
]

[agents.mallory]
uids = [2902]
rules = [
  { path = "/mallory/**", allow = "rwcdl" },
  { path = "/shared/**", allow = "rwcdl" },
  { path = "/inbox/**", allow = "c" },
]

[agents.carl]
uids = [2903]
rules = [
  { path = "/carl/**", allow = "rwcdl" },
  { path = "/shared/**", allow = "rwcd" },
]

[search]
embedder = "none"
"""

MARK = "TOPSECRET-7f3a"
PRIVATE = {
    "alice/secret.txt": f"{MARK} launch codes\n" * 50,
    "alice/plans/q3.md": f"# Q3\n{MARK} acquisition target\n",
    "alice/.hidden-key": f"{MARK}-key\n",
    "inbox/from-bob.md": f"{MARK} handed over by bob\n",
}
TREE = {**PRIVATE, "shared/readme.md": "everyone\n", "mallory/": None, "carl/": None}
NAMES = ("alice", "secret.txt", "plans", "q3.md", ".hidden-key", "from-bob.md", MARK)


def digest(data: Path) -> dict[str, str]:
    return {rel: hashlib.sha256((data / rel).read_bytes()).hexdigest() for rel in PRIVATE}


@pytest.fixture(scope="module")
def arena(users) -> Iterator[tuple]:
    base = Path(tempfile.mkdtemp(prefix="agentfs-red-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        ws = make_workspace(base, POLICY)
        build(ws.data_path, TREE, 2901)
        before = digest(ws.data_path)
        with mounted(ws, base / "mnt") as m:
            with Worker(user="agentfs-t1") as alice, Worker(user="agentfs-t2") as mallory:
                yield ws, m.path, alice, mallory
            # whatever the tests did, alice's files are what they were
            assert digest(ws.data_path) == before
            assert m.answers()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def leaks(text: str) -> list[str]:
    return [n for n in NAMES if n in text]


def test_alice_herself_sees_everything(arena):
    ws, mnt, alice, _ = arena
    assert MARK in alice.ok(READ, p=f"{mnt}/alice/secret.txt")
    assert alice.ok(LIST, p=f"{mnt}/inbox") == ["from-bob.md"]


def test_careless_agent_sweeping_the_whole_mount(arena):
    ws, mnt, _, _ = arena
    sweep = (f"find {mnt} 2>&1; ls -laR {mnt} 2>&1; du -a {mnt} 2>&1; grep -r {MARK} {mnt} 2>&1; "
             f"tar cf - -C {mnt} . 2>/dev/null | strings; getfattr -R -d {mnt} 2>&1")
    out = run(["sh", "-c", sweep], user="agentfs-t3", check=False).stdout
    assert "shared" in out and "readme.md" in out  # the sweep did see what carl may see
    assert leaks(out) == [], out
    copy = Path(tempfile.mkdtemp(prefix="agentfs-red-copy-", dir="/tmp"))
    os.chmod(copy, 0o777)
    try:
        run(["cp", "-r", f"{mnt}/.", str(copy)], user="agentfs-t3", check=False)
        copied = [str(p.relative_to(copy)) for p in copy.rglob("*")]
        assert "shared/readme.md" in copied and leaks(" ".join(copied)) == []
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def test_guessed_names_answer_alike_whether_they_exist_or_not(arena):
    ws, mnt, _, m = arena
    pairs = [("alice", "nobody-here"), ("alice/secret.txt", "nobody-here/secret.txt"),
             ("alice/plans", "alice/nothing"), ("alice/.hidden-key", "alice/.nothing"),
             ("inbox/from-bob.md", "inbox/not-there.md")]
    probes = {
        "stat": "os.stat(p).st_size",
        "lstat": "os.lstat(p).st_size",
        "open": READ,
        "list": LIST,
        "access": "os.access(p, os.F_OK) or os.stat(p)",
        "getxattr": "os.getxattr(p, 'user.x')",
        "listxattr": "os.listxattr(p)",
        "lock xattr": "os.getxattr(p, 'user.agentfs.lock')",
        "setxattr": "os.setxattr(p, 'user.x', b'1')",
        "take lock": "os.setxattr(p, 'user.agentfs.lock', b'exclusive')",
        "chmod": "os.chmod(p, 0o777)",
        "utime": "os.utime(p, (0, 0))",
        "truncate": "os.truncate(p, 0)",
        "unlink": "os.unlink(p)",
        "rmdir": "os.rmdir(p)",
        "rename away": f"os.rename(p, '{mnt}/mallory/got')",
        "link": f"os.link(p, '{mnt}/mallory/got')",
        "mkdir inside": "os.mkdir(p + '/x')",
        "create inside": "open(p + '/x', 'w')",
    }
    for real, fake in pairs:
        for what, code in probes.items():
            got_real = m.call(code, p=f"{mnt}/{real}")
            got_fake = m.call(code, p=f"{mnt}/{fake}")
            assert not got_real["ok"], (what, real, got_real)
            assert got_real["errno"] == got_fake["errno"], (what, real, got_real, got_fake)
    for top in ("alice", "nobody-here"):  # mallory may not create at the top: the same refusal
        assert m.err("os.mkdir(p)", p=f"{mnt}/{top}") == "EACCES"
        assert m.err("os.rename(a, b)", a=f"{mnt}/mallory", b=f"{mnt}/{top}") == "EACCES"
    assert "alice" not in m.ok(LIST, p=str(mnt))
    assert m.ok(LIST, p=f"{mnt}/inbox") == []
    # the operator sees that mallory knew the names: her guesses of hidden paths are audited denials
    audit = run([AGENTFS, "audit", "-w", str(ws.root), "--agent", "mallory", "--json"]).stdout
    denied = {json.loads(line)["path"] for line in audit.splitlines() if '"ENOENT"' in line}
    assert {"/alice", "/inbox/from-bob.md"} <= denied, denied
    assert "/nobody-here" not in denied


def test_the_drop_box_takes_new_files_but_never_opens_an_existing_one(arena):
    ws, mnt, alice, m = arena
    target = f"{mnt}/inbox/from-bob.md"
    for flags in ("os.O_RDWR | os.O_CREAT", "os.O_WRONLY | os.O_CREAT | os.O_TRUNC", "os.O_RDONLY | os.O_CREAT",
                  "os.O_WRONLY | os.O_CREAT | os.O_APPEND"):
        code = f"fd = os.open(p, {flags}, 0o666)\nresult = os.pread(fd, 4096, 0).decode('latin-1') " \
               f"if {flags} & os.O_ACCMODE != os.O_WRONLY else os.write(fd, b'EVIL')\nos.close(fd)"
        r = m.call(code, block=True, p=target)
        assert not r["ok"] and r["errno"] in ("EACCES", "EEXIST", "ENOENT"), (flags, r)
        assert (ws.data_path / "inbox/from-bob.md").read_text() == PRIVATE["inbox/from-bob.md"], flags
    assert m.err("os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL))", p=target) in ("EEXIST", "EACCES")
    assert m.err("os.rename(a, b)", a=_own(m, mnt, "evil.md"), b=target) in ("ENOENT", "EACCES")
    assert (ws.data_path / "inbox/from-bob.md").read_text() == PRIVATE["inbox/from-bob.md"]
    assert m.err("os.link(a, b)", a=_own(m, mnt, "evil2.md"), b=f"{mnt}/inbox/new-link.md") == "EACCES"
    # a new name is fine: mallory drops a file (open() fstats it while she holds it) and cannot see it after
    m.ok("open(p, 'w').write('hello alice')", p=f"{mnt}/inbox/from-mallory.md")
    assert m.err("os.stat(p)", p=f"{mnt}/inbox/from-mallory.md") == "ENOENT"
    assert m.err(READ, p=f"{mnt}/inbox/from-mallory.md") == "ENOENT"
    assert m.ok(LIST, p=f"{mnt}/inbox") == []
    assert alice.ok(READ, p=f"{mnt}/inbox/from-mallory.md") == "hello alice"
    assert MARK in alice.ok(READ, p=target)
    alice.ok("os.unlink(p)", p=f"{mnt}/inbox/from-mallory.md")


def _own(m: Worker, mnt: Path, name: str) -> str:
    p = f"{mnt}/mallory/{name}"
    m.ok("open(p, 'w').write('x')", p=p)
    return p


def test_symlink_hardlink_and_rename_tricks(arena):
    ws, mnt, alice, m = arena
    for name, target in (("rel", "../alice/secret.txt"), ("abs", f"{mnt}/alice/secret.txt"),
                         ("dir", "../alice"), ("backing", str(ws.data_path / "alice/secret.txt")),
                         ("dotdot", "../shared/../alice/plans/q3.md")):
        m.ok("os.symlink(t, p)", t=target, p=f"{mnt}/mallory/{name}")
        r = m.call(READ, p=f"{mnt}/mallory/{name}")
        assert not r["ok"] and r["errno"] in ("ENOENT", "EACCES", "EISDIR"), (name, r)
        assert leaks(str(m.call(LIST, p=f"{mnt}/mallory/{name}"))) in ([], ["alice"]), name
    # a link alice made in the shared area is resolved as mallory
    alice.ok("os.symlink('../alice/secret.txt', p)", p=f"{mnt}/shared/alice-link")
    assert m.err(READ, p=f"{mnt}/shared/alice-link") == "ENOENT"
    alice.ok("os.unlink(p)", p=f"{mnt}/shared/alice-link")
    assert m.err("os.link(a, b)", a=f"{mnt}/alice/secret.txt", b=f"{mnt}/mallory/hl") == "ENOENT"
    assert m.err("os.link(a, b)", a=f"{mnt}/mallory/rel/../secret.txt", b=f"{mnt}/mallory/hl") == "ENOENT"
    assert m.err("os.rename(a, b)", a=f"{mnt}/alice/secret.txt", b=f"{mnt}/shared/s") == "ENOENT"
    assert m.err("os.rename(a, b)", a=f"{mnt}/alice/plans", b=f"{mnt}/mallory/plans") == "ENOENT"
    # the drop box as a whole cannot be carried off with alice's files in it
    assert m.err("os.rename(a, b)", a=f"{mnt}/inbox", b=f"{mnt}/mallory/inbox") == "EACCES"
    # mallory moves her own folder under the hidden one's name: refused, nothing replaced
    m.ok("os.mkdir(p)", p=f"{mnt}/mallory/plans")
    assert m.err("os.rename(a, b)", a=f"{mnt}/mallory/plans", b=f"{mnt}/alice/plans") == "ENOENT"
    assert (ws.data_path / "alice/plans/q3.md").exists()


def test_racing_renames_never_open_a_door(arena):
    """mallory swaps her folders around while probing through them; alice keeps her caches warm."""
    ws, mnt, alice, m = arena
    m.ok("os.makedirs(a, exist_ok=True)\nos.makedirs(b, exist_ok=True)", block=True, a=f"{mnt}/mallory/x/y",
         b=f"{mnt}/shared/z")
    race = """
import threading, time
stop = time.monotonic() + 1.0
hits, tries = [], 0
def swap():
    while time.monotonic() < stop:
        for a, b in ((m + '/x', s + '/x'), (s + '/x', m + '/x')):
            try:
                os.rename(a, b)
            except OSError:
                pass
t = threading.Thread(target=swap)
t.start()
probes = [m + '/x/y/../../../alice/secret.txt', s + '/x/y/../../../alice/secret.txt',
          m + '/x/../../alice', s + '/z/../../alice/plans/q3.md', root + '/alice/secret.txt']
while time.monotonic() < stop:
    for p in probes:
        tries += 1
        try:
            with open(p, 'rb') as f:
                hits.append(f.read(64))
        except OSError:
            pass
        try:
            hits.append(os.listdir(p))
        except OSError:
            pass
t.join()
result = [tries, [repr(h) for h in hits]]
"""
    warm = threading.Event()

    def alice_warms() -> None:
        while not warm.is_set():
            alice.call("os.stat(p).st_size", p=f"{mnt}/alice/secret.txt")
    th = threading.Thread(target=alice_warms)
    th.start()
    try:
        tries, hits = m.ok(race, block=True, m=f"{mnt}/mallory", s=f"{mnt}/shared", root=str(mnt))
    finally:
        warm.set()
        th.join()
    assert tries > 20 and hits == []


def test_stat_never_reveals_a_private_size(arena):
    ws, mnt, alice, m = arena
    size = len(PRIVATE["alice/secret.txt"])
    assert alice.ok("os.stat(p).st_size", p=f"{mnt}/alice/secret.txt") == size
    for p in (f"{mnt}/alice/secret.txt", f"{mnt}/mallory/../alice/secret.txt"):
        assert m.err("os.stat(p).st_size", p=p) == "ENOENT"
    out = run(["sh", "-c", f"ls -la {mnt} {mnt}/inbox; du -sb {mnt}; stat {mnt}/* 2>&1"],
              user="agentfs-t2", check=False).stdout
    # as a whole number only: a timestamp's nanoseconds may hold the digits
    assert not re.search(rf"(?<![\d.]){size}(?![\d.])", out), out
    assert leaks(out) == []
    scan = "[(e.name, e.stat(follow_symlinks=False).st_size) for e in os.scandir(p)]"
    assert leaks(str(m.ok(scan, p=str(mnt)))) == []


def test_locks_and_search_show_nothing_private(arena):
    ws, mnt, alice, m = arena
    alice.ok("os.setxattr(p, 'user.agentfs.lock', b'exclusive')", p=f"{mnt}/alice/secret.txt")
    try:
        assert "/alice/secret.txt" in alice.ok(READ, p=f"{mnt}/.agentfs/locks")
        assert leaks(m.ok(READ, p=f"{mnt}/.agentfs/locks")) == []
        cli = run([AGENTFS, "locks", "-w", str(ws.root)], user="agentfs-t2", check=False)
        assert leaks(cli.stdout + cli.stderr) == []
    finally:
        alice.ok("os.removexattr(p, 'user.agentfs.lock')", p=f"{mnt}/alice/secret.txt")
    # no sidecar runs here: .search/ answers, and still shows nothing private
    for q in (MARK, "launch codes", "acquisition target"):
        listing = m.call(LIST, p=f"{mnt}/.search/{q}")
        results = m.call(READ, p=f"{mnt}/.search/{q}/results.md")
        assert leaks(str(listing).replace(MARK, "")) == [] and "alice" not in str(results), (listing, results)
        assert "secret.txt" not in str(results) and "launch codes" not in str(results).replace(q, "")
    for cmd in (["audit", "--json"], ["search", MARK, "--json"], ["status", "--json"]):
        r = run([AGENTFS, "-w", str(ws.root), *cmd], user="agentfs-t2", check=False)
        assert "launch codes" not in r.stdout and "secret.txt" not in r.stdout, (cmd, r.stdout)


def test_careless_rm_rf_of_everything_removes_only_what_it_may(arena):
    ws, mnt, alice, m = arena
    run(["sh", "-c", f"rm -rf {mnt}/* {mnt}/.[!.]* {mnt}/inbox/* {mnt}/alice"], user="agentfs-t3", check=False)
    assert not (ws.data_path / "shared").exists()  # carl may delete the shared area, and did
    assert all((ws.data_path / rel).read_text() == text for rel, text in PRIVATE.items())
    assert alice.ok(READ, p=f"{mnt}/alice/plans/q3.md") == PRIVATE["alice/plans/q3.md"]
