"""`agentfs index` (the search sidecar) and `agentfs search`."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from agentfs.cli._common import echo_json, resolve_workspace, workspace_option
from agentfs.errors import AgentfsError, WorkspaceError
from agentfs.workspace import mounts_of_agentfs

log = logging.getLogger(__name__)


@click.command("index")
@click.option("--once", is_flag=True, help="Catch up (and embed everything), then exit.")
@click.option("--rebuild", is_flag=True, help="Forget the index and build it again from scratch.")
@workspace_option
def index_cmd(once: bool, rebuild: bool, workspace_opt: str | None) -> None:
    """Run the search indexer sidecar: catch up, then follow changes and answer queries."""
    # One BLAS thread: OpenBLAS threads spin while waiting, and on a busy host
    # (agents, the FUSE daemon) two of them embedded 3x slower than one.
    # Must be set before numpy loads; OPENBLAS_NUM_THREADS overrides.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from agentfs.search.sidecar import Sidecar

    ws = resolve_workspace(workspace_opt)
    try:
        sidecar = Sidecar(ws, rebuild=rebuild)
    except (OSError, PermissionError) as e:
        raise AgentfsError(f"cannot open the search index {ws.index_db}: {e} (run as root)") from e
    except Exception as e:
        if type(e).__name__ == "OperationalError":
            raise AgentfsError(f"cannot open the search index {ws.index_db}: {e} (run as root)") from e
        raise
    tty = sys.stderr.isatty()
    click.echo(f"agentfs index: {ws.root}: {sidecar.note}", err=True)
    try:
        if not once:
            sidecar.serve_in_background()
            sidecar.install_signal_handlers()
        sidecar.start_embedding()
        summary = _catch_up(sidecar, tty)
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(summary["skipped"].items())) or "none"
        click.echo(f"agentfs index: caught up in {summary['seconds']:.1f}s: {summary['files']} files seen, "
                   f"{summary['indexed']} indexed, {summary['deleted']} removed, skipped: {skipped}", err=True)
        if once:
            _wait_embedded(sidecar, tty)
            return
        click.echo("agentfs index: following changes and answering queries (Ctrl-C to stop)", err=True)
        sidecar.follow()
    finally:
        sidecar.shutdown()


def _catch_up(sidecar: Any, tty: bool) -> dict[str, Any]:
    if not tty:
        return sidecar.catch_up()
    state: dict[str, Any] = {}

    def progress(i: int, n: int) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = click.progressbar(length=n, label="indexing files", file=sys.stderr)
            bar.__enter__()
        bar.update(1)

    try:
        return sidecar.catch_up(progress)
    finally:
        if "bar" in state:
            state["bar"].__exit__(None, None, None)


def _wait_embedded(sidecar: Any, tty: bool) -> None:
    if sidecar.embedder is None:
        return
    total = sidecar.db.stats()["pending"]
    if not tty or not total:
        sidecar.wait_embedded()
        return
    with click.progressbar(length=total, label="embedding chunks", file=sys.stderr) as bar:
        done = 0
        while True:
            left = sidecar.db.stats()["pending"]
            bar.update(max(0, total - left - done))
            done = total - left
            if not left:
                return
            time.sleep(0.5)


@click.command("search")
@click.argument("query", nargs=-1, required=True)
@click.option("-k", "--k", "k", type=click.IntRange(1, 200), default=10, show_default=True,
              help="How many files to return.")
@click.option("--path", "path_prefix", metavar="PREFIX", default=None,
              help="Only files under this workspace path (e.g. /research).")
@click.option("--json", "as_json", is_flag=True, help="A JSON list of hits, best first.")
@workspace_option
def search_cmd(query: tuple[str, ...], k: int, path_prefix: str | None, as_json: bool,
               workspace_opt: str | None) -> None:
    """Search the workspace by meaning and keywords."""
    from agentfs.search.client import query_full, search_any

    text = " ".join(query)
    if path_prefix and not path_prefix.startswith("/"):
        path_prefix = "/" + path_prefix
    try:
        ws = resolve_workspace(workspace_opt)
    except WorkspaceError:
        # Agents cannot look inside WS (mode 0700) but may still ask its sidecar,
        # which decides what they may see from their peer credentials.
        root = _workspace_root_unchecked(workspace_opt)
        if root is None or os.geteuid() == 0:
            raise
        resp = query_full(root, text, k=k, path_prefix=path_prefix, timeout=30.0)
    else:
        resp = search_any(ws, text, k=k, path_prefix=path_prefix)
    hits = resp.get("hits", [])
    if as_json:
        echo_json(hits)
        return
    if not hits:
        click.echo("no matches")
    for rank, h in enumerate(hits, 1):
        lines = f"{h['start_line']}" if h["start_line"] == h["end_line"] else f"{h['start_line']}-{h['end_line']}"
        click.echo(click.style(f"{rank:2d}. {h['path']}:{lines}", bold=True) + f"  score {h['score']:.3f}")
        for line in h["snippet"].splitlines()[:4]:
            click.echo(f"      {line[:160]}")
    fresh = resp.get("fresh") or {}
    notes = []
    if resp.get("mode") == "bm25":
        notes.append("keyword search only (no embedding model)" + (f": {resp['note']}" if resp.get("note") else ""))
    if fresh.get("catching_up"):
        notes.append("the index is still catching up: results may be incomplete")
    if fresh.get("pending"):
        notes.append(f"{fresh['pending']} chunks still waiting for embeddings")
    if resp.get("sidecar") is False:
        notes.append("no sidecar running: searched the index directly; it may be stale (`agentfs index`)")
    for n in notes:
        click.echo(f"note: {n}", err=True)


def _workspace_root_unchecked(workspace_opt: str | None) -> Path | None:
    """The workspace a non-root caller means, without reading inside it."""
    ctx = click.get_current_context()
    explicit = workspace_opt or (ctx.find_root().obj or {}).get("workspace") or os.environ.get("AGENTFS_WORKSPACE")
    if explicit:
        return Path(explicit).resolve()
    here = Path.cwd().resolve()
    best: tuple[int, Path] | None = None
    for mnt, root in mounts_of_agentfs():
        if (here == mnt or mnt in here.parents) and (best is None or len(mnt.parts) > best[0]):
            best = (len(mnt.parts), root)
    return best[1] if best else None


COMMANDS = [index_cmd, search_cmd]
