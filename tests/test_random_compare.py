"""A seeded random sequence of operations, run on a native directory and through the mount.

After every step the outcome (value or errno) and the stat of the paths it
touched must match; at the end the whole trees must match (names, types,
modes, owners, sizes, contents, link counts, symlink targets, user xattrs).
Names come from a small pool so that operations collide often: renames over
existing names, links to removed files, rmdir of non-empty directories.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from posix_pair import live_mount_beside_native, RENAME_EXCHANGE, RENAME_NOREPLACE, Pair, renameat2

T1 = 2901
TOP = ["a", "b", "c", "d", "e"]
POOL = TOP + [f"{t}/{s}" for t in ("a", "b") for s in ("x", "y", "z")] + ["a/x/q", "b/y/q"]
LEAVES = [p for p in POOL if p not in ("a", "b")]


@pytest.fixture(scope="module")
def live(users):
    with live_mount_beside_native("agentfs-rc-") as pair:
        yield pair


def _pair(live: Any, name: str) -> Pair:
    m, native = live
    p = Pair(native / name, m.path / name)
    for root in p.roots:
        root.mkdir()
        os.chmod(root, 0o777)
    return p


def _write_at(p: Path, off: int, data: bytes, flags: int) -> int:
    fd = os.open(p, os.O_WRONLY | flags)
    try:
        return os.pwrite(fd, data, off) if not flags & os.O_APPEND else os.write(fd, data)
    finally:
        os.close(fd)


def _read_all(p: Path) -> bytes:
    with open(p, "rb") as f:
        return f.read()


def make_op(rng: random.Random) -> tuple[str, Callable[[Path], Any], list[str]]:
    """One random operation: a label, the function of a tree root, the paths whose stat to compare."""
    k = rng.randrange(20)
    # The directories a/ and b/ are mostly left standing (content ops pick other names), so
    # most operations reach a name that exists or can exist, rather than failing with ENOTDIR.
    pool = POOL if k in (10, 11, 17) or rng.random() < 0.08 else LEAVES
    a, b = rng.choice(pool), rng.choice(pool)
    if k in (0, 1):
        mode = rng.choice([0o644, 0o600, 0o755, 0o666, 0o4755])
        flags = os.O_CREAT | os.O_WRONLY | rng.choice([0, os.O_EXCL, os.O_TRUNC])
        return f"create {a} {oct(mode)} {flags:#x}", lambda r: os.close(os.open(r / a, flags, mode)), [a]
    if k in (2, 3):
        off, n = rng.randrange(0, 20000), rng.randrange(0, 9000)
        data = rng.randbytes(n)
        flags = rng.choice([0, 0, os.O_APPEND, os.O_TRUNC])
        return f"write {a} @{off} {n} {flags:#x}", lambda r: _write_at(r / a, off, data, flags), [a]
    if k == 4:
        size = rng.choice([0, 1, 4096, rng.randrange(0, 30000), 1 << 22])
        return f"truncate {a} {size}", lambda r: os.truncate(r / a, size), [a]
    if k in (5, 6):
        flags = rng.choice([0, 0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE])
        return f"rename {a} {b} {flags}", lambda r: renameat2(r / a, r / b, flags), [a, b]
    if k == 7:
        return f"link {a} {b}", lambda r: os.link(r / a, r / b, follow_symlinks=False), [a, b]
    if k == 8:
        target = rng.choice([b, "../" + b, "/etc/hostname", "dangling", b + "/.."])
        return f"symlink {target} {a}", lambda r: os.symlink(target, r / a), [a]
    if k == 9:
        return f"unlink {a}", lambda r: os.unlink(r / a), [a]
    if k in (10, 11):
        mode = rng.choice([0o755, 0o700, 0o777, 0o2775])
        return f"mkdir {a} {oct(mode)}", lambda r: os.mkdir(r / a, mode), [a]
    if k == 12:
        return f"rmdir {a}", lambda r: os.rmdir(r / a), [a]
    if k == 13:
        mode = rng.choice([0o644, 0o600, 0o755, 0o700, 0o1777, 0o4755, 0o000])
        return f"chmod {a} {oct(mode)}", lambda r: os.chmod(r / a, mode), [a]
    if k == 14:
        name, value = rng.choice(["user.a", "user.b", "user.long" * 3]), rng.randbytes(rng.randrange(0, 300))
        flags = rng.choice([0, 0, os.XATTR_CREATE, os.XATTR_REPLACE])
        return f"setxattr {a} {name} {flags}", lambda r: os.setxattr(r / a, name, value, flags,
                                                                     follow_symlinks=False), [a]
    if k == 15:
        name = rng.choice(["user.a", "user.b"])
        return f"removexattr {a} {name}", lambda r: os.removexattr(r / a, name, follow_symlinks=False), [a]
    if k == 16:
        return f"read {a}", lambda r: _read_all(r / a), [a]
    if k == 17:
        return f"listdir {a}", lambda r: sorted(os.listdir(r / a)), [a]
    if k == 18:
        ns = (rng.randrange(0, 2**40) * 1000, rng.randrange(0, 2**40) * 1000)
        return f"utime {a}", lambda r: os.utime(r / a, ns=ns, follow_symlinks=False), [a]
    return f"readlink {a}", lambda r: os.readlink(r / a), [a]


def run_sequence(pair: Pair, seed: int, steps: int, user: tuple[int, int] | None = None) -> None:
    rng = random.Random(seed)
    pair.setup(lambda r: ((r / "a").mkdir(), (r / "b").mkdir(), (r / "a" / "x").mkdir(),
                          (r / "b" / "y").write_bytes(b"start"), (r / "c").write_bytes(b"c")))
    done = []
    for i in range(steps):
        label, fn, watch = make_op(rng)
        done.append(label)
        try:
            pair.run(fn, watch, user=user, times_too=False)
        except AssertionError as e:
            raise AssertionError(f"seed {seed}, step {i}: {label}\n{e}\nlast steps: {done[-8:]}") from None
    pair.same_tree()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_sequence_as_root(live, seed):
    run_sequence(_pair(live, f"root{seed}"), seed, 300)


@pytest.mark.parametrize("seed", [11, 12])
def test_random_sequence_as_a_user(live, seed):
    run_sequence(_pair(live, f"user{seed}"), seed, 300, user=(T1, T1))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 103))
def test_long_random_sequence(live, seed):
    run_sequence(_pair(live, f"long{seed}"), seed, 3000)


def test_tar_round_trip_gives_the_same_tree(live, tmp_path):
    """Real tools end to end: tar -x of a tree with hard links, symlinks, odd modes; tar -c back."""
    src = tmp_path / "src"
    shutil.copytree("/usr/lib/python3.11/email", src / "email", symlinks=True)
    (src / "modes").mkdir()
    for mode in (0o600, 0o4755, 0o2711, 0o1777, 0o444):
        f = src / "modes" / oct(mode)
        f.write_bytes(oct(mode).encode())
        os.chmod(f, mode)
    os.link(src / "modes" / oct(0o444), src / "hardlink")
    os.symlink("email/__init__.py", src / "symlink")
    os.mkfifo(src / "fifo")
    os.setxattr(src / "hardlink", "user.tag", b"kept")
    archive = tmp_path / "t.tar"
    import subprocess
    subprocess.run(["tar", "--xattrs", "-cf", str(archive), "-C", str(src), "."], check=True)
    pair = _pair(live, "tar")
    for root in pair.roots:
        subprocess.run(["tar", "--xattrs", "--xattrs-include=user.*", "-xpf", str(archive), "-C", str(root)],
                       check=True)
    pair.same_tree()
    listings = [subprocess.run(["tar", "-tvf", "-", "."], input=subprocess.run(
        ["tar", "-cf", "-", "-C", str(root), "."], check=True, capture_output=True).stdout,
        capture_output=True, check=True).stdout for root in pair.roots]
    assert listings[0] == listings[1]
