"""Mapping locked paths to the files they name, for hard links the daemon never looked up (no kernel)."""

from __future__ import annotations

import os

import pytest

from agentfs.core.governor import OpenGovernor
from agentfs.fuse.inodes import InodeTable
from agentfs.fuse.lock_aliases import LockedLinks
from agentfs.store.walk import lstat_below


class Gov(OpenGovernor):
    """Locks on fixed paths; the key changes when the list is replaced."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__()
        self.paths = paths
        self.key = object()

    def locked_paths(self):
        return self.key, self.paths


@pytest.fixture
def tree(tmp_path):
    for d in ("a", "b", "out"):
        (tmp_path / d).mkdir()
    (tmp_path / "a/x").write_text("x")
    os.link(tmp_path / "a/x", tmp_path / "b/y")
    (tmp_path / "single").write_text("s")
    root_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    t = InodeTable(root_fd)
    yield tmp_path, t
    t.close_all()
    os.close(root_fd)


def node_of(t: InodeTable, root, rel: str):
    parent = 1
    parts = rel.split("/")
    for i, part in enumerate(parts):
        node = t.remember(parent, part, os.stat(root / "/".join(parts[:i + 1]), follow_symlinks=False))
        parent = node.ino
    return node


def test_lstat_below_never_follows_a_symlink_on_the_way(tree):
    root, t = tree
    (root / "out/link").symlink_to(root / "a")
    root_fd = t.fd(t.get(1))
    assert lstat_below(root_fd, "/a/x").st_ino == os.stat(root / "a/x").st_ino
    assert lstat_below(root_fd, "/out/link/x") is None      # through a symlink: not followed
    assert lstat_below(root_fd, "/out/link").st_ino == os.lstat(root / "out/link").st_ino
    assert lstat_below(root_fd, "/nope/x") is None
    assert lstat_below(root_fd, "/").st_ino == os.stat(root).st_ino


def test_a_lock_on_one_name_is_found_from_the_other(tree):
    root, t = tree
    y = node_of(t, root, "b/y")
    links = LockedLinks()
    assert links.others(Gov(["/a/x"]), t, y, ["/b/y"]) == ["/a/x"]
    assert links.others(Gov(["/a/x"]), t, y, ["/b/y", "/a/x"]) == []   # already checked by name
    assert links.others(Gov([]), t, y, ["/b/y"]) == []
    # a folder lock covers only the names below the folder
    assert links.others(Gov(["/a"]), t, y, ["/b/y"]) == []
    single = node_of(t, root, "single")
    assert links.others(Gov(["/single", "/a/x"]), t, single, ["/single"]) == []


def test_the_mapping_follows_removals_and_lock_changes(tree):
    root, t = tree
    y = node_of(t, root, "b/y")
    os.link(root / "b/y", root / "out/keep")  # y keeps two links once a/x is gone
    gov, links = Gov(["/a/x"]), LockedLinks()
    assert links.others(gov, t, y, ["/b/y"]) == ["/a/x"]
    # a/x now names another file, and the daemon saw a name go away: rebuilt
    os.unlink(root / "a/x")
    (root / "a/x").write_text("new")
    os.link(root / "a/x", root / "out/z")
    node_of(t, root, "out/z")
    t.unlink(node_of(t, root, "out").ino, "z")
    assert links.others(gov, t, y, ["/b/y"]) == []
    # a lock change alone also rebuilds it
    os.link(root / "b/y", root / "out/w")
    gov.paths, gov.key = ["/out/w"], object()
    assert links.others(gov, t, y, ["/b/y"]) == ["/out/w"]
