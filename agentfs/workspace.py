"""The workspace on disk: one directory that holds everything a workspace is.

Layout (all created by `agentfs init`):

    WS/agentfs.toml      the policy file
    WS/data/             the files agents see; a plain tree, readable without agentfs
    WS/state/state.db    locks, sessions, the audit log (SQLite, WAL)
    WS/state/index.db    the search index (owned by the indexer sidecar)
    WS/state/run/        sockets and pid files of the running daemons

WS itself is mode 0700 and owned by root: agents reach the data only through
the mount, where the policy is enforced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agentfs.errors import WorkspaceError

POLICY_FILE = "agentfs.toml"
DATA_DIR = "data"
STATE_DIR = "state"
FSNAME_PREFIX = "agentfs:"


@dataclass(frozen=True)
class Workspace:
    """Paths of one workspace; cheap to build, checked by `open`."""

    root: Path

    @property
    def policy_path(self) -> Path:
        return self.root / POLICY_FILE

    @property
    def data_path(self) -> Path:
        return self.root / DATA_DIR

    @property
    def state_path(self) -> Path:
        return self.root / STATE_DIR

    @property
    def state_db(self) -> Path:
        return self.state_path / "state.db"

    @property
    def index_db(self) -> Path:
        return self.state_path / "index.db"

    @property
    def run_path(self) -> Path:
        return self.state_path / "run"

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "Workspace":
        """The workspace at `path`, or a one-line error saying how to make one."""
        root = Path(path).resolve()
        try:
            if not root.is_dir():
                raise WorkspaceError(f"no workspace at {root}: create one with `agentfs init {path}`")
            ws = cls(root)
            complete = ws.policy_path.is_file() and ws.data_path.is_dir()
        except PermissionError:
            raise WorkspaceError(f"{root} is readable only by root: run this command as root, "
                                 "or work through the mount") from None
        if not complete:
            raise WorkspaceError(
                f"{root} is not an agentfs workspace (no {POLICY_FILE} or {DATA_DIR}/): "
                f"create one with `agentfs init {path}`"
            )
        return ws


def init_workspace(path: str | os.PathLike[str], policy_text: str) -> Workspace:
    """Create a workspace; refuse to touch a directory that holds anything else."""
    root = Path(path).resolve()
    if root.exists():
        if not root.is_dir():
            raise WorkspaceError(f"{root} exists and is not a directory: choose another path")
        if (root / POLICY_FILE).exists():
            raise WorkspaceError(f"{root} is already a workspace: use it, or choose another path")
        if any(root.iterdir()):
            raise WorkspaceError(f"{root} is not empty: `agentfs init` needs a new or empty directory")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    ws = Workspace(root)
    ws.data_path.mkdir(exist_ok=True)
    # Unix modes still apply under the policy (the mount uses default_permissions);
    # a world-writable root lets the policy alone decide who may create at the top.
    os.chmod(ws.data_path, 0o777)
    ws.state_path.mkdir(exist_ok=True)
    os.chmod(ws.state_path, 0o700)
    ws.run_path.mkdir(exist_ok=True)
    ws.policy_path.write_text(policy_text)
    os.chmod(ws.policy_path, 0o600)
    from agentfs.store import db

    db.connect(ws).close()
    return ws


def mounts_of_agentfs() -> list[tuple[Path, Path]]:
    """(mountpoint, workspace) for every agentfs mount on this host, from /proc/self/mounts."""
    out: list[tuple[Path, Path]] = []
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 3 or not fields[0].startswith(FSNAME_PREFIX):
            continue
        ws = _unescape_mounts(fields[0][len(FSNAME_PREFIX):])
        mnt = _unescape_mounts(fields[1])
        out.append((Path(mnt), Path(ws)))
    return out


def _unescape_mounts(field: str) -> str:
    """Undo the octal escapes (\\040 for a space, ...) of /proc/self/mounts."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def find_workspace(explicit: str | None = None, cwd: Path | None = None) -> Workspace:
    """Resolve the workspace a command acts on.

    Order: an explicit `-w`, then $AGENTFS_WORKSPACE, then the agentfs mount
    the current directory lies in, then a workspace directory above it.
    """
    if explicit:
        return Workspace.open(explicit)
    env = os.environ.get("AGENTFS_WORKSPACE")
    if env:
        return Workspace.open(env)
    here = (cwd or Path.cwd()).resolve()
    found = mount_containing(here)
    if found:
        return Workspace.open(found[1])
    for d in (here, *here.parents):
        if (d / POLICY_FILE).is_file() and (d / DATA_DIR).is_dir():
            return Workspace.open(d)
    raise WorkspaceError(
        "no workspace given: pass -w WS, set AGENTFS_WORKSPACE, or run inside a mount or workspace"
    )


def mount_for_workspace(ws: Workspace) -> list[Path]:
    """Mountpoints currently serving `ws`."""
    return [mnt for mnt, root in mounts_of_agentfs() if root == ws.root]


def mount_containing(path: Path) -> tuple[Path, Path] | None:
    """(mountpoint, workspace root) of the innermost agentfs mount holding `path`, or None."""
    best: tuple[Path, Path] | None = None
    for mnt, ws in mounts_of_agentfs():
        if (path == mnt or mnt in path.parents) and (best is None or len(mnt.parts) > len(best[0].parts)):
            best = (mnt, ws)
    return best


def path_in_mount(path: str | os.PathLike[str]) -> tuple[Workspace, str]:
    """Map a path on a mount (or in a workspace's data tree) to (workspace, '/policy/path')."""
    p = Path(os.path.abspath(path))
    found = mount_containing(p)
    if found is None:
        raise WorkspaceError(f"{path} is not on an agentfs mount: give a path inside a mount")
    rel = p.relative_to(found[0])
    return Workspace.open(found[1]), "/" + str(rel) if str(rel) != "." else "/"
