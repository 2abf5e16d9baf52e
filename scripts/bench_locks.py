#!/usr/bin/env python3
"""Lock manager costs, in-process (no FUSE): grant+release round trip and conflict() per call.

    /opt/agentfs/venv/bin/python scripts/bench_locks.py [--locks 1000] [--rounds 300] [--mount DIR]

With --mount DIR (a directory on a running agentfs mount, where the caller
may create a file and lock it) it also times lock+unlock through the xattr
interface and through the `agentfs lock`/`agentfs unlock` CLI.

conflict() runs on every open/create/unlink/rename of the daemon, so its
cost is compared with the ~50 µs of daemon CPU a FUSE request takes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import trio

from agentfs.core.locks import Access, LockManager, LockMode
from agentfs.store import db, locks_table
from agentfs.workspace import init_workspace

FUSE_REQUEST_US = 48.0  # DESIGN.md: daemon CPU per inline request


def per_call_us(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


async def bench(root: Path, nlocks: int, rounds: int) -> None:
    ws = init_workspace(root / "ws", "")
    settings = {"default_ttl": 600.0, "wait_seconds": 5.0}
    lm = LockManager(ws, lambda: settings)
    other = LockManager(ws, lambda: settings)

    t0 = time.perf_counter()
    for i in range(rounds):
        await lm.acquire("alice", f"/rt/{i % 10}", LockMode.EXCLUSIVE)
        await lm.release("alice", f"/rt/{i % 10}")
    rt = (time.perf_counter() - t0) / rounds * 1e3
    print(f"acquire+release round trip (in-process, empty table): {rt:.2f} ms")

    conn = db.connect(ws)
    print(f"PRAGMA data_version alone:                 {per_call_us(lambda: locks_table.data_version(conn), 20000):6.2f} µs")
    miss0 = per_call_us(lambda: lm.conflict("bob", "/a/b/c/file.txt", Access.READ), 20000)
    print(f"conflict(), no locks held:                 {miss0:6.2f} µs")

    for i in range(nlocks):
        await other.acquire(f"agent{i % 7}", f"/proj{i % 50}/dir{i}/file{i}.md",
                            LockMode.SHARED if i % 2 else LockMode.EXCLUSIVE)
    lm.conflict("bob", "/", Access.READ)  # load the snapshot once
    hit = per_call_us(lambda: lm.conflict("bob", "/proj3/dir3/file3.md", Access.WRITE), 20000)
    miss = per_call_us(lambda: lm.conflict("bob", "/proj3/dir3/other.md", Access.WRITE), 20000)
    deep = per_call_us(lambda: lm.conflict("bob", "/a/b/c/d/e/f/g/h.txt", Access.WRITE), 20000)
    sub = per_call_us(lambda: lm.conflict("bob", "/proj3", Access.DELETE, subtree=True), 5000)
    print(f"conflict() with {nlocks} locks, hit:            {hit:6.2f} µs")
    print(f"conflict() with {nlocks} locks, miss (depth 3): {miss:6.2f} µs")
    print(f"conflict() with {nlocks} locks, miss (depth 8): {deep:6.2f} µs")
    print(f"conflict() with {nlocks} locks, subtree hit:    {sub:6.2f} µs")
    print(f"  = {miss / FUSE_REQUEST_US * 100:.1f}% of a {FUSE_REQUEST_US:.0f} µs FUSE request (miss)")

    t0 = time.perf_counter()
    n = 50
    for i in range(n):
        await other.acquire("carol", f"/reload/{i}", LockMode.EXCLUSIVE)
        lm.conflict("bob", "/x", Access.READ)  # reloads: the table changed
    reload_ms = (time.perf_counter() - t0) / n * 1e3 - rt / 2
    print(f"snapshot reload after a change ({nlocks} locks): ~{max(reload_ms, 0):.2f} ms (grant excluded)")

    t0 = time.perf_counter()
    for i in range(rounds):
        await lm.acquire("alice", f"/rt/{i % 10}", LockMode.EXCLUSIVE)
        await lm.release("alice", f"/rt/{i % 10}")
    rt2 = (time.perf_counter() - t0) / rounds * 1e3
    print(f"acquire+release round trip with {nlocks} locks held: {rt2:.2f} ms")

    await other.acquire("carol", "/handoff", LockMode.EXCLUSIVE)
    lat = []
    for _ in range(20):
        async with trio.open_nursery() as nursery:
            async def release_later():
                await trio.sleep(0.01)
                lat.append(time.perf_counter())
                await other.release("carol", "/handoff")
            nursery.start_soon(release_later)
            got = await lm.acquire("bob", "/handoff", LockMode.EXCLUSIVE, wait=5)
            lat[-1] = time.perf_counter() - lat[-1]
        await lm.release(got.agent, "/handoff")
        await other.acquire("carol", "/handoff", LockMode.EXCLUSIVE)
    lat.sort()
    print(f"hand-off between two managers (two daemons): median {lat[len(lat) // 2] * 1e3:.1f} ms, "
          f"max {lat[-1] * 1e3:.1f} ms (poll step 20 ms)")
    lm.close()
    other.close()
    conn.close()


def bench_mount(directory: Path, rounds: int) -> None:
    """lock+unlock round trips on a real mount: setxattr/removexattr, then the CLI."""
    import subprocess
    import sys

    target = directory / "bench-lock-file"
    target.write_text("x")
    try:
        t0 = time.perf_counter()
        for _ in range(rounds):
            os.setxattr(target, "user.agentfs.lock", b"exclusive;ttl=30")
            os.removexattr(target, "user.agentfs.lock")
        xattr_ms = (time.perf_counter() - t0) / rounds * 1e3
        print(f"lock+unlock through the xattr on {directory}: {xattr_ms:.2f} ms")
        cli = [str(Path(sys.executable).parent / "agentfs")]
        n = max(3, rounds // 30)
        t0 = time.perf_counter()
        for _ in range(n):
            subprocess.run(cli + ["lock", "--ttl", "30", str(target)], check=True, capture_output=True)
            subprocess.run(cli + ["unlock", str(target)], check=True, capture_output=True)
        cli_ms = (time.perf_counter() - t0) / n * 1e3
        print(f"lock+unlock through the CLI (two processes):  {cli_ms:.0f} ms")
    finally:
        target.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--locks", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--mount", type=Path, default=None, metavar="DIR")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(bench, Path(tmp), args.locks, args.rounds)
    if args.mount is not None:
        bench_mount(args.mount, args.rounds)


if __name__ == "__main__":
    main()
