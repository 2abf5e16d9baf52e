"""The virtual tree's bookkeeping: query nodes live only while the kernel references them."""

from __future__ import annotations

import os
import subprocess

import pyfuse3

from agentfs.core.governor import Caller
from agentfs.fuse.virtual import SEARCH_DIR, VirtualTree
from conftest import make_workspace, mounted, wait_for


class _NoSearch:
    """A governor without search: every query lists only results.md."""


async def test_query_nodes_are_dropped_when_the_kernel_forgets_them(tmp_path):
    tree = VirtualTree(make_workspace(tmp_path), _NoSearch())
    fixed = len(tree._nodes)
    caller = Caller("nobody", 1000, 1000, 1)
    search = tree.search.ino
    for i in range(500):
        e = await tree.lookup(search, f"q{i}".encode(), caller)
        tree.forget(e.st_ino, 1)
    assert len(tree._nodes) == fixed and len(tree._keys) == fixed
    # a node still referenced stays: two lookups, one forget
    e = await tree.lookup(search, b"kept", caller)
    child = await tree.lookup(e.st_ino, b"results.md", caller)
    await tree.lookup(search, b"kept", caller)
    tree.forget(e.st_ino, 1)
    assert (await tree.getattr(e.st_ino, caller)).st_ino == e.st_ino
    tree.forget(child.st_ino, 1)
    tree.forget(e.st_ino, 1)
    assert len(tree._nodes) == fixed
    # the fixed entries are never dropped
    tree.forget(tree.search.ino, 10)
    assert (await tree.lookup(pyfuse3.ROOT_INODE, SEARCH_DIR.encode(), caller)).st_ino == search


def test_many_queries_on_a_mount_do_not_grow_the_daemon_for_ever(ws, workdir):
    """Distinct .search/ names by the thousand, the kernel's caches dropped: the daemon's nodes go."""
    with mounted(ws, workdir / "mnt") as m:
        def rss_kb() -> int:
            for line in open(f"/proc/{m.pid}/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
            return 0

        def burst(start: int) -> None:
            for i in range(start, start + 20000):
                os.stat(m.path / SEARCH_DIR / f"q{i}")
            subprocess.run(["sh", "-c", "sync; echo 2 > /proc/sys/vm/drop_caches"], check=True)

        burst(0)
        after_one = wait_for(rss_kb, what="the daemon's size")
        for k in range(1, 4):
            burst(k * 20000)
        # kept nodes cost ~430 B each: 60,000 more would add ~25 MB
        assert rss_kb() < after_one + 12_000, (after_one, rss_kb())
        assert m.answers()
