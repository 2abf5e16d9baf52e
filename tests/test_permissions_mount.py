"""Per-agent permissions through real mounts, real Unix users and a dedicated --agent mount.

alice (uid 2901) and bob (uid 2902) are long-lived client processes
(`agent_worker.Worker`). Every file is mode 0666 and every folder 0777, so
the Unix modes allow everything and each refusal seen here is the policy's.
bob has one folder per right: `/only_r` (r), `/rw`, `/rc`, `/rd`, `/rl`; an
operation is shown granted where bob has its letter and refused in
`/only_r`, where he can see the path but lacks the letter (EACCES).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from agent_worker import LIST, READ, STAT_SIZE, Worker
from conftest import AGENTFS, Mount, make_workspace, mounted, run, wait_for

ALICE, BOB = 2901, 2902

POLICY = """\
[workspace]
default_agent = "nobody"

[locks]
wait_seconds = 0.2

[agents.nobody]
rules = [{ path = "/pub/**", allow = "r" }]

[agents.supervisor]
uids = [0]
rules = [{ path = "/**", allow = "rwcdl" }]

[agents.alice]
uids = [2901]
rules = [
  { path = "/pub/**", allow = "r" },
  { path = "/alice/**", allow = "rwcdl" },
  { path = "/shared/**", allow = "rwcdl" },
  { path = "/only_r/**", allow = "rw" },
]

[agents.bob]
uids = [2902]
rules = [
  { path = "/pub/**", allow = "r" },
  { path = "/bob/**", allow = "rwcdl" },
  { path = "/shared/**", allow = "rwcdl" },
  { path = "/only_r/**", allow = "r" },
  { path = "/rw/**", allow = "rw" },
  { path = "/rc/**", allow = "rc" },
  { path = "/rd/**", allow = "rd" },
  { path = "/rl/**", allow = "rl" },
  { path = "/drafts/**", allow = "rwcdl" },
  { path = "/drafts/secret/**", deny = "rwcdl" },
  { path = "/deep/a/b/**", allow = "r" },
]
"""

SECRET = "alice's secret: the launch is on friday\n"

TREE = {
    "alice/secret.txt": SECRET,
    "alice/notes/todo.md": "private todo\n",
    "shared/readme.md": "shared\n",
    "only_r/f.txt": "read only\n",
    "only_r/sub/": None,
    "rw/f.txt": "bob may change this\n",
    "rc/existing.txt": "bob may not change this\n",
    "rd/": None,
    "rl/f.txt": "lockable\n",
    "drafts/ok.md": "draft\n",
    "drafts/secret/plan.md": "hidden plan\n",
    "deep/a/b/leaf.txt": "leaf\n",
    "deep/a/sibling.txt": "sibling\n",
    "deep/other/x.txt": "other\n",
    "bob/": None,
    "pub/sub/deep.md": "everyone may read this, until it moves\n",
}


def build(data: Path, tree: dict[str, str | None], owner: int) -> None:
    """Create the tree as root: everything owned by `owner`, open Unix modes ("x/": a folder)."""
    for rel, content in tree.items():
        parts = rel.rstrip("/").split("/")
        cur = data
        for part in parts if content is None else parts[:-1]:
            cur = cur / part
            if not cur.exists():
                cur.mkdir()
                os.chmod(cur, 0o777)
                os.chown(cur, owner, owner)
        if content is not None:
            f = data / rel
            f.write_text(content)
            os.chmod(f, 0o666)
            os.chown(f, owner, owner)


@dataclass
class Env:
    ws: object
    mnt: Mount
    bob_mnt: Mount
    alice: Worker
    bob: Worker
    nobody: Worker

    def p(self, rel: str) -> str:
        return str(self.mnt.path / rel.lstrip("/"))

    def data(self, rel: str) -> Path:
        return self.ws.data_path / rel.lstrip("/")


@pytest.fixture(scope="module")
def env(users) -> Iterator[Env]:
    base = Path(tempfile.mkdtemp(prefix="agentfs-perm-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        ws = make_workspace(base, POLICY)
        build(ws.data_path, TREE, BOB)
        with mounted(ws, base / "mnt") as m, mounted(ws, base / "mnt-bob", "--agent", "bob") as mb:
            workers = [Worker(user="agentfs-t1"), Worker(user="agentfs-t2"), Worker(user="agentfs-t3")]
            try:
                yield Env(ws, m, mb, *workers)
            finally:
                for w in workers:
                    w.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def audit(env: Env, *args: str) -> list[dict]:
    r = run([AGENTFS, "audit", "-w", str(env.ws.root), "--json", *args])
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


# ----- each right, granted and refused ---------------------------------------


def test_whoami_names_each_uid_agent(env):
    for w, agent, how in ((env.alice, "alice", "uid"), (env.bob, "bob", "uid"), (env.nobody, "nobody", "default")):
        text = w.ok(READ, p=env.p(".agentfs/whoami"))
        assert f"agent: {agent}\n" in text and f"via: {how}\n" in text, text


def test_read_and_list(env):
    bob = env.bob
    assert bob.ok(READ, p=env.p("only_r/f.txt")) == "read only\n"
    assert bob.ok(LIST, p=env.p("only_r")) == ["f.txt", "sub"]
    assert bob.ok(STAT_SIZE, p=env.p("only_r/f.txt")) == len("read only\n")
    # without r: the path is invisible to bob, and everything is to the default agent
    assert bob.err(READ, p=env.p("alice/secret.txt")) == "ENOENT"
    assert bob.err(LIST, p=env.p("alice")) == "ENOENT"
    assert env.nobody.err(READ, p=env.p("only_r/f.txt")) == "ENOENT"
    assert env.nobody.err(LIST, p=env.p("shared")) == "ENOENT"
    assert not {"alice", "shared", "only_r", "bob"} & set(env.nobody.ok(LIST, p=env.p("")))


W_OPS = {
    "mmap write": "import mmap\nfd = os.open(p, os.O_RDWR)\nm = mmap.mmap(fd, 1)\nm[0:1] = b'M'\nm.close()\n"
                  "os.close(fd)",
    "open for writing": "os.close(os.open(p, os.O_WRONLY))",
    "append": "open(p, 'a').write('more\\n')",
    "truncate": "os.truncate(p, 3)",
    "O_RDONLY|O_TRUNC": "os.close(os.open(p, os.O_RDONLY | os.O_TRUNC))",
    "chmod": "os.chmod(p, 0o664)",
    "chown": "os.chown(p, os.getuid(), os.getgid())",
    "utimes": "os.utime(p, (1000000, 1000000))",
    "touch (now)": "os.utime(p)",
    "setxattr": "os.setxattr(p, 'user.note', b'x')",
}


def test_w_right_write_truncate_metadata_and_xattrs(env):
    bob = env.bob
    for what, code in W_OPS.items():
        assert bob.err(code, block="\n" in code, p=env.p("only_r/f.txt")) == "EACCES", what
    assert env.data("only_r/f.txt").read_text() == "read only\n"
    st = env.data("only_r/f.txt").stat()
    assert st.st_mode & 0o777 == 0o666 and st.st_mtime > 1000000
    assert "user.note" not in os.listxattr(env.data("only_r/f.txt"))
    for what, code in W_OPS.items():
        bob.ok(code, block="\n" in code, p=env.p("rw/f.txt"))
    f = env.data("rw/f.txt")
    assert f.stat().st_mode & 0o777 == 0o664
    assert os.getxattr(f, "user.note") == b"x"
    bob.ok("os.removexattr(p, 'user.note')", p=env.p("rw/f.txt"))
    assert "user.note" not in os.listxattr(f)
    os.setxattr(env.data("only_r/f.txt"), "user.keep", b"1")
    assert bob.err("os.removexattr(p, 'user.keep')", p=env.p("only_r/f.txt")) == "EACCES"
    assert os.getxattr(env.data("only_r/f.txt"), "user.keep") == b"1"
    # reading xattrs is reading: r suffices
    assert bob.ok("os.getxattr(p, 'user.keep').decode()", p=env.p("only_r/f.txt")) == "1"


C_OPS = {
    "create": "os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))",
    "mkdir": "os.mkdir(p)",
    "mknod (fifo)": "os.mkfifo(p)",
    "symlink": "os.symlink('target', p)",
}


def test_c_right_create_mkdir_mknod_symlink_link(env):
    bob = env.bob
    for what, code in C_OPS.items():
        name = what.split()[0]
        assert bob.err(code, p=env.p(f"only_r/new-{name}")) == "EACCES", what
        assert not os.path.lexists(env.data(f"only_r/new-{name}")), what
        bob.ok(code, p=env.p(f"rc/new-{name}"))
        assert os.path.lexists(env.data(f"rc/new-{name}")), what
        assert env.data(f"rc/new-{name}").lstat().st_uid == BOB
    assert bob.err("os.link(a, b)", a=env.p("only_r/f.txt"), b=env.p("only_r/f-link")) == "EACCES"
    bob.ok("os.link(a, b)", a=env.p("rc/new-create"), b=env.p("rc/new-link"))
    assert env.data("rc/new-link").stat().st_ino == env.data("rc/new-create").stat().st_ino
    # c is not w: bob cannot change what he (or anyone) created in /rc
    assert bob.err("open(p, 'w').write('x')", p=env.p("rc/new-create")) == "EACCES"
    assert bob.err("os.truncate(p, 0)", p=env.p("rc/existing.txt")) == "EACCES"
    assert env.data("rc/existing.txt").read_text() == "bob may not change this\n"


def test_d_right_unlink_rmdir_rename_away(env):
    bob = env.bob
    for rel in ("rd/f1", "rd/f2"):
        env.data(rel).write_text("x")
        os.chmod(env.data(rel), 0o666)
    env.data("rd/dir").mkdir()
    os.chmod(env.data("rd/dir"), 0o777)
    bob.ok("os.unlink(p)", p=env.p("rd/f1"))
    bob.ok("os.rmdir(p)", p=env.p("rd/dir"))
    bob.ok("os.rename(a, b)", a=env.p("rd/f2"), b=env.p("bob/f2"))
    assert sorted(os.listdir(env.data("rd"))) == []
    assert env.data("bob/f2").read_text() == "x"
    assert bob.err("os.unlink(p)", p=env.p("only_r/f.txt")) == "EACCES"
    assert bob.err("os.rmdir(p)", p=env.p("only_r/sub")) == "EACCES"
    assert bob.err("os.rename(a, b)", a=env.p("only_r/f.txt"), b=env.p("bob/stolen.txt")) == "EACCES"
    # d without c: nothing can be renamed *into* /rd
    assert bob.err("os.rename(a, b)", a=env.p("bob/f2"), b=env.p("rd/back")) == "EACCES"
    assert env.data("only_r/f.txt").read_text() == "read only\n" and env.data("only_r/sub").is_dir()
    assert not env.data("bob/stolen.txt").exists() and env.data("bob/f2").exists()


LOCK = "os.setxattr(p, 'user.agentfs.lock', b'exclusive')"


def test_l_right_lock_through_the_xattr(env):
    bob = env.bob
    assert bob.err(LOCK, p=env.p("only_r/f.txt")) == "EACCES"
    assert bob.err("os.getxattr(p, 'user.agentfs.lock')", p=env.p("only_r/f.txt")) == "ENODATA"
    refused = run(["setfattr", "-n", "user.agentfs.lock", "-v", "exclusive", env.p("only_r/f.txt")],
                  user="agentfs-t2", check=False)
    assert refused.returncode != 0 and "denied" in refused.stderr.lower(), refused.stderr
    run(["setfattr", "-n", "user.agentfs.lock", "-v", "exclusive", env.p("rl/f.txt")], user="agentfs-t2")
    try:
        held = bob.ok("os.getxattr(p, 'user.agentfs.lock').decode()", p=env.p("rl/f.txt"))
        assert "exclusive" in held and "bob" in held
        locks = run([AGENTFS, "locks", "-w", str(env.ws.root)]).stdout
        assert "/rl/f.txt" in locks
    finally:
        bob.ok("os.removexattr(p, 'user.agentfs.lock')", p=env.p("rl/f.txt"))
    assert bob.err("os.getxattr(p, 'user.agentfs.lock')", p=env.p("rl/f.txt")) == "ENODATA"


# ----- visibility ---------------------------------------------------------------


def test_invisible_paths_are_enoent_and_absent_from_listings(env):
    bob = env.bob
    for rel in ("alice", "alice/secret.txt", "alice/notes", "alice/notes/todo.md", "alice/nonexistent"):
        assert bob.err("os.stat(p)", p=env.p(rel)) == "ENOENT", rel
        assert bob.err("os.lstat(p)", p=env.p(rel)) == "ENOENT", rel
        assert bob.err("os.close(os.open(p, os.O_RDONLY))", p=env.p(rel)) == "ENOENT", rel
    assert "alice" not in bob.ok(LIST, p=env.p(""))
    assert "alice" in env.alice.ok(LIST, p=env.p(""))
    assert {"alice", "bob", "only_r"} <= set(os.listdir(env.mnt.path))  # root is the supervisor


def test_kernel_caches_never_answer_for_another_agent(env):
    """alice's lookups fill the shared dentry/attr caches; bob must still get ENOENT every time."""
    for _ in range(5):
        assert env.alice.ok(STAT_SIZE, p=env.p("alice/secret.txt")) == len(SECRET)
        assert env.alice.ok(LIST, p=env.p("alice")) == ["notes", "secret.txt"]
        assert env.bob.err(STAT_SIZE, p=env.p("alice/secret.txt")) == "ENOENT"
        assert env.bob.err(LIST, p=env.p("alice")) == "ENOENT"
        assert "alice" not in env.bob.ok(LIST, p=env.p(""))
    # and the other way round: bob's own area is invisible to alice
    env.bob.ok("open(p, 'w').write('b')", p=env.p("bob/cached.txt"))
    assert env.bob.ok(LIST, p=env.p("bob")) == sorted(os.listdir(env.data("bob")))
    assert env.alice.err(LIST, p=env.p("bob")) == "ENOENT"
    assert env.alice.err(READ, p=env.p("bob/cached.txt")) == "ENOENT"


def test_ancestors_of_allowed_paths_are_listable_showing_only_visible_entries(env):
    bob = env.bob
    assert bob.ok(LIST, p=env.p("deep")) == ["a"]
    assert bob.ok(LIST, p=env.p("deep/a")) == ["b"]
    assert bob.ok(LIST, p=env.p("deep/a/b")) == ["leaf.txt"]
    assert bob.ok(READ, p=env.p("deep/a/b/leaf.txt")) == "leaf\n"
    assert bob.err(READ, p=env.p("deep/a/sibling.txt")) == "ENOENT"
    assert bob.err(LIST, p=env.p("deep/other")) == "ENOENT"
    # seeing a folder above is not reading it: its xattrs stay closed (none
    # listed, a value refused), while names no one stores answer as natively
    os.setxattr(env.data("deep"), "user.owner-note", b"not for bob")
    assert bob.ok("os.listxattr(p)", p=env.p("deep")) == []
    assert bob.err("os.getxattr(p, 'user.owner-note')", p=env.p("deep")) == "EACCES"
    assert bob.err("os.getxattr(p, 'security.selinux')", p=env.p("deep")) == "ENODATA"
    assert "user.owner-note" in os.listxattr(env.mnt.path / "deep")
    # so `ls -l` on the way to bob's files prints no error
    ls = run(["ls", "-la", env.p("deep"), env.p("deep/a")], user=BOB, check=False)
    assert ls.returncode == 0 and ls.stderr == "" and "sibling" not in ls.stdout, ls
    ls = run(["ls", "-ld", str(env.mnt.path)], user=BOB, check=False)
    assert ls.returncode == 0 and ls.stderr == "", ls
    # visible for listing is not a right to change: creating next to the path is refused
    assert bob.err("os.mkdir(p)", p=env.p("deep/a/new")) == "EACCES"
    assert not env.data("deep/a/new").exists()
    assert env.alice.err(LIST, p=env.p("deep")) == "ENOENT"


def test_deny_beats_allow(env):
    bob = env.bob
    assert bob.ok(LIST, p=env.p("drafts")) == ["ok.md"]
    assert bob.err(LIST, p=env.p("drafts/secret")) == "ENOENT"
    assert bob.err(READ, p=env.p("drafts/secret/plan.md")) == "ENOENT"
    assert bob.err("os.mkdir(p)", p=env.p("drafts/secret")) == "EACCES"
    bob.ok("os.mkdir(p)", p=env.p("drafts/mine"))
    assert env.data("drafts/secret/plan.md").read_text() == "hidden plan\n"
    explain = run([AGENTFS, "policy", "explain", str(env.ws.root), "--agent", "bob", "/drafts/secret/plan.md",
                   "--json"])
    doc = json.loads(explain.stdout)
    assert doc["rights"] in ("", "-") and doc["visible"] is False


def test_denials_are_audited_with_need_and_have(env):
    env.bob.err("os.unlink(p)", p=env.p("only_r/f.txt"))
    recs = wait_for(lambda: [r for r in audit(env, "--agent", "bob")
                             if r["path"] == "/only_r/f.txt" and r["op"] == "unlink"],
                    what="bob's denial in the audit log")
    d = recs[-1]
    assert d["result"] == "EACCES" and d["uid"] == BOB
    assert d["details"]["need"] == "d" and d["details"]["have"].strip("-") == "r"


# ----- a dedicated --agent mount beside the shared one -------------------------------


def test_dedicated_mount_serves_everyone_as_its_agent(env):
    bm = env.bob_mnt.path
    who = run([AGENTFS, "whoami", "--json", str(bm)])
    assert json.loads(who.stdout)["agent"] == "bob"
    # a process tag does not matter there: the mount decides
    tagged = run([AGENTFS, "run", "--agent", "alice", "-w", str(env.ws.root), "--", "sh", "-c",
                  f"cat {bm}/.agentfs/whoami; cat {env.mnt.path}/.agentfs/whoami"]).stdout
    assert "agent: bob\nuid: 0" in tagged and "agent: alice\nuid: 0" in tagged, tagged
    # root is the supervisor on the shared mount, but bob on bob's mount
    assert "alice" in os.listdir(env.mnt.path)
    assert "alice" not in os.listdir(bm)
    with pytest.raises(FileNotFoundError):
        os.stat(bm / "alice" / "secret.txt")
    with pytest.raises(PermissionError):
        os.unlink(bm / "only_r" / "f.txt")
    # alice's uid does not matter there either
    assert env.alice.err(READ, p=str(bm / "alice/secret.txt")) == "ENOENT"
    assert env.alice.ok(READ, p=str(bm / "only_r/f.txt")) == "read only\n"
    # one state: a change through one mount is seen through the other, audited as bob
    (bm / "shared" / "from-bob-mount.txt").write_text("hello")
    assert (env.mnt.path / "shared" / "from-bob-mount.txt").read_text() == "hello"
    recs = wait_for(lambda: [r for r in audit(env, "--path", "/shared/from-bob-mount.txt")
                             if r["op"] == "create"], what="the create in the audit log")
    assert recs[0]["agent"] == "bob" and recs[0]["uid"] == 0


def test_a_lock_taken_through_one_mount_holds_on_the_other(env):
    f = "shared/locked.txt"
    env.data(f).write_text("v1\n")
    os.chmod(env.data(f), 0o666)
    os.setxattr(env.bob_mnt.path / f, "user.agentfs.lock", b"exclusive")
    try:
        assert env.alice.err("open(p, 'a').write('x')", p=env.p(f)) == "EAGAIN"
        assert env.alice.err(READ, p=env.p(f)) == "EAGAIN"
        assert env.bob.ok(READ, p=env.p(f)) == "v1\n"  # bob's uid on the shared mount: same agent
    finally:
        os.removexattr(env.bob_mnt.path / f, "user.agentfs.lock")
    env.alice.ok("open(p, 'a').write('v2\\n')", p=env.p(f))
    assert env.data(f).read_text() == "v1\nv2\n"


def test_a_folder_moved_where_an_agent_may_not_look_is_gone_from_inside_too(env):
    """Everyone sees /pub alike, so the kernel caches it long; moving a folder out must not keep that."""
    bob = env.bob
    bob.ok("os.chdir(p)", p=env.p("pub/sub"))
    try:
        for _ in range(2):
            assert bob.ok("os.stat('deep.md').st_size") > 0
        os.rename(env.mnt.path / "pub/sub", env.mnt.path / "alice/sub")  # the supervisor moves it
        wait_for(lambda: bob.call("os.stat('deep.md').st_size").get("errno") == "ENOENT", timeout=2,
                 what="bob's cached entry inside the moved folder to be forgotten")
        assert bob.err("open('deep.md').read()") == "ENOENT"
        assert bob.err("os.listdir('.')") == "ENOENT"
        assert env.alice.ok(READ, p=env.p("alice/sub/deep.md")).startswith("everyone")
    finally:
        bob.ok("os.chdir('/')")


def test_entries_cached_after_a_move_stay_hidden_from_a_cwd_left_inside(env):
    """After /pub/later moves into /alice, alice's own lookups inside it are cached for her area;
    bob, whose cwd stayed inside, must not reach those cached entries by name."""
    (env.mnt.path / "pub/later").mkdir(mode=0o777)
    os.chmod(env.mnt.path / "pub/later", 0o777)
    bob = env.bob
    bob.ok("os.chdir(p)", p=env.p("pub/later"))
    try:
        os.rename(env.mnt.path / "pub/later", env.mnt.path / "alice/later")
        env.alice.ok("open(p, 'w').write('made after the move')", p=env.p("alice/later/fresh.md"))
        for _ in range(3):  # alice's own stats would fill the kernel's cache
            assert env.alice.ok("os.stat(p).st_size", p=env.p("alice/later/fresh.md")) > 0
        assert bob.err("os.stat('fresh.md')") == "ENOENT"
        assert bob.err("open('fresh.md').read()") == "ENOENT"
    finally:
        bob.ok("os.chdir('/')")


def test_a_folder_moved_through_the_other_mount_is_closed_on_this_one(env):
    """bob's dedicated mount holds his cwd in /shared/proj; the supervisor moves it into /alice via the shared mount."""
    (env.mnt.path / "shared/proj").mkdir()
    (env.mnt.path / "shared/proj/plan.txt").write_text("shared plan\n")
    with Worker(cwd=str(env.bob_mnt.path / "shared/proj")) as bob:  # root on bob's mount: agent bob
        assert bob.ok("open('plan.txt').read()") == "shared plan\n"
        os.rename(env.mnt.path / "shared/proj", env.mnt.path / "alice/proj")
        (env.mnt.path / "alice/proj/plan.txt").write_text("alice's private plan\n")
        wait_for(lambda: bob.call("open('plan.txt').read()").get("errno") == "ENOENT", timeout=3,
                 what="the moved folder to close to bob on his own mount")
        assert bob.err("open('new.txt', 'w').write('x')") == "ENOENT"


def test_a_folder_moved_in_the_data_tree_is_closed_to_a_cwd_left_inside(env):
    """An operator moves /shared/ops into /alice directly in the backing tree, under bob's cwd."""
    (env.mnt.path / "shared/ops").mkdir(mode=0o777)
    os.chmod(env.mnt.path / "shared/ops", 0o777)
    (env.mnt.path / "shared/ops/run.txt").write_text("runbook\n")
    os.chmod(env.mnt.path / "shared/ops/run.txt", 0o666)
    bob = env.bob
    bob.ok("os.chdir(p)", p=env.p("shared/ops"))
    try:
        assert bob.ok("open('run.txt').read()") == "runbook\n"
        os.rename(env.data("shared/ops"), env.data("alice/ops"))
        wait_for(lambda: bob.call("open('run.txt').read()").get("errno") == "ENOENT", timeout=3,
                 what="the folder moved beside the mount to close to bob")
        assert bob.err("open('new.txt', 'w').write('x')") == "ENOENT"
        assert not env.data("alice/ops/new.txt").exists()
    finally:
        bob.ok("os.chdir('/')")


# ----- escape routes ------------------------------------------------------------------


def test_symlink_into_a_private_area_is_resolved_through_the_mount_and_refused(env):
    alice, bob = env.alice, env.bob
    alice.ok("os.symlink('../alice/secret.txt', p)", p=env.p("shared/to-secret"))
    assert alice.ok(READ, p=env.p("shared/to-secret")) == SECRET
    assert bob.ok("os.readlink(p)", p=env.p("shared/to-secret")) == "../alice/secret.txt"
    assert bob.err(READ, p=env.p("shared/to-secret")) == "ENOENT"
    assert bob.err("os.stat(p)", p=env.p("shared/to-secret")) == "ENOENT"
    bob.ok("os.symlink(t, p)", t=env.p("alice/secret.txt"), p=env.p("bob/abs-link"))
    bob.ok("os.symlink('../alice', p)", p=env.p("bob/dir-link"))
    assert bob.err(READ, p=env.p("bob/abs-link")) == "ENOENT"
    assert bob.err(LIST, p=env.p("bob/dir-link")) == "ENOENT"
    assert bob.err(READ, p=env.p("bob/dir-link/secret.txt")) == "ENOENT"
    assert bob.err("open(p, 'w').write('x')", p=env.p("bob/abs-link")) == "ENOENT"
    assert env.data("alice/secret.txt").read_text() == SECRET


def test_hard_link_of_a_private_file_is_refused(env):
    assert env.bob.err("os.link(a, b)", a=env.p("alice/secret.txt"), b=env.p("bob/got-it")) == "ENOENT"
    assert not env.data("bob/got-it").exists()
    assert env.data("alice/secret.txt").stat().st_nlink == 1


def test_hard_link_of_an_own_file_into_a_more_permissive_area_is_refused(env):
    bob = env.bob
    bob.ok("open(p, 'w').write('bob only')", p=env.p("bob/mine.txt"))
    assert bob.err("os.link(a, b)", a=env.p("bob/mine.txt"), b=env.p("shared/mine.txt")) == "EACCES"
    assert not env.data("shared/mine.txt").exists()
    # alice (private file of hers, link into the shared area) is refused alike
    assert env.alice.err("os.link(a, b)", a=env.p("alice/secret.txt"), b=env.p("shared/s.txt")) == "EACCES"
    # a link that gives nobody more rights is allowed
    bob.ok("os.link(a, b)", a=env.p("bob/mine.txt"), b=env.p("bob/mine-too.txt"))
    recs = wait_for(lambda: [r for r in audit(env, "--agent", "bob") if r["op"] == "link"
                             and r["result"] == "EACCES"], what="the refused link in the audit log")
    assert "alice" in json.dumps(recs[-1]["details"])


def test_moving_one_name_of_a_linked_file_where_rights_differ_is_exdev_so_mv_copies(env):
    """The file stays under its other names, so such a move would change who reaches it."""
    bob = env.bob
    bob.ok("open(p, 'w').write('bob only')", p=env.p("bob/orig.txt"))
    bob.ok("os.link(a, b)", a=env.p("bob/orig.txt"), b=env.p("bob/second.txt"))
    assert bob.err("os.rename(a, b)", a=env.p("bob/second.txt"), b=env.p("shared/second.txt")) == "EXDEV"
    # ... also inside a folder moved along
    bob.ok("os.mkdir(d)", d=env.p("bob/box"))
    bob.ok("os.link(a, b)", a=env.p("bob/orig.txt"), b=env.p("bob/box/third.txt"))
    assert bob.err("os.rename(a, b)", a=env.p("bob/box"), b=env.p("shared/box")) == "EXDEV"
    assert not env.data("shared/second.txt").exists() and not env.data("shared/box").exists()
    assert env.data("bob/orig.txt").stat().st_nlink == 3
    recs = wait_for(lambda: [r for r in audit(env, "--agent", "bob") if r["op"] == "rename"
                             and r["result"] == "EXDEV" and "other names" in json.dumps(r["details"])],
                    what="the refused renames in the audit log")
    assert {r["path"] for r in recs} >= {"/bob/second.txt", "/bob/box/third.txt"}
    # within the area, or once the file has one name, a move is a move
    bob.ok("os.rename(a, b)", a=env.p("bob/box/third.txt"), b=env.p("bob/third.txt"))
    bob.ok("os.rename(a, b)", a=env.p("bob/box"), b=env.p("shared/box"))
    bob.ok("os.unlink(a)", a=env.p("bob/second.txt"))
    bob.ok("os.unlink(a)", a=env.p("bob/third.txt"))
    bob.ok("os.rename(a, b)", a=env.p("bob/orig.txt"), b=env.p("shared/orig.txt"))
    assert env.data("shared/orig.txt").read_text() == "bob only"


def test_a_shared_file_bob_also_linked_does_not_follow_alice_into_her_area(env):
    """alice moves a shared file home: with bob's second name on it, `mv` makes her a private copy."""
    env.alice.ok("open(p, 'w').write('draft')", p=env.p("shared/doc.txt"))
    env.alice.ok("os.chmod(p, 0o666)", p=env.p("shared/doc.txt"))  # protected_hardlinks: bob may link it
    env.bob.ok("os.link(a, b)", a=env.p("shared/doc.txt"), b=env.p("bob/doc.txt"))
    assert env.alice.err("os.rename(a, b)", a=env.p("shared/doc.txt"), b=env.p("alice/doc.txt")) == "EXDEV"
    mv = run(["mv", env.p("shared/doc.txt"), env.p("alice/doc.txt")], user=ALICE, check=False)
    assert mv.returncode == 0, mv.stderr
    env.alice.ok("open(p, 'w').write('alice private')", p=env.p("alice/doc.txt"))
    assert env.bob.ok(READ, p=env.p("bob/doc.txt")) == "draft"
    assert env.data("alice/doc.txt").stat().st_nlink == 1


def test_a_file_reached_through_a_second_name_is_judged_by_it_after_the_first_is_gone(env):
    """The first name's "(deleted)" text must not stand in for the name left."""
    bob = env.bob
    bob.ok("open(p, 'w').write('v1')", p=env.p("bob/y.txt"))
    bob.ok("os.link(a, b)", a=env.p("bob/y.txt"), b=env.p("rc/y.txt"))  # bob may not write in /rc
    bob.ok("os.unlink(a)", a=env.p("bob/y.txt"))
    assert bob.err("open(p, 'a').write('more')", p=env.p("rc/y.txt")) == "EACCES"
    assert env.data("rc/y.txt").read_text() == "v1"
    assert not any("(deleted)" in (r["path"] or "") for r in audit(env))


def test_rename_of_a_private_or_undeletable_file_into_an_open_area_is_refused(env):
    bob = env.bob
    assert bob.err("os.rename(a, b)", a=env.p("alice/secret.txt"), b=env.p("shared/x.txt")) == "ENOENT"
    assert bob.err("os.rename(a, b)", a=env.p("alice"), b=env.p("bob/alice")) == "ENOENT"
    assert bob.err("os.rename(a, b)", a=env.p("only_r/f.txt"), b=env.p("shared/f.txt")) == "EACCES"
    assert env.data("alice/secret.txt").read_text() == SECRET
    assert env.data("only_r/f.txt").exists() and not env.data("shared/f.txt").exists()


def test_rename_of_an_own_file_over_a_file_it_may_not_change_is_refused(env):
    bob = env.bob
    bob.ok("open(p, 'w').write('replacement')", p=env.p("bob/over.txt"))
    # /rc gives c but neither w nor d on the existing target
    assert bob.err("os.rename(a, b)", a=env.p("bob/over.txt"), b=env.p("rc/existing.txt")) == "EACCES"
    assert bob.err("os.rename(a, b)", a=env.p("bob/over.txt"), b=env.p("only_r/f.txt")) == "EACCES"
    # over an invisible file: the target is hidden, so it stays as it is
    assert bob.err("os.rename(a, b)", a=env.p("bob/over.txt"), b=env.p("drafts/secret/plan.md")) == "ENOENT"
    # nor by swapping the two (RENAME_EXCHANGE needs d and c on both names)
    for other, code in (("only_r/f.txt", "EACCES"), ("rc/existing.txt", "EACCES"), ("drafts/secret/plan.md", "ENOENT")):
        assert bob.err(EXCHANGE, block=True, a=env.p("bob/over.txt"), b=env.p(other)) == code, other
    assert env.data("rc/existing.txt").read_text() == "bob may not change this\n"
    assert env.data("only_r/f.txt").read_text() == "read only\n"
    assert env.data("drafts/secret/plan.md").read_text() == "hidden plan\n"
    assert env.data("bob/over.txt").read_text() == "replacement"
    bob.ok("open(p, 'w').write('swap me')", p=env.p("bob/other.txt"))
    bob.ok(EXCHANGE, block=True, a=env.p("bob/over.txt"), b=env.p("bob/other.txt"))
    assert env.data("bob/over.txt").read_text() == "swap me"


EXCHANGE = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
if libc.renameat2(-100, a.encode(), -100, b.encode(), 2) != 0:
    e = ctypes.get_errno()
    raise OSError(e, os.strerror(e))
"""


def test_renaming_a_folder_that_holds_hidden_files_is_refused(env):
    """bob may delete and rename /drafts itself, but moving it would carry /drafts/secret into /bob."""
    bob = env.bob
    assert bob.err("os.rename(a, b)", a=env.p("drafts"), b=env.p("bob/drafts")) == "EACCES"
    assert env.data("drafts/secret/plan.md").read_text() == "hidden plan\n"
    assert bob.err(READ, p=env.p("bob/drafts/secret/plan.md")) == "ENOENT"
    recs = wait_for(lambda: [r for r in audit(env, "--agent", "bob") if r["op"] == "rename"
                             and r["path"] == "/drafts" and r["result"] == "EACCES"],
                    what="the refused folder move in the audit log")
    assert recs[-1]["details"]["inside"].startswith("/drafts/secret")
    # a folder whose every file bob may read and delete moves as a whole
    bob.ok("os.makedirs(d)\nopen(d + '/c.txt', 'w').write('c')", block=True, d=env.p("bob/tree/a/b"))
    bob.ok("os.rename(a, b)", a=env.p("bob/tree"), b=env.p("shared/tree"))
    assert env.data("shared/tree/a/b/c.txt").read_text() == "c"


def test_dot_dot_traversal_from_an_allowed_folder(env):
    bob = env.bob
    assert bob.err(READ, p=env.p("shared") + "/../alice/secret.txt") == "ENOENT"
    assert bob.err(READ, p=env.p("drafts") + "/secret/../secret/plan.md") == "ENOENT"
    assert "alice" not in bob.ok(LIST, p=env.p("shared") + "/..")
    code = "os.chdir(d)\nresult = [sorted(os.listdir('..'))]\ntry:\n    open('../alice/secret.txt').read()\n" \
           "    result.append('read')\nexcept OSError as e:\n    result.append(errno.errorcode[e.errno])"
    listing, outcome = bob.ok(code, block=True, d=env.p("shared"))
    assert "alice" not in listing and outcome == "ENOENT"


SEND_FD = ("s = socket.socket(fileno=os.dup(sfd))\nfd = os.open(p, flag)\n"
           "socket.send_fds(s, [b'x'], [fd])\nos.close(fd)\ns.detach()")
RECV_FD = "s = socket.socket(fileno=os.dup(sfd))\n_, fds, _, _ = socket.recv_fds(s, 1, 1)\ns.detach()\nresult = fds[0]"


def test_fd_passed_from_another_agent_keeps_the_openers_rights(env):
    """A descriptor passed over SCM_RIGHTS is the opener's open, checked when it was opened.

    As natively, the descriptor is the capability: reads and writes through
    it go through as the opener's handle (and are audited as the opener's),
    and so do the attribute refreshes the kernel makes around them (fstat,
    before reads), whatever the cache timing. Requests that change the file
    by the receiver's own hand (ftruncate, a setattr) are checked against the
    receiver; and in no case can the receiver open the path on its own, nor
    re-open the descriptor through /proc.
    """
    env.data("only_r/fd.txt").write_text("0123456789\n")
    os.chmod(env.data("only_r/fd.txt"), 0o666)
    a_end, b_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with Worker(user="agentfs-t1", pass_fds=[a_end.fileno()]) as alice, \
                Worker(user="agentfs-t2", pass_fds=[b_end.fileno()]) as bob:
            def handed(rel: str, flag: int) -> int:
                alice.ok(SEND_FD, block=True, sfd=a_end.fileno(), p=env.p(rel), flag=flag)
                return bob.ok(RECV_FD, block=True, sfd=b_end.fileno())

            # alice's private file, read-only: bob reads what alice handed him, and nothing more
            fd = handed("alice/secret.txt", os.O_RDONLY)
            assert bob.ok("os.pread(fd, 1000, 0).decode()", fd=fd) == SECRET
            assert bob.ok("os.fstat(fd).st_size", fd=fd) == len(SECRET.encode())
            assert bob.err("os.pwrite(fd, b'x', 0)", fd=fd) == "EBADF"
            assert bob.err("os.ftruncate(fd, 0)", fd=fd) in ("EBADF", "EINVAL", "ENOENT")
            assert bob.err(READ, p=env.p("alice/secret.txt")) == "ENOENT"
            assert bob.err("os.close(os.open(f'/proc/self/fd/{fd}', os.O_RDONLY))", fd=fd) == "ENOENT"
            bob.ok("os.close(fd)", fd=fd)
            # a file bob may only read, opened for writing by alice: writes go through as alice's
            assert bob.err("os.close(os.open(p, os.O_WRONLY))", p=env.p("only_r/fd.txt")) == "EACCES"
            fd = handed("only_r/fd.txt", os.O_RDWR)
            assert bob.ok("os.pwrite(fd, b'AB', 0)", fd=fd) == 2
            assert bob.ok("os.pread(fd, 100, 0).decode()", fd=fd) == "AB23456789\n"
            assert bob.err("os.ftruncate(fd, 1)", fd=fd) == "EACCES"  # a setattr: bob's own request
            bob.ok("os.close(fd)", fd=fd)
    finally:
        a_end.close()
        b_end.close()
    assert env.data("only_r/fd.txt").read_text() == "AB23456789\n"
    assert env.data("alice/secret.txt").read_text() == SECRET
    recs = wait_for(lambda: [r for r in audit(env, "--path", "/only_r/fd.txt") if r["op"] == "write"],
                    what="the write through the passed fd in the audit log")
    assert recs[-1]["agent"] == "alice" and recs[-1]["uid"] == ALICE
